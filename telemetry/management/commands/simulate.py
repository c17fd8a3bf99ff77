import asyncio
import dataclasses
import datetime as dt
import functools
import re
import time
from pathlib import Path

import nats.errors
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from aegis import jetstream
from telemetry.simulator import (
    FaultSettings,
    SimulationConfig,
    Summary,
    plant_layout_load,
    simulate,
)
from telemetry.simulator.plant import iso, mes_history_end, simulated_station_codes
from telemetry.simulator.runner import MAX_BATCH, MAX_RATE_HZ

BACKFILL_FOREVER_S = 8 * 3600
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_start(value: str, now: dt.datetime) -> dt.datetime:
    """`2026-03-03T06:00:00Z`, `2026-03-03T06:00:00+01:00`, or relative to now: `-8h`, `-90m`."""
    relative = _RELATIVE.match(value.strip())
    if relative:
        return now - dt.timedelta(seconds=float(relative[1]) * _UNIT_S[relative[2]])
    parsed = parse_datetime(value.strip().replace("Z", "+00:00"))
    if parsed is None or parsed.tzinfo is None:
        raise CommandError(
            f"--start {value!r}: give an ISO 8601 instant with its offset "
            "(2026-03-03T06:00:00Z) or a time ago (-30s, -90m, -8h, -2d)"
        )
    return parsed


