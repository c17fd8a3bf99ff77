"""Backtests: a model scores a stored range exactly as the live scorer would, and is judged.

Scoring. The range's samples are read in (ts, seq) order (`foresight.training.telemetry_chunks`)
and fed, batch by batch, to a `foresight.scoring.StationScorer` holding the model as its
production model, loaded by the scorer's own `load_model` (sha256-verified artifact): the same
windows, the same ONNX session, the same fail-open fallback, the same episodes (one alert per
episode, on-delay, hysteresis) and the same warm-up (no alert until the longest window is full,
counted from the range's start as from a scorer's start). Features and episodes do not depend on how
samples are batched, so the alerts are those the live scorer would have raised.

Judging, when labels exist (`foresight.training.labels_for`: quality events on the units, alerts
resolved as true defects):

- per unit, for the units that arrived at the station in the range: a defective unit is
  *caught* when an alert is raised while it is at the station, i.e. before it leaves it; a good
  unit with an alert is a false positive. Precision, recall and F1 count units. Every alert not
  raised on a defective unit (on a good unit, or with the station empty) is a false alarm,
  reported per 1,000 good units. Lead time: from a caught unit's first alert to its leaving the
  station and to its defect record.
- per sample (after the warm-up): a score at or above the threshold against the sample's label.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from foresight.detectors import BaselineScorer
from foresight.models import ModelVersion
from foresight.scoring import StationScorer, baseline_spec
from foresight.training import (
    Labels,
    Progress,
    check_range,
    labels_for,
    range_sample_count,
    telemetry_chunks,
)
from mes.errors import InvalidInput
from mes.models import Station, StationSignal, StationVisit, Unit

CSV_HEADER = "ts,score,alert\n"
BATCH_ROWS = 5_000


class _SampleSignals:
    """`raw[i]`: the signals of sample i, built only for the samples that raise an alert (the
    live scorer passes a list of dicts; building one per sample here would cost more than the
    scoring)."""

    def __init__(self, values: dict[str, np.ndarray]) -> None:
        self.values = values

    def __getitem__(self, index: int) -> dict[str, float]:
        row = {name: float(column[index]) for name, column in self.values.items()}
        return {name: value for name, value in row.items() if value == value}  # drop NaN


@dataclass
class AlertRow:
    ts_ms: int
    seq: int
    score: float
    unit_id: int | None  # the unit at the station then, by the MES visits


@dataclass
class UnitOutcome:
    unit_id: int
    arrived_ms: int
    left_ms: int | None
    defective: bool
    first_alert_ms: int | None = None
    defect_found_ms: int | None = None  # the first defect record at or after the first alert

    @property
    def caught(self) -> bool:
        return self.defective and self.first_alert_ms is not None


@dataclass
class Evaluation:
    units: list[UnitOutcome]
    false_alarms: int  # alerts not raised on a defective unit
    samples_judged: int = 0
    true_positive_samples: int = 0
    false_positive_samples: int = 0
    false_negative_samples: int = 0

    @property
    def defective_units(self) -> int:
        return sum(1 for unit in self.units if unit.defective)

    @property
    def good_units(self) -> int:
        return len(self.units) - self.defective_units

    @property
    def caught(self) -> int:
        return sum(1 for unit in self.units if unit.caught)

    @property
    def good_units_alerted(self) -> int:
        return sum(1 for u in self.units if not u.defective and u.first_alert_ms is not None)

    @property
    def precision(self) -> float | None:
        alerted = self.caught + self.good_units_alerted
        return self.caught / alerted if alerted else None

    @property
    def recall(self) -> float | None:
        return self.caught / self.defective_units if self.defective_units else None

    @property
    def f1(self) -> float | None:
        return _f1(self.precision, self.recall)

    @property
    def false_alarms_per_1000_good_units(self) -> float | None:
        return 1000.0 * self.false_alarms / self.good_units if self.good_units else None

    @property
    def lead_to_departure_s(self) -> list[float]:
        return [
            (u.left_ms - u.first_alert_ms) / 1000
            for u in self.units
            if u.caught and u.left_ms is not None
        ]

    @property
    def lead_to_defect_record_s(self) -> list[float]:
        return [
            (u.defect_found_ms - u.first_alert_ms) / 1000
            for u in self.units
            if u.caught and u.defect_found_ms is not None
        ]

    @property
    def sample_precision(self) -> float | None:
        flagged = self.true_positive_samples + self.false_positive_samples
        return self.true_positive_samples / flagged if flagged else None

    @property
    def sample_recall(self) -> float | None:
        defective = self.true_positive_samples + self.false_negative_samples
        return self.true_positive_samples / defective if defective else None

    @property
    def sample_f1(self) -> float | None:
        return _f1(self.sample_precision, self.sample_recall)

    @property
    def sample_false_positive_rate(self) -> float | None:
        good = self.samples_judged - self.true_positive_samples - self.false_negative_samples
        return self.false_positive_samples / good if good else None

    def as_dict(self) -> dict:
        lead_departure, lead_record = self.lead_to_departure_s, self.lead_to_defect_record_s
        return {
            "units": len(self.units),
            "defective_units": self.defective_units,
            "good_units": self.good_units,
            "caught": self.caught,
            "good_units_alerted": self.good_units_alerted,
            "false_alarms": self.false_alarms,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_alarms_per_1000_good_units": self.false_alarms_per_1000_good_units,
            "lead_to_departure_s": _spread(lead_departure),
            "lead_to_defect_record_s": _spread(lead_record),
            "samples_judged": self.samples_judged,
            "sample_precision": self.sample_precision,
            "sample_recall": self.sample_recall,
            "sample_f1": self.sample_f1,
            "sample_false_positive_rate": self.sample_false_positive_rate,
        }


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclass
class BacktestResult:
    model: str
    station: str
    start: dt.datetime
    end: dt.datetime
    threshold: float
    samples: int = 0
    alerts: list[AlertRow] = field(default_factory=list)
    model_errors: int = 0  # batches the model failed on (scored by its fallback baseline)
    evaluation: Evaluation | None = None  # None: no labels in the range
    labels: Labels | None = None


def _visits(station: Station, start: dt.datetime, end: dt.datetime) -> list[tuple]:
    """(arrived ms, left ms or None, unit id) of every visit overlapping the range, in order."""
    visits = (
        StationVisit.objects.filter(station=station, arrived_at__lte=end)
        .exclude(left_at__lt=start)
        .order_by("arrived_at")
        .values_list("arrived_at", "left_at", "unit_id")
    )
    return [
        (_ms(arrived), _ms(left) if left is not None else None, unit)
        for arrived, left, unit in visits
    ]


def _ms(instant: dt.datetime) -> int:
    return int(instant.timestamp() * 1000)


def _unit_at(visits: list[tuple], starts: list[int], ts_ms: int) -> int | None:
    index = bisect.bisect_right(starts, ts_ms) - 1
    if index < 0:
        return None
    _arrived, left, unit = visits[index]
    return unit if left is None or ts_ms < left else None


def _evaluate_units(
    *,
    alerts: list[AlertRow],
    visits: list[tuple],
    labels: Labels,
    start_ms: int,
    end_ms: int,
) -> tuple[list[UnitOutcome], int]:
    outcomes: dict[int, UnitOutcome] = {}
    for arrived, left, unit in visits:
        if not start_ms <= arrived <= end_ms:
            continue  # arrived before the range: its visit was only partly scored
        deadline = labels.deadline(unit)
        outcomes[unit] = UnitOutcome(
            unit_id=unit,
            arrived_ms=arrived,
            left_ms=left,
            defective=deadline is not None and deadline >= arrived,
        )
    arrived_before = {unit for arrived, _left, unit in visits if arrived < start_ms}
    false_alarms = 0
    for alert in alerts:
        outcome = outcomes.get(alert.unit_id) if alert.unit_id is not None else None
        if outcome is None and alert.unit_id in arrived_before:
            continue  # on a unit that arrived before the range: not judged
        if outcome is not None and outcome.first_alert_ms is None:
            outcome.first_alert_ms = alert.ts_ms
        if outcome is None or not outcome.defective:
            false_alarms += 1
    for outcome in outcomes.values():
        if outcome.caught:
            found = [
                ms
                for ms in labels.defects_found.get(outcome.unit_id, [])
                if ms >= outcome.first_alert_ms
            ]
            outcome.defect_found_ms = min(found) if found else None
    return list(outcomes.values()), false_alarms


def labels_from_truth(lines: Iterable[str], *, station: Station) -> Labels:
    """Labels from the simulator's ground truth (`manage.py simulate --truth-file`, one JSON
    record per line): the units whose fault acted at this station (its evidence names the
    station) are defective, whether or not a defect was recorded on them later; the defect
    record, when there is one, gives the lead time."""
    faulty: dict[str, list[int]] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise InvalidInput(f"not a ground-truth record: {error}") from None
        evidence = record.get("evidence") or {}
        if not record.get("unit") or evidence.get("station") != station.code:
            continue
        found = faulty.setdefault(record["unit"], [])
        defect = record.get("defect") or {}
        if defect.get("found_at"):
            found.append(_ms(dt.datetime.fromisoformat(defect["found_at"])))
    units = dict(Unit.objects.filter(serial__in=list(faulty)).values_list("serial", "pk"))
    return Labels(
        defects_found={units[s]: sorted(found) for s, found in faulty.items() if s in units},
        confirmed_units=set(units.values()),
    )


def run_backtest(
    *,
    model: ModelVersion,
    station: Station,
    start: dt.datetime,
    end: dt.datetime,
    out: TextIO,
    defects: Sequence[str] | None = None,
    labels: Labels | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: Progress | None = None,
) -> BacktestResult:
    """Score the station's telemetry of [start, end] with `model` as the live scorer would,
    write `ts,score,alert` per sample to `out`, and judge the alerts against the labels (the
    MES's, `labels_for`, unless given, e.g. `labels_from_truth`)."""
    from foresight.scorer import load_model  # the live scorer's loading, sha256 included

    check_range(start, end)
    try:
        loaded = load_model(model)
    except Exception as error:  # noqa: BLE001 - whatever keeps the artifact from loading
        raise InvalidInput(
            f"model {model.version} does not load: {error}", fields={"model": [str(error)]}
        ) from None
    declared = list(StationSignal.objects.filter(station=station).values_list("name", flat=True))
    errors: list[str] = []
    scorer = StationScorer(
        station.pk, signals=declared, on_error=lambda _version, error: errors.append(str(error))
    )
    scorer.use(loaded, [])
    signals = list(dict.fromkeys([*loaded.spec.signals, *baseline_spec(declared).signals]))
    total = range_sample_count(station_id=station.pk, start=start, end=end)
    if labels is None:
        labels = labels_for(
            station=station, start=start, end=end, window=loaded.spec.max_window, defects=defects
        )
    visits = _visits(station, start, end)
    starts = [visit[0] for visit in visits]
    judged_from = loaded.spec.max_window - 1
    result = BacktestResult(
        model=model.version, station=station.code, start=start, end=end, threshold=loaded.threshold
    )
    counts = np.zeros(4, dtype=np.int64)  # judged, true positive, false positive, false negative
    out.write(CSV_HEADER)
    for chunk in telemetry_chunks(
        station_id=station.pk, start=start, end=end, signals=signals, chunk_rows=batch_rows
    ):
        scored = scorer.score(chunk.ts_ms, chunk.seq, chunk.values, _SampleSignals(chunk.values))
        _model_id, _shadow, scores = scored.by_model[0]
        threshold = loaded.threshold if scored.source == "model" else BaselineScorer.threshold
        result.model_errors += scored.errors
        flags = np.zeros(len(chunk), dtype=np.int8)
        for alert in scored.alerts:
            # Judged where it was raised, once its on-delay was over (the sample that crossed
            # first may lie in an earlier batch): that is when an operator would see it.
            ts, sample = alert.raised_ts_ms, alert.raised_seq
            (index,) = np.flatnonzero((chunk.ts_ms == ts) & (chunk.seq == sample))[:1]
            flags[index] = 1
            result.alerts.append(AlertRow(ts, sample, alert.score, _unit_at(visits, starts, ts)))
        stamps = np.datetime_as_string(chunk.ts_ms.astype("datetime64[ms]"), unit="ms")
        out.write(
            "".join(
                f"{stamp}Z,{score:.7g},{flag}\n"
                for stamp, score, flag in zip(
                    stamps.tolist(), scores.tolist(), flags.tolist(), strict=True
                )
            )
        )
        if labels:
            judged = np.arange(result.samples, result.samples + len(chunk)) >= judged_from
            above = (scores >= threshold) & judged
            defective = labels.of(chunk.ts_ms, chunk.unit_id) & judged
            counts += [
                int(judged.sum()),
                int((above & defective).sum()),
                int((above & ~defective).sum()),
                int((~above & defective).sum()),
            ]
        result.samples += len(chunk)
        if progress is not None:
            progress(
                result.samples / max(total, 1),
                f"scored {result.samples:,} of {total:,} samples, {len(result.alerts)} alerts",
            )
    if labels:
        units, false_alarms = _evaluate_units(
            alerts=result.alerts,
            visits=visits,
            labels=labels,
            start_ms=_ms(start),
            end_ms=_ms(end),
        )
        result.evaluation = Evaluation(
            units=units,
            false_alarms=false_alarms,
            samples_judged=int(counts[0]),
            true_positive_samples=int(counts[1]),
            false_positive_samples=int(counts[2]),
            false_negative_samples=int(counts[3]),
        )
    result.labels = labels
    return result
