import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from foresight import detectors, training
from mes.audit import audit_context
from mes.errors import MesError
from mes.models import Station

PROGRESS_EVERY_S = 2.0


class Command(BaseCommand):
    help = (
        "Train a Foresight model on a station's stored telemetry over --start … --end (ISO 8601 "
        "instants, both inclusive; naive ones are UTC) and register it as a candidate. The "
        "range is assumed normal: unsupervised kinds derive their alert threshold from it alone "
        "(no labels needed) and leave out the samples of units known to be defective (quality "
        "events, alerts resolved as true defects); the supervised kind learns from those "
        "labels. The features are the default windows and statistics over the signals the "
        "station has in the range (or --feature-spec). The ONNX export is verified against the "
        "Python model on held-out rows before it is registered. Progress is printed as it "
        "goes; the LAST line printed is the new model version and nothing else (what "
        "foresight_backtest --model and the promote API take). Nothing is promoted. See "
        "docs/foresight.md."
    )

    def add_arguments(self, parser):
        parser.add_argument("--station", required=True, metavar="S", help="station code, e.g. 5")
        parser.add_argument(
            "--start", required=True, metavar="T1", help="first instant, e.g. 2026-11-22T06:00Z"
        )
        parser.add_argument("--end", required=True, metavar="T2", help="last instant (inclusive)")
        parser.add_argument(
            "--kind",
            default=detectors.DEFAULT_KIND,
            choices=detectors.KINDS,
            help=f"detector kind (default {detectors.DEFAULT_KIND}: multivariate statistical "
            "process control, PCA T² and Q)",
        )
        parser.add_argument(
            "--defects",
            metavar="CODES",
            default=None,
            help="comma-separated defect codes whose quality events label units as defective "
            "(default: every defect)",
        )
        parser.add_argument(
            "--feature-spec",
            metavar="FILE",
            type=Path,
            default=None,
            help="a feature spec as JSON (signals, windows, features, correlations) instead "
            "of the default over the station's signals",
        )
        parser.add_argument("--notes", default="", help="notes stored on the model version")

    def handle(self, *args, **options):
        station = Station.objects.select_related("line").filter(code=options["station"]).first()
        if station is None:
            raise CommandError(f"unknown station {options['station']!r}")
        spec = None
        if options["feature_spec"] is not None:
            try:
                spec = json.loads(options["feature_spec"].read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise CommandError(f"--feature-spec: {error}") from error
        quiet = options["verbosity"] == 0
        try:
            start = training.parse_instant(options["start"], name="start")
            end = training.parse_instant(options["end"], name="end")
            with audit_context(user=None, source="command"):
                model = training.train_station_model(
                    station=station,
                    start=start,
                    end=end,
                    kind=options["kind"],
                    spec=spec,
                    defects=_codes(options["defects"]),
                    notes=options["notes"],
                    progress=None if quiet else self._progress(),
                )
        except MesError as error:
            raise CommandError(error.detail) from error
        except detectors.DetectorError as error:
            raise CommandError(f"training failed: {error}") from error
        if not quiet:
            data = model.metrics.get("dataset", {})
            self.stdout.write(
                f"registered candidate {model.version} of station {station.code}: {model.kind}, "
                f"threshold {model.threshold:.6g}, {data.get('training_rows', 0):,} training "
                f"rows of {data.get('samples_in_range', 0):,} samples (every "
                f"{data.get('stride', 1)}), {data.get('defect_rows_left_out', 0):,} defective "
                f"rows left out, {len(model.feature_names)} features"
            )
        self.stdout.write(model.version)

    def _progress(self):
        last = [-PROGRESS_EVERY_S]

        def progress(fraction: float, message: str) -> None:
            now = time.monotonic()
            if fraction < 1.0 and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            self.stdout.write(f"  {fraction:4.0%}  {message}")
            self.stdout.flush()

        return progress


def _codes(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [code.strip() for code in text.split(",") if code.strip()]