class Command(BaseCommand):
    help = (
        "Simulate the plant: every station's PLC publishes samples of its signals to NATS "
        "JetStream (aegis.telemetry.raw.<station>, stream TELEMETRY) with async acks, while units "
        "move along each line's route and are recorded in the MES through its services (visits, "
        "firmware flashes, counts, quality events, work orders) so the telemetry join has real "
        "state. Labelled faults with a cause in the data are injected: a bad EPS firmware that "
        "makes the wheel-nut torque drift before end-of-line finds a steering defect, tool wear "
        "(torque_low), a degrading leak-test seal (leak). The same --seed and arguments produce "
        "the same samples. A rate report is printed every few seconds; SIGINT or SIGTERM stops "
        "it after publishing what was generated. Station signals and nominal ranges come from "
        "the MES (manage.py seed_demo creates the demo plant). See docs/simulator.md."
    )

    def add_arguments(self, parser):
        parser.add_argument("--seed", default="42", help="random seed (default 42)")
        parser.add_argument(
            "--stations",
            default=None,
            help="comma-separated station codes to publish telemetry for, e.g. 5,6 "
            "(default: every station); units move along the whole line of each",
        )
        parser.add_argument(
            "--rate-hz",
            type=float,
            default=100.0,
            help=f"samples per second per station (default 100, at most {MAX_RATE_HZ:g})",
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=100,
            help="samples per message (default 100; 1 publishes the original single-sample "
            f"form; at most {MAX_BATCH})",
        )
        parser.add_argument(
            "--duration",
            type=float,
            default=None,
            help="simulated seconds to run (default: until stopped)",
        )
        parser.add_argument(
            "--speed",
            type=float,
            default=1.0,
            help="simulated seconds per wall-clock second (default 1; above 1 replays history "
            "faster than real time; 0 runs as fast as possible). The simulated clock never "
            "runs ahead of the wall clock: it catches up, then goes on in real time",
        )
        parser.add_argument(
            "--start",
            default=None,
            help="simulated start instant: ISO 8601 with offset, or a time ago such as -8h "
            "(default: now; with --speed 0 or above 1, the duration before now — 8 h when "
            "running until stopped — so the replayed history ends about now)",
        )
        parser.add_argument(
            "--no-mes",
            action="store_true",
            help="telemetry only: record nothing in the MES (stations and signals are still "
            "read from it)",
        )
        parser.add_argument("--no-faults", action="store_true", help="inject no faults")
        parser.add_argument(
            "--bad-firmware-share",
            type=float,
            default=FaultSettings.bad_firmware_share,
            help="share of vehicles flashed with the bad EPS firmware v2.1.5-rc "
            f"(default {FaultSettings.bad_firmware_share})",
        )
        parser.add_argument(
            "--truth-file",
            type=Path,
            default=None,
            help="write the ground truth (which unit got which fault, its evidence and the "
            "defect it caused) to this file, one JSON object per line",
        )
        parser.add_argument(
            "--report-every",
            type=float,
            default=5.0,
            help="seconds between rate reports (default 5)",
        )
        parser.add_argument(
            "--max-pending",
            type=int,
            default=4000,
            help="messages in flight waiting for their JetStream ack (default 4000)",
        )

    def handle(self, *args, **options):
        config = self._config(options)
        layout = self._layout(options["duration"] is None)
        unknown = sorted(set(config.stations or ()) - {s.code for s in layout.stations})
        if unknown:
            raise CommandError(f"--stations names stations the MES does not have: {unknown}")
        out = self._writer()
        if config.mes:
            config = self._after_history(config, layout, explicit=bool(options["start"]), out=out)
        scope = "every station" if config.stations is None else f"stations {options['stations']}"
        out(
            f"simulating {scope} from {iso(config.start_ms)} at {config.rate_hz:g} Hz, "
            f"{config.batch} samples per message, speed {config.speed:g}, seed {config.seed}; "
            f"MES records {'on' if config.mes else 'off'}, faults "
            f"{'on' if config.faults.enabled else 'off'}"
        )
        oldest_ms = (time.time() - settings.TELEMETRY_RETENTION_HOURS * 3600) * 1000
        if config.start_ms < oldest_ms:
            out(
                f"warning: the start is older than the telemetry retention "
                f"({settings.TELEMETRY_RETENTION_HOURS} h): ingest dead-letters such samples as "
                "too_old"
            )
        try:
            summary = asyncio.run(
                simulate(
                    layout,
                    config,
                    connect=functools.partial(jetstream.connect, "simulator"),
                    out=out,
                    truth_file=options["truth_file"],
                    announce_faults=options["verbosity"] >= 1,
                )
            )
        except (OSError, nats.errors.Error) as error:
            raise CommandError(f"cannot reach NATS: {type(error).__name__}: {error}") from error
        self._summary(out, summary)

    def _config(self, options) -> SimulationConfig:
        if not 0 < options["rate_hz"] <= MAX_RATE_HZ:
            raise CommandError(f"--rate-hz must be above 0 and at most {MAX_RATE_HZ:g}")
        if not 1 <= options["batch"] <= MAX_BATCH:
            raise CommandError(f"--batch must be 1 to {MAX_BATCH}")
        if options["speed"] < 0:
            raise CommandError("--speed must be 0 (as fast as possible) or above")
        if options["duration"] is not None and options["duration"] <= 0:
            raise CommandError("--duration must be above 0 seconds")
        if not 0 <= options["bad_firmware_share"] <= 1:
            raise CommandError("--bad-firmware-share must be between 0 and 1")
        if options["max_pending"] < 1 or options["report_every"] <= 0:
            raise CommandError("--max-pending must be ≥ 1 and --report-every above 0")
        now = dt.datetime.fromtimestamp(int(time.time()), tz=dt.UTC)
        if options["start"]:
            start = parse_start(options["start"], now)
            if start > now + dt.timedelta(seconds=1):
                raise CommandError(
                    "--start is in the future: the simulated clock never runs ahead of the "
                    "wall clock (ingest refuses far-future timestamps)"
                )
        elif options["speed"] == 0 or options["speed"] > 1:
            start = now - dt.timedelta(seconds=options["duration"] or BACKFILL_FOREVER_S)
        else:
            start = now
        stations = None
        if options["stations"]:
            stations = tuple(code.strip() for code in options["stations"].split(",") if code)
        seed = options["seed"]
        return SimulationConfig(
            seed=int(seed) if seed.lstrip("-").isdigit() else seed,
            start_ms=int(start.timestamp() * 1000),
            stations=stations,
            rate_hz=options["rate_hz"],
            batch=options["batch"],
            duration_s=options["duration"],
            speed=options["speed"],
            mes=not options["no_mes"],
            faults=FaultSettings(
                enabled=not options["no_faults"],
                bad_firmware_share=options["bad_firmware_share"],
            ),
            report_every_s=options["report_every"],
            max_pending=options["max_pending"],
        )

    def _after_history(self, config, layout, *, explicit: bool, out) -> SimulationConfig:
        """Units cannot be recorded where the MES already has later history: refuse a start
        before it, or move a default start past it."""
        end = mes_history_end(simulated_station_codes(layout, config.stations))
        if end is None or config.start_ms > end.timestamp() * 1000:
            return config
        if explicit:
            raise CommandError(
                f"the MES records units at these stations until {iso(int(end.timestamp() * 1000))}"
                ": a simulated start before that would contradict it. Start after it, or "
                "publish telemetry only (--no-mes)"
            )
        start_ms = (int(end.timestamp()) + 1) * 1000
        out(f"starting at {iso(start_ms)}, after the units the MES already records there")
        return dataclasses.replace(config, start_ms=start_ms)

    def _layout(self, wait: bool):
        """The plant from the MES; running until stopped (under `make run`), wait for it to be
        seeded rather than exit, since one exiting process stops all of them."""
        layout = plant_layout_load()
        if layout.stations:
            return layout
        if not wait:
            raise CommandError("the MES has no stations: run manage.py seed_demo first")
        self.stdout.write("the MES has no stations yet: waiting for them (manage.py seed_demo)")
        while not layout.stations:
            time.sleep(10)
            layout = plant_layout_load()
        return layout

    def _writer(self):
        def out(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        return out

    def _summary(self, out, summary: Summary) -> None:
        seconds = max(summary.seconds, 1e-9)
        out(
            f"simulated {summary.simulated_s:,.1f} s in {summary.seconds:,.2f} s: "
            f"{summary.samples:,} samples in {summary.messages:,} messages "
            f"({summary.acked_messages:,} acked, {summary.duplicates:,} duplicates, "
            f"{summary.rejected:,} refused, {summary.unacked:,} unacked) — "
            f"{summary.samples / seconds:,.0f} samples/s, {summary.messages / seconds:,.0f} msgs/s"
        )
        faults = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_fault.items())) or "none"
        out(
            f"units completed {summary.units_completed}, faults injected "
            f"{summary.faults_injected} ({faults}), defects recorded {summary.defects}; "
            + (
                f"MES records {summary.mes_applied:,}, errors {summary.mes_errors:,}"
                if summary.mes
                else "MES records off"
            )
        )
        for error in summary.last_errors:
            out(f"  last error: {error}")
