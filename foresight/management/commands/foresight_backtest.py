import statistics
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from foresight.backtest import BATCH_ROWS, BacktestResult, labels_from_truth, run_backtest
from foresight.models import ModelVersion
from foresight.training import describe_range, parse_instant
from mes.errors import MesError
from mes.models import Station

PROGRESS_EVERY_S = 2.0


class Command(BaseCommand):
    help = (
        "Backtest a Foresight model: score the stored telemetry of a station over --start … "
        "--end (ISO 8601 instants, both inclusive) in time order exactly as the live scorer "
        "would — the same features, ONNX session, fail-open fallback, one alert per episode "
        "with hysteresis, and no alert until the longest window is full — and write one line "
        "per sample to --out: ts (ISO 8601 UTC, ms), score, alert (1 where an alert would have "
        "been raised). When the range has labels (quality events on the units that were at "
        "the station, alerts resolved as true defects) it prints, per unit, precision, recall "
        "and F1 (a defective unit is caught when an alert is raised while it is at the "
        "station, before it leaves it), false alarms per 1,000 good units and the lead time "
        "from the first alert to the unit leaving the station and to its defect record, and "
        "the same precision/recall per sample. See docs/foresight.md."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, metavar="V", help="model version")
        parser.add_argument("--station", required=True, metavar="S", help="station code")
        parser.add_argument("--start", required=True, metavar="T1", help="first instant")
        parser.add_argument("--end", required=True, metavar="T2", help="last instant (inclusive)")
        parser.add_argument(
            "--out", required=True, metavar="FILE.csv", type=Path, help="where to write scores"
        )
        parser.add_argument(
            "--defects",
            metavar="CODES",
            default=None,
            help="comma-separated defect codes whose quality events make a unit defective "
            "(default: every defect)",
        )
        parser.add_argument(
            "--truth",
            metavar="FILE",
            type=Path,
            default=None,
            help="judge against the simulator's ground truth (manage.py simulate --truth-file) "
            "instead of the MES's labels: a unit is defective when a labelled fault acted on "
            "it at this station, whether or not a defect was recorded later",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=BATCH_ROWS,
            help=f"samples per scoring batch (default {BATCH_ROWS}; the result does not depend "
            "on it)",
        )

    def handle(self, *args, **options):
        model = (
            ModelVersion.objects.select_related("station").filter(version=options["model"]).first()
        )
        if model is None:
            raise CommandError(f"unknown model version {options['model']!r}")
        station = Station.objects.filter(code=options["station"]).first()
        if station is None:
            raise CommandError(f"unknown station {options['station']!r}")
        if not 1 <= options["batch_size"] <= 100_000:
            raise CommandError("--batch-size must be 1-100000")
        quiet = options["verbosity"] == 0
        if station.pk != model.station_id and not quiet:
            self.stdout.write(
                f"note: {model.version} was trained on station {model.station.code}, not "
                f"{station.code}"
            )
        defects = [c.strip() for c in (options["defects"] or "").split(",") if c.strip()]
        try:
            start = parse_instant(options["start"], name="start")
            end = parse_instant(options["end"], name="end")
            labels = None
            if options["truth"] is not None:
                with options["truth"].open(encoding="utf-8") as truth:
                    labels = labels_from_truth(truth, station=station)
            with options["out"].open("w", encoding="utf-8", newline="") as out:
                result = run_backtest(
                    model=model,
                    station=station,
                    start=start,
                    end=end,
                    out=out,
                    defects=defects or None,
                    labels=labels,
                    batch_rows=options["batch_size"],
                    progress=None if quiet else self._progress(),
                )
        except MesError as error:
            raise CommandError(error.detail) from error
        except OSError as error:
            raise CommandError(f"{error.filename or '--out'}: {error.strerror}") from error
        if options["truth"] is not None:
            source = f"the simulator's ground truth ({options['truth']})"
        else:
            codes = ", ".join(defects) if defects else "any defect"
            source = f"quality events ({codes}) and alerts resolved as true defects"
        self._summary(result, options["out"], source)

    def _progress(self):
        last = [time.monotonic()]

        def progress(fraction: float, message: str) -> None:
            now = time.monotonic()
            if now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            self.stdout.write(f"  {fraction:4.0%}  {message}")
            self.stdout.flush()

        return progress

    def _summary(self, result: BacktestResult, out: Path, source: str) -> None:
        write = self.stdout.write
        write(
            f"backtest of {result.model} on station {result.station}, "
            f"{describe_range(result.start, result.end)}: {result.samples:,} samples scored, "
            f"{len(result.alerts)} alerts (threshold {result.threshold:.6g}); wrote {out}"
        )
        if result.model_errors:
            write(
                f"  the model failed on {result.model_errors} batches: they were scored by its "
                "fail-open baseline, as live"
            )
        e = result.evaluation
        if e is None:
            write(f"  no labels in the range (from {source}): precision and recall need labels")
            return
        write(f"  labels: {source}")
        write(
            f"  units that arrived at station {result.station} in the range: {len(e.units)} "
            f"({e.defective_units} defective, {e.good_units} good)"
        )
        write(
            f"  unit level: precision {_share(e.precision)}, recall {_share(e.recall)} "
            f"({e.caught} of {e.defective_units} defective units caught before leaving station "
            f"{result.station}), F1 {_share(e.f1)}"
        )
        rate = e.false_alarms_per_1000_good_units
        write(
            f"  false alarms: {e.false_alarms} "
            f"({'n/a' if rate is None else f'{rate:.2f}'} per 1,000 good units; "
            f"{e.good_units_alerted} good units alerted)"
        )
        write(
            "  lead time from the first alert: to leaving the station "
            f"{_seconds(e.lead_to_departure_s)}; to the defect record "
            f"{_seconds(e.lead_to_defect_record_s)}"
        )
        write(
            f"  sample level ({e.samples_judged:,} samples after the warm-up, score ≥ threshold): "
            f"precision {_share(e.sample_precision)}, recall {_share(e.sample_recall)}, "
            f"F1 {_share(e.sample_f1)}, false-positive rate "
            f"{_share(e.sample_false_positive_rate, digits=5)}"
        )


def _share(value: float | None, *, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _seconds(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"median {statistics.median(values):.1f} s "
        f"(min {min(values):.1f} s, max {max(values):.1f} s)"
    )
