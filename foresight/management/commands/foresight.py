import asyncio
import os

from django.core.management.base import BaseCommand, CommandError

from aegis.observability.metrics import mark_process_dead
from foresight.scorer import BATCH_SIZE, ForesightScorer


class Command(BaseCommand):
    help = (
        "Score live telemetry: read the TELEMETRY stream through the durable consumer "
        "foresight-scorer (independent of ingest), compute each station's window features, "
        "score them with the station's production model (and its shadow models) or, without "
        "one, with a running statistical baseline; store every score in foresight_score; raise "
        "a defect alert when a score crosses the threshold (one per episode) and push it to the "
        "station, line and plant websocket groups; then acknowledge. A failing model falls "
        "back to its baseline and is counted (fail-open). Promotions and roll-backs take "
        "effect without a restart (KV foresight_models). SIGTERM or SIGINT finishes the batch "
        "in hand and exits 0. See docs/foresight.md."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size",
            type=int,
            default=BATCH_SIZE,
            help=f"most messages per pull (default {BATCH_SIZE})",
        )

    def handle(self, *args, batch_size: int, **options):
        if not 1 <= batch_size <= 10_000:
            raise CommandError("--batch-size must be 1-10000")
        scorer = ForesightScorer(
            batch_size=batch_size,
            on_batch=self._progress if options["verbosity"] >= 2 else None,
        )
        self.stdout.write(f"foresight scorer started (pid {os.getpid()}); SIGTERM stops it")
        try:
            asyncio.run(scorer.serve())
        finally:
            mark_process_dead(os.getpid())
        self.stdout.write(
            f"foresight scorer stopped: {scorer.scored} samples scored, {scorer.alerts} alerts, "
            f"{scorer.swaps} model changes"
        )

    def _progress(self, messages: int, samples: int) -> None:
        self.stdout.write(f"  batch: {messages} messages, {samples} samples scored")
