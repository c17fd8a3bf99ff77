import asyncio
import os

from django.core.management.base import BaseCommand, CommandError

from aegis.observability.metrics import mark_process_dead
from telemetry.ingest import (
    BatchReport,
    IngestWorker,
    configured_batch_size,
    configured_batch_wait_ms,
)


class Command(BaseCommand):
    help = (
        "Store the TELEMETRY stream: pull batches from the durable consumer `ingest` (shared by "
        "any number of workers), validate each message, join every sample with the MES state "
        "valid at its own timestamp, COPY the batch into telemetry_sample, commit, then "
        "acknowledge. A redelivered message is stored once (key station, ts, seq). A message "
        "that cannot be stored (bad JSON, wrong types, unknown station, missing, far-future or "
        "expired timestamp, oversize) goes to aegis.deadletter.telemetry.<station> with the "
        "reason in the Aegis-Reason header and is terminated. While PostgreSQL is away the "
        "batch in hand is retried with back-off (0.5 s doubling to 10 s) and nothing is "
        "acknowledged. SIGTERM or SIGINT stores and acknowledges the batches in hand and exits "
        "0. See docs/telemetry-payloads.md."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="most messages per batch (default AEGIS_INGEST_BATCH_SIZE, else 500)",
        )
        parser.add_argument(
            "--batch-wait-ms",
            type=int,
            default=None,
            help="longest wait for a batch to fill, in ms (default AEGIS_INGEST_BATCH_WAIT_MS, "
            "else 250)",
        )

    def handle(self, *args, batch_size: int | None, batch_wait_ms: int | None, **options):
        batch_size = batch_size or configured_batch_size()
        batch_wait_ms = batch_wait_ms or configured_batch_wait_ms()
        if not 1 <= batch_size <= 10_000 or not 1 <= batch_wait_ms <= 60_000:
            raise CommandError("--batch-size must be 1-10000 and --batch-wait-ms 1-60000")
        worker = IngestWorker(
            batch_size=batch_size,
            batch_wait_ms=batch_wait_ms,
            progress=self._progress if options["verbosity"] >= 2 else None,
        )
        self.stdout.write(f"telemetry ingest started (pid {os.getpid()}); SIGTERM stops it")
        try:
            totals = asyncio.run(worker.serve())
        finally:
            mark_process_dead(os.getpid())
        rate = totals.stored / totals.seconds if totals.seconds else 0.0
        self.stdout.write(
            f"telemetry ingest stopped: {totals.received} messages in {totals.batches} batches, "
            f"{totals.stored} samples stored ({totals.duplicates} duplicates), "
            f"{totals.dead_lettered} dead-lettered, {totals.reattributed} re-attributed, "
            f"{totals.seconds:.1f} s ({rate:.0f} samples/s)"
        )

    def _progress(self, report: BatchReport) -> None:
        line = (
            f"  batch: {report.messages} messages, {report.samples} samples, {report.stored} "
            f"stored in {report.commit_seconds * 1000:.1f} ms"
        )
        if report.duplicates:
            line += f", {report.duplicates} duplicates"
        if report.dead_lettered:
            line += f", {report.dead_lettered} dead-lettered"
        self.stdout.write(line)
