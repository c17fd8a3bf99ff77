import asyncio
import os

from django.core.management.base import BaseCommand, CommandError

from mes.relay import BatchReport, OutboxRelay, RelayUnavailable


class Command(BaseCommand):
    help = (
        "Publish committed MES state changes from the outbox to NATS JetStream "
        "(aegis.mes.state.<station>, stream MES_STATE) and keep each station's current state in "
        "the KV bucket mes_station_state. Rows go out in commit order per station, each with "
        "Nats-Msg-Id aegis-outbox-<id> so a repeat after a crash is dropped by the stream; a row "
        "is marked published only after the stream acknowledged it. While NATS or PostgreSQL is "
        "away it retries with back-off (0.5 s doubling to 30 s) and loses nothing. Only one relay "
        "publishes at a time (a PostgreSQL advisory lock): extra relays wait as hot standbys and "
        "take over when it stops. SIGTERM or SIGINT finishes the batch in hand and exits 0. "
        "With --once it drains the backlog and exits (non-zero if NATS or PostgreSQL failed). "
        "See docs/mes-state.md."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--once",
            action="store_true",
            help="publish every pending row, print progress, then exit (for cron and tests); "
            "exits at once, status 0, when another relay is active",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            help="rows read and published per batch (default 500)",
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=0.2,
            help="seconds between looks at the outbox when idle; a NOTIFY on channel "
            "aegis_outbox wakes the relay earlier (default 0.2)",
        )

    def handle(self, *args, once: bool, batch_size: int, poll_interval: float, **options):
        if batch_size < 1 or poll_interval <= 0:
            raise CommandError("--batch-size must be ≥ 1 and --poll-interval > 0")
        verbose = options["verbosity"] >= 2 or (once and options["verbosity"] >= 1)
        relay = OutboxRelay(
            batch_size=batch_size,
            poll_interval_s=poll_interval,
            progress=self._progress if verbose else None,
        )
        try:
            if once:
                totals = asyncio.run(relay.drain())
            else:
                self.stdout.write(f"outbox relay started (pid {os.getpid()}); SIGTERM stops it")
                totals = asyncio.run(relay.serve())
        except RelayUnavailable as error:
            raise CommandError(f"outbox not drained: {error}") from error
        if totals.standby:
            self.stdout.write("another relay is active and publishes the outbox; nothing to do")
            return
        rate = totals.published / totals.seconds if totals.seconds else 0.0
        self.stdout.write(
            f"outbox relay {'drained' if once else 'stopped'}: {totals.published} published "
            f"({totals.duplicates} already in the stream) in {totals.batches} batches, "
            f"{totals.seconds:.2f} s ({rate:.0f} rows/s)"
        )

    def _progress(self, report: BatchReport) -> None:
        line = (
            f"  batch: {report.published}/{report.claimed} published from {report.stations} "
            f"stations in {report.seconds * 1000:.0f} ms"
        )
        if report.duplicates:
            line += f", {report.duplicates} already in the stream"
        if report.failed:
            line += f", {report.failed} failed ({report.errors[0]})"
        if report.backlog_age_s:
            line += f"; oldest waiting row {report.backlog_age_s:.1f} s old"
        self.stdout.write(line)
