import asyncio
import os

from django.core.management.base import BaseCommand, CommandError

from aegis.observability.metrics import mark_process_dead
from foresight.scorer import (
    BATCH_SIZE,
    GATHER_S,
    PARTITION_ENV,
    ForesightScorer,
    Partition,
    PartitionBusy,
)
from mes.models import Station


class Command(BaseCommand):
    help = (
        "Score live telemetry: read the TELEMETRY stream through the scorer's own durable "
        "consumer (independent of ingest), compute each station's window features, score them "
        "with the station's production model (and its shadow models) or, without one, with a "
        "running statistical baseline; store every score in foresight_score; raise a defect "
        "alert when a score crosses the threshold (one per episode) and push it to the station, "
        "line and plant websocket groups; then acknowledge. A failing model falls back to its "
        "baseline and is counted (fail-open). Promotions and roll-backs take effect without a "
        "restart (KV foresight_models). With --partition I/N (or AEGIS_FORESIGHT_PARTITION) it "
        "scores only the stations whose crc32(code) mod N is I-1, through the consumer "
        "foresight-scorer-I-of-N; run exactly one process per partition. SIGTERM or SIGINT "
        "finishes the batch in hand and exits 0. See docs/foresight.md."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--partition",
            metavar="I/N",
            default=None,
            help=f"score partition I of N (default ${PARTITION_ENV}, else 1/1: every station)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=BATCH_SIZE,
            help=f"most messages per pull (default {BATCH_SIZE})",
        )
        parser.add_argument(
            "--gather-ms",
            type=float,
            default=GATHER_S * 1000,
            help="take a batch at most this often: bigger pushes into the windows, less CPU per "
            "sample, up to this much more latency (default %(default)g)",
        )
        parser.add_argument(
            "--list-stations",
            action="store_true",
            help="print the stations the partition scores and exit",
        )

    def handle(self, *args, batch_size: int, gather_ms: float, **options):
        try:
            partition = (
                Partition.parse(options["partition"])
                if options["partition"] is not None
                else Partition.from_settings()
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        if not 1 <= batch_size <= 10_000:
            raise CommandError("--batch-size must be 1-10000")
        if not 0 <= gather_ms <= 1_000:
            raise CommandError("--gather-ms must be 0-1000")
        if options["list_stations"]:
            codes = [c for c in Station.objects.values_list("code", flat=True) if partition.owns(c)]
            self.stdout.write(
                f"partition {partition} ({partition.consumer}): {len(codes)} stations"
                + "".join(f"\n  {code}" for code in sorted(codes))
            )
            return
        scorer = ForesightScorer(
            batch_size=batch_size,
            gather_s=gather_ms / 1000,
            partition=partition,
            on_batch=self._progress if options["verbosity"] >= 2 else None,
        )
        self.stdout.write(
            f"foresight scorer {partition} started (pid {os.getpid()}, consumer "
            f"{partition.consumer}); SIGTERM stops it"
        )
        try:
            asyncio.run(scorer.serve())
        except PartitionBusy as error:
            raise CommandError(str(error)) from error
        finally:
            mark_process_dead(os.getpid())
        self.stdout.write(
            f"foresight scorer {partition} stopped: {scorer.scored} samples scored, "
            f"{scorer.alerts} alerts, {scorer.swaps} model changes"
        )

    def _progress(self, messages: int, samples: int) -> None:
        self.stdout.write(f"  batch: {messages} messages, {samples} samples scored")
