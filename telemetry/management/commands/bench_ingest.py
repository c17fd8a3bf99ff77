import argparse
import asyncio
import os
import sys

import orjson
from django.core.management.base import BaseCommand, CommandError

from aegis.observability.metrics import mark_process_dead
from telemetry import bench
from telemetry.ingest import IngestWorker

# The targets on 2 cores; printed beside the measurements, never adjusted to them.
TARGETS = (
    ("batched_samples_per_s", "≥ 100,000 samples/s", lambda v: v >= 100_000),
    ("batched_ratio_vs_raw_copy", "≥ 0.70 of the raw COPY", lambda v: v >= 0.7),
    ("single_msgs_per_s", "≥ 45,000 msgs/s", lambda v: v >= 45_000),
    ("latency_p99_ms", "≤ 250 ms at 20,000 samples/s", lambda v: v <= 250),
)


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError as error:
        message = f"expected numbers separated by commas: {text!r}"
        raise argparse.ArgumentTypeError(message) from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("every count must be at least 1")
    return values


# BenchSizes fields set from the command line: (field, type, help).
SIZE_OPTIONS = (
    ("stations", int, "stations of the plant"),
    ("batched_samples", int, "samples published as batched messages (100 samples each)"),
    ("single_messages", int, "single-sample messages published"),
    ("latency_rate", int, "samples/s published during the latency run"),
    ("latency_seconds", float, "length of the latency run (600: the 10-minute memory check)"),
    ("latency_samples_per_message", int, "samples per message in the latency run"),
    ("workers", _counts, "worker process counts to measure, e.g. 1,2"),
    ("batch_size", int, "worker batch size (default: the worker's)"),
    ("batch_wait_ms", int, "worker batch wait in ms (default: the worker's)"),
)


class Command(BaseCommand):
    help = (
        "Measure the telemetry ingest on this machine: the raw COPY floor into a scratch copy "
        "of telemetry_sample, the raw JetStream consume rate, the end-to-end rate of real "
        "worker processes (1 and 2) for batched and single-sample messages, publish → "
        "committed latency at a fixed rate with the worker's memory, and exact accounting "
        "(published = stored, no key twice, every VIN right, nothing dead-lettered). Runs on a "
        "nats-server of its own per sync_interval (`always`, then `2m`) and on the configured "
        "PostgreSQL, with a throwaway plant and scratch table removed afterwards. Prints a "
        "table, or with --json one JSON object. See docs/benchmarks.md."
    )

    def add_arguments(self, parser):
        defaults = bench.BenchSizes()
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        for field, kind, help_text in SIZE_OPTIONS:
            default = getattr(defaults, field)
            if isinstance(default, tuple):
                help_text += f" (default {','.join(map(str, default))})"
            elif default is not None:
                help_text += f" (default {default:g})"
            parser.add_argument(
                f"--{field.replace('_', '-')}", type=kind, default=default, help=help_text
            )
        parser.add_argument(
            "--sync-intervals",
            default=",".join(defaults.sync_intervals),
            help="NATS sync_interval settings, the first is the headline (default always,2m)",
        )
        # The worker processes of a run: `manage.py bench_ingest --serve-worker <table>`.
        parser.add_argument("--serve-worker", metavar="TABLE", help=argparse.SUPPRESS)

    def handle(self, *args, **options):
        if options["serve_worker"]:
            return self._serve_worker(options)
        sizes = bench.BenchSizes(
            **{field: options[field] for field, _, _ in SIZE_OPTIONS},
            sync_intervals=tuple(v for v in options["sync_intervals"].split(",") if v),
        )
        self._validate(sizes)
        bench.migrate_if_needed(self.stderr.write)
        stream = sys.stderr if options["json"] else self.stdout

        def progress(line: str) -> None:
            stream.write(line + "\n")
            stream.flush()

        try:
            result = bench.run(sizes, progress)
        except RuntimeError as error:
            raise CommandError(str(error)) from error
        if options["json"]:
            self.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        else:
            self._table(result)

    def _validate(self, sizes: bench.BenchSizes) -> None:
        problems = []
        if not 1 <= sizes.stations <= 500:
            problems.append("--stations must be 1-500")
        if sizes.batched_samples < sizes.stations * sizes.samples_per_message:
            problems.append("--batched-samples must give every station a message")
        if sizes.single_messages < sizes.stations:
            problems.append("--single-messages must give every station a message")
        if sizes.latency_rate < 1 or sizes.latency_seconds <= 0:
            problems.append("--latency-rate and --latency-seconds must be positive")
        if not 1 <= sizes.latency_samples_per_message <= 10_000:
            problems.append("--latency-samples-per-message must be 1-10000")
        if not sizes.sync_intervals:
            problems.append("--sync-intervals needs at least one value")
        if problems:
            raise CommandError("; ".join(problems))

    def _table(self, result: dict) -> None:
        machine = result["machine"]
        self.stdout.write(
            f"\nmachine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
            f"{machine['memory_gib']} GiB, Python {machine['python']}, PostgreSQL "
            f"{machine['postgresql']}"
        )
        headline = result["nats_sync_interval"]
        for sync_interval, measured in result["by_sync_interval"].items():
            mark = " (headline)" if sync_interval == headline else ""
            self.stdout.write(f"\nNATS sync_interval {sync_interval}{mark}")
            for key, value in measured.items():
                if key == "runs":
                    continue
                target = next(((t, ok) for k, t, ok in TARGETS if k == key), None)
                verdict = ""
                if target is not None and value is not None:
                    verdict = f"   target {target[0]}: {'met' if target[1](value) else 'MISSED'}"
                shown = f"{value:,.2f}" if isinstance(value, float) else f"{value}"
                self.stdout.write(f"  {key:<32} {shown:>16}{verdict}")

    def _serve_worker(self, options) -> None:
        worker = IngestWorker(
            batch_size=options["batch_size"],
            batch_wait_ms=options["batch_wait_ms"],
            table=options["serve_worker"],
        )
        try:
            totals = asyncio.run(worker.serve())
        finally:
            mark_process_dead(os.getpid())
        self.stdout.write(
            orjson.dumps(
                {
                    "bench_worker": {
                        "received": totals.received,
                        "stored": totals.stored,
                        "duplicates": totals.duplicates,
                        "dead_lettered": totals.dead_lettered,
                        "seconds": totals.seconds,
                    }
                }
            ).decode()
        )
