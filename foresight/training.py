"""Training Foresight models on a station's stored telemetry, and the labels they learn from.

Reading. The samples of a station and range (both ends inclusive) are streamed out of
`telemetry_sample` in (ts, seq) order with one binary COPY: every row has a fixed width (the
signals are cast to float8 in SQL, NaN where a sample lacks one or holds something that is not
a number), so each block of rows becomes numpy arrays with one `np.frombuffer` and no Python
work per sample. Features come from `foresight.features.StationWindows` pushed chunk by chunk,
which gives the same numbers as the live scorer and the backtest (features.py proves it).

Rows. The first `max(windows) - 1` samples of the range only fill the longest window (the
scorer raises nothing on them either) and are left out. A long range is thinned to at most
MAX_TRAINING_ROWS evenly spaced rows (every k-th), so a day at 100 Hz trains in bounded memory;
the windows still see every sample.

Labels. A sample is defective when its unit (the MES state stored with it) later got a quality
event — any defect, or the codes given — or when it lies in an alert resolved as a true defect:
the alert's unit's samples at the station, or, for an alert without a unit, the samples of the
window that raised it. Unsupervised kinds are trained on a range assumed normal and leave the
defective rows they know of out; the supervised kind learns from them.

Registration. The detector's ONNX export is checked against the Python model on held-out rows
twice: by `train` itself, and by `register_candidate` on the bytes read back from the artifact
store, so what scorers load is what was verified. The result is a candidate; nothing here
promotes.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import connection, transaction
from django.db.models import Q
from psycopg import sql

from foresight import detectors, registry
from foresight.features import (
    FEATURES,
    FeatureSpec,
    FeatureSpecError,
    StationWindows,
    default_spec,
)
from foresight.models import AlertFeedback, AlertStatus, DefectAlert, ModelStatus, ModelVersion
from mes.errors import InvalidInput
from mes.models import QualityEvent, Station, StationVisit
from telemetry.models import Sample

Progress = Callable[[float, str], None]

CHUNK_ROWS = 50_000
MAX_TRAINING_ROWS = 300_000
MAX_SIGNALS = 8  # as for the scorer's baseline: 8 signals x 2 windows x 7 statistics
MIN_SIGNAL_SHARE = 0.01  # a signal in fewer samples than this is not a feature
# The statistics a model trained here gets unless its spec says otherwise: the default ones but
# kurtosis. On cyclic and pulsed signals (a nut runner's torque curves, a result register
# stepping back between units) a window's kurtosis is decided by whether one pulse edge sits in
# it: in normal running it reaches z of 10 to 23, so it adds heavy-tailed noise to T² and Q and
# raises the threshold without telling a drift apart. Measured on the simulator's wheel-nut
# runner (docs/foresight.md, "Thresholds, on-delay and the features trained on").
TRAINING_FEATURES = tuple(feature for feature in FEATURES if feature != "kurtosis")
WINDOW_SECONDS = (2.0, 10.0)  # the default windows in time; see default_windows
MIN_WINDOW_SAMPLES = 20
MAX_WINDOW_SAMPLES = 500
RATE_PROBE_SAMPLES = 2_000
NO_UNIT = -1
NEVER = np.iinfo(np.int64).max

_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, the zero of timestamptz on the wire
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_TRAILER = b"\xff\xff"


def parse_instant(text: str, *, name: str) -> dt.datetime:
    """An ISO 8601 instant (`2026-11-22T09:30:00Z`, an offset, or naive = UTC)."""
    try:
        value = dt.datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise InvalidInput(
            f"{name}: {text!r} is not an ISO 8601 instant (e.g. 2026-11-22T09:30:00Z)",
            fields={name: ["not an ISO 8601 instant"]},
        ) from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def check_range(start: dt.datetime, end: dt.datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput("instants must carry a time zone", fields={"start": ["naive"]})
    if end < start:
        raise InvalidInput(
            f"the range ends ({end.isoformat()}) before it starts ({start.isoformat()})",
            fields={"end": ["before start"]},
        )


def describe_range(start: dt.datetime, end: dt.datetime) -> str:
    return f"{iso_ms(start)} to {iso_ms(end)}"


def iso_ms(instant: dt.datetime) -> str:
    text = instant.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# -- what is stored -----------------------------------------------------------------------------


def _in_range(station_id: int, start: dt.datetime, end: dt.datetime):
    return Sample.objects.filter(station_id=station_id, ts__gte=start, ts__lte=end)


def range_sample_count(*, station_id: int, start: dt.datetime, end: dt.datetime) -> int:
    return _in_range(station_id, start, end).count()


def sampling_rate_hz(
    *, station_id: int, start: dt.datetime, end: dt.datetime, probe: int = RATE_PROBE_SAMPLES
) -> float | None:
    """The station's samples per second in the range, from the timestamps of its first `probe`
    samples: one over their mean interval, leaving out intervals over twice the median (a pause
    between shifts does not count; the mean resolves rates whose interval is not a whole
    millisecond); None when there are too few to tell."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ts FROM telemetry_sample WHERE station_id = %s AND ts >= %s AND ts <= %s"
            " ORDER BY ts, seq LIMIT %s",
            [station_id, start, end, probe],
        )
        stamps = np.array([_ms(ts) for (ts,) in cursor.fetchall()], dtype=np.int64)
    intervals = np.diff(np.unique(stamps))
    if intervals.size < 2:
        return None
    regular = intervals[intervals <= 2 * np.median(intervals)]
    return 1000.0 * regular.size / float(regular.sum())


def default_windows(rate_hz: float | None) -> list[int]:
    """The windows a model gets unless its spec says otherwise: WINDOW_SECONDS of the station's
    sampling (20 and 100 samples at 10 Hz, 100 and 500 at 50 Hz), the long one at most
    MAX_WINDOW_SAMPLES (longer windows cost the live scorer in proportion) and the short one a
    fifth of it, at least MIN_WINDOW_SAMPLES; the default spec's windows when the rate is
    unknown.

    Windows are counted in samples, so a fixed count means a different time span at every rate:
    at 50 Hz the default spec's 20 and 100 samples span 0.4 s and 2 s, less than one joint of
    a nut runner, and on the simulator's wheel-nut runner such a model raised 52-57 false alarms
    per 1,000 good units where windows of 2 s and 10 s raised none (docs/foresight.md)."""
    if not rate_hz:
        return list(default_spec().windows)
    short_s, long_s = WINDOW_SECONDS
    long = max(MIN_WINDOW_SAMPLES, min(MAX_WINDOW_SAMPLES, round(long_s * rate_hz)))
    short = max(MIN_WINDOW_SAMPLES, round(long * short_s / long_s))
    return sorted({short, long})


def range_signals(*, station_id: int, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    """Signal name → number of samples in the range holding a number for it."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT entry.key, count(*) FROM telemetry_sample, jsonb_each(signals) AS entry
            WHERE station_id = %s AND ts >= %s AND ts <= %s
              AND jsonb_typeof(entry.value) = 'number'
            GROUP BY entry.key
            """,
            [station_id, start, end],
        )
        return {name: int(count) for name, count in cursor.fetchall()}


def range_signal_counts(
    *, station_id: int, start: dt.datetime, end: dt.datetime, names: Sequence[str]
) -> dict[str, int]:
    """Signal name → number of samples in the range holding a number for it, for the given
    names only: one pass with a lookup per name, about three times cheaper than listing every
    key of every sample (`range_signals`)."""
    if not names:
        return {}
    counts = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE jsonb_typeof(signals -> {}) = 'number')").format(
            sql.Literal(name)
        )
        for name in names
    )
    statement = sql.SQL(
        "SELECT {counts} FROM telemetry_sample WHERE station_id = %s AND ts >= %s AND ts <= %s"
    ).format(counts=counts)
    with connection.cursor() as cursor:
        cursor.execute(statement, [station_id, start, end])
        row = cursor.fetchone()
    return {name: int(count) for name, count in zip(names, row, strict=True) if count}


def station_spec(
    signals: dict[str, int], samples: int, *, windows: Sequence[int] | None = None
) -> FeatureSpec:
    """The default windows (or `windows`) and TRAINING_FEATURES over the signals the station
    actually has: the default spec's signals first (in its order), then the most frequent
    others, at most MAX_SIGNALS; correlations of the default spec whose signals are both
    there."""
    default = default_spec().to_json()
    present = {s: n for s, n in signals.items() if n >= max(1, MIN_SIGNAL_SHARE * samples)}
    chosen = [s for s in default["signals"] if s in present]
    others = sorted((s for s in present if s not in chosen), key=lambda s: (-present[s], s))
    chosen = (chosen + others)[:MAX_SIGNALS]
    if not chosen:
        raise InvalidInput(
            "the range holds no numeric signal to train on", fields={"signals": ["none"]}
        )
    pairs = [pair for pair in default["correlations"] if set(pair) <= set(chosen)]
    features = [f for f in default["features"] if f in TRAINING_FEATURES] or list(FEATURES)
    return FeatureSpec.from_json(
        {
            **default,
            "signals": chosen,
            "windows": sorted(set(windows)) if windows else default["windows"],
            "features": features,
            "correlations": pairs,
        }
    )


@dataclass
class TelemetryChunk:
    """Consecutive samples of one station: arrays of equal length, in (ts, seq) order."""

    ts_ms: np.ndarray  # int64 epoch ms
    seq: np.ndarray  # int64
    unit_id: np.ndarray  # int64, NO_UNIT where no unit was at the station
    values: dict[str, np.ndarray]  # signal → float64, NaN where the sample lacks it

    def __len__(self) -> int:
        return int(self.ts_ms.shape[0])


def _row_dtype(signals: Sequence[str]) -> np.dtype:
    fields: list[tuple[str, str]] = [
        ("fields", ">i2"),
        ("ts_length", ">i4"),
        ("ts", ">i8"),
        ("seq_length", ">i4"),
        ("seq", ">i4"),
        ("unit_length", ">i4"),
        ("unit", ">i8"),
    ]
    for index in range(len(signals)):
        fields += [(f"length_{index}", ">i4"), (f"value_{index}", ">f8")]
    return np.dtype(fields)


def _copy_statement(
    station_id: int, start: dt.datetime, end: dt.datetime, signals: Sequence[str]
) -> sql.Composed:
    columns = [sql.SQL("ts"), sql.SQL("seq"), sql.SQL("coalesce(unit_id, {})").format(NO_UNIT)]
    for signal in signals:
        value = sql.SQL("(signals -> {})").format(sql.Literal(signal))
        # Not a number (text, a nested object) is a missing value, as for the live scorer.
        columns.append(
            sql.SQL(
                "coalesce(CASE WHEN jsonb_typeof({value}) = 'number' THEN {value}::float8 END,"
                " 'NaN'::float8)"
            ).format(value=value)
        )
    return sql.SQL(
        "COPY (SELECT {columns} FROM telemetry_sample"
        " WHERE station_id = {station} AND ts >= {start} AND ts <= {end}"
        " ORDER BY ts, seq) TO STDOUT (FORMAT BINARY)"
    ).format(
        columns=sql.SQL(", ").join(columns),
        station=sql.Literal(station_id),
        start=sql.Literal(start),
        end=sql.Literal(end),
    )


def _chunk(rows: np.ndarray, signals: Sequence[str]) -> TelemetryChunk:
    widths = [("fields", 3 + len(signals)), ("ts_length", 8), ("seq_length", 4)]
    widths += [("unit_length", 8)] + [(f"length_{i}", 8) for i in range(len(signals))]
    for name, expected in widths:
        if rows.size and not (rows[name] == expected).all():
            raise RuntimeError(f"unexpected COPY row layout ({name})")  # a NULL slipped through
    return TelemetryChunk(
        ts_ms=rows["ts"].astype(np.int64) // 1000 + _PG_EPOCH_MS,
        seq=rows["seq"].astype(np.int64),
        unit_id=rows["unit"].astype(np.int64),
        values={s: rows[f"value_{i}"].astype(np.float64) for i, s in enumerate(signals)},
    )


def telemetry_chunks(
    *,
    station_id: int,
    start: dt.datetime,
    end: dt.datetime,
    signals: Sequence[str],
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[TelemetryChunk]:
    """The station's samples in the range, in (ts, seq) order, `chunk_rows` at a time."""
    signals = list(signals)
    dtype = _row_dtype(signals)
    chunk_bytes = dtype.itemsize * chunk_rows
    statement = _copy_statement(station_id, start, end, signals)
    pending = bytearray()
    header_done = False
    # One snapshot for the whole range; and a consumer that stops early (an error, a closed
    # generator) cancels the COPY, which aborts the transaction: the savepoint keeps that from
    # poisoning the caller's.
    with transaction.atomic(), connection.cursor() as cursor, cursor.copy(statement) as copy:
        for block in copy:
            pending += block
            if not header_done:
                if len(pending) < 19:
                    continue
                if bytes(pending[:11]) != _COPY_SIGNATURE:
                    raise RuntimeError("not a binary COPY stream")
                extension = int.from_bytes(pending[15:19], "big")
                del pending[: 19 + extension]
                header_done = True
            if len(pending) >= chunk_bytes:
                whole = len(pending) // dtype.itemsize * dtype.itemsize
                rows = np.frombuffer(bytes(pending[:whole]), dtype=dtype)
                del pending[:whole]
                yield _chunk(rows, signals)
    if pending.endswith(_COPY_TRAILER):
        del pending[-len(_COPY_TRAILER) :]
    if len(pending) % dtype.itemsize:
        raise RuntimeError("the COPY stream ended inside a row")
    if pending:
        yield _chunk(np.frombuffer(bytes(pending), dtype=dtype), signals)


# -- labels -------------------------------------------------------------------------------------


@dataclass
class Labels:
    """What the MES and people said about the units and samples of a station and range."""

    defects_found: dict[int, list[int]] = field(default_factory=dict)  # unit → found_at ms
    confirmed_units: set[int] = field(default_factory=set)  # alerts resolved true_defect
    alert_windows: list[tuple[int, int]] = field(default_factory=list)  # (from, to) ms
    defects: tuple[str, ...] | None = None  # the defect codes that count (None: all)

    def __post_init__(self) -> None:
        deadlines = {unit: max(found) for unit, found in self.defects_found.items() if found}
        for unit in self.confirmed_units:
            deadlines[unit] = NEVER  # every sample of the unit at the station
        self._units = np.array(sorted(deadlines), dtype=np.int64)
        self._deadlines = np.array([deadlines[u] for u in self._units], dtype=np.int64)

    @property
    def defective_units(self) -> set[int]:
        return set(self._units.tolist())

    def __bool__(self) -> bool:
        return bool(self._units.size or self.alert_windows)

    def deadline(self, unit_id: int) -> int | None:
        """Until when (epoch ms) the unit's samples count as defective; None: a good unit."""
        index = int(np.searchsorted(self._units, unit_id))
        if index < self._units.size and self._units[index] == unit_id:
            return int(self._deadlines[index])
        return None

    def of(self, ts_ms: np.ndarray, unit_id: np.ndarray) -> np.ndarray:
        """Defective (True) or not, per sample."""
        defective = np.zeros(ts_ms.shape[0], dtype=bool)
        if self._units.size:
            index = np.minimum(np.searchsorted(self._units, unit_id), self._units.size - 1)
            defective = (self._units[index] == unit_id) & (ts_ms <= self._deadlines[index])
        for first, last in self.alert_windows:
            defective |= (ts_ms >= first) & (ts_ms <= last)
        return defective


def _ms(instant: dt.datetime) -> int:
    return int(instant.timestamp() * 1000)


def units_at_station(*, station: Station, start: dt.datetime, end: dt.datetime) -> set[int]:
    visits = StationVisit.objects.filter(station=station, arrived_at__lte=end).filter(
        Q(left_at__isnull=True) | Q(left_at__gte=start)
    )
    return set(visits.values_list("unit_id", flat=True))


def _window_start_ms(station_id: int, ts: dt.datetime, seq: int, window: int) -> int:
    """The timestamp of the first sample of the `window` samples ending at (ts, seq)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT min(ts) FROM (
                SELECT ts FROM telemetry_sample
                WHERE station_id = %s AND (ts, seq) <= (%s, %s)
                ORDER BY ts DESC, seq DESC LIMIT %s
            ) AS window_rows
            """,
            [station_id, ts, seq, window],
        )
        (first,) = cursor.fetchone()
    return _ms(first or ts)


def labels_for(
    *,
    station: Station,
    start: dt.datetime,
    end: dt.datetime,
    window: int,
    defects: Sequence[str] | None = None,
) -> Labels:
    """Quality events on the units that were at the station in the range (`defects`: only
    those codes), and the station's alerts in the range resolved as true defects."""
    units = units_at_station(station=station, start=start, end=end)
    events = QualityEvent.objects.filter(unit_id__in=units)
    if defects:
        events = events.filter(defect__code__in=list(defects))
    found: dict[int, list[int]] = {}
    for unit_id, found_at in events.values_list("unit_id", "found_at"):
        found.setdefault(unit_id, []).append(_ms(found_at))
    confirmed: set[int] = set()
    windows: list[tuple[int, int]] = []
    alerts = DefectAlert.objects.filter(
        station=station,
        ts__gte=start,
        ts__lte=end,
        status=AlertStatus.RESOLVED,
        feedback=AlertFeedback.TRUE_DEFECT,
    )
    for unit_id, ts, seq in alerts.values_list("unit_id", "ts", "seq"):
        if unit_id is not None:
            confirmed.add(unit_id)
        else:
            windows.append((_window_start_ms(station.pk, ts, seq, window), _ms(ts)))
    return Labels(
        defects_found={u: sorted(f) for u, f in found.items()},
        confirmed_units=confirmed,
        alert_windows=windows,
        defects=tuple(defects) if defects else None,
    )


# -- the dataset --------------------------------------------------------------------------------


@dataclass
class Dataset:
    spec: FeatureSpec
    ts_ms: np.ndarray  # of the kept rows
    features: np.ndarray  # float32, kept rows x features
    defective: np.ndarray  # bool per kept row
    samples: int  # samples read from the range
    warmup: int  # samples that only filled the longest window
    stride: int  # every stride-th row was kept (defective rows too when asked)


def build_dataset(
    *,
    station: Station,
    start: dt.datetime,
    end: dt.datetime,
    spec: FeatureSpec,
    labels: Labels | None = None,
    max_rows: int = MAX_TRAINING_ROWS,
    keep_defective: bool = False,
    samples: int | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Window features of the range's samples, as the scorer would see them from the range's
    start, thinned to about `max_rows` rows (all defective rows too with `keep_defective`)."""
    total = (
        samples
        if samples is not None
        else range_sample_count(station_id=station.pk, start=start, end=end)
    )
    warmup = spec.max_window - 1
    stride = max(1, math.ceil(max(total - warmup, 0) / max_rows))
    windows = StationWindows(spec)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    seen = 0
    for chunk in telemetry_chunks(
        station_id=station.pk, start=start, end=end, signals=spec.signals
    ):
        features = windows.push(chunk.ts_ms, chunk.values)
        index = np.arange(seen, seen + len(chunk))
        defective = (
            labels.of(chunk.ts_ms, chunk.unit_id) if labels else np.zeros(len(chunk), dtype=bool)
        )
        keep = (index - warmup) % stride == 0
        if keep_defective:
            keep |= defective
        keep &= index >= warmup
        parts.append((chunk.ts_ms[keep], features[keep], defective[keep]))
        seen += len(chunk)
        if progress is not None:
            progress(seen / max(total, 1), f"features of {seen:,} of {total:,} samples")
    if not parts:
        return Dataset(
            spec=spec,
            ts_ms=np.empty(0, dtype=np.int64),
            features=np.empty((0, spec.n_features), dtype=np.float32),
            defective=np.empty(0, dtype=bool),
            samples=0,
            warmup=warmup,
            stride=stride,
        )
    return Dataset(
        spec=spec,
        ts_ms=np.concatenate([p[0] for p in parts]),
        features=np.concatenate([p[1] for p in parts]),
        defective=np.concatenate([p[2] for p in parts]),
        samples=seen,
        warmup=warmup,
        stride=stride,
    )


# -- training -----------------------------------------------------------------------------------


def _stage(progress: Progress | None, low: float, high: float) -> Progress:
    """Progress of a stage mapped onto [low, high] of the whole."""

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(low + (high - low) * min(max(fraction, 0.0), 1.0), message)

    return report


def minimum_samples(spec: FeatureSpec) -> int:
    return spec.max_window - 1 + detectors.MIN_TRAINING_ROWS


def train_station_model(
    *,
    station: Station,
    start: dt.datetime,
    end: dt.datetime,
    kind: str = detectors.DEFAULT_KIND,
    spec: FeatureSpec | dict | None = None,
    defects: Sequence[str] | None = None,
    notes: str = "",
    user=None,
    max_rows: int = MAX_TRAINING_ROWS,
    progress: Progress | None = None,
) -> ModelVersion:
    """Train a detector on the station's telemetry of [start, end] and register it as a
    candidate (never promoted here). Refuses (InvalidInput, with the reason) a range with
    too few samples, without signals, or without the labels a supervised model needs."""
    started = time.monotonic()
    check_range(start, end)
    if kind not in detectors.KINDS:
        raise InvalidInput(
            f"unknown detector kind {kind!r}; one of {', '.join(detectors.KINDS)}",
            fields={"kind": [f"one of {', '.join(detectors.KINDS)}"]},
        )
    report = _stage(progress, 0.0, 1.0)
    report(0.0, f"counting the samples of station {station.code}, {describe_range(start, end)}")
    samples = range_sample_count(station_id=station.pk, start=start, end=end)
    if isinstance(spec, dict):
        try:
            spec = FeatureSpec.from_json(spec)
        except FeatureSpecError as error:
            raise InvalidInput(str(error), fields={"feature_spec": [str(error)]}) from None
    signals: dict[str, int] = {}
    if samples and spec is not None:  # only the spec's signals need counting
        signals = range_signal_counts(
            station_id=station.pk, start=start, end=end, names=spec.signals
        )
    elif samples:
        signals = range_signals(station_id=station.pk, start=start, end=end)
    rate = sampling_rate_hz(station_id=station.pk, start=start, end=end) if samples else None
    if spec is None and samples:
        spec = station_spec(signals, samples, windows=default_windows(rate))
    needed = minimum_samples(spec or default_spec())
    if samples < needed:
        raise InvalidInput(
            f"station {station.code} has {samples:,} samples in {describe_range(start, end)};"
            f" training needs at least {needed:,} ({needed - detectors.MIN_TRAINING_ROWS} fill"
            f" the longest window, then {detectors.MIN_TRAINING_ROWS} training rows)",
            fields={"start": ["too few samples in the range"]},
        )
    missing = [signal for signal in spec.signals if not signals.get(signal)]
    if missing:
        raise InvalidInput(
            f"the feature spec's signals {', '.join(missing)} have no values at station"
            f" {station.code} in {describe_range(start, end)}",
            fields={"feature_spec": [f"no values: {', '.join(missing)}"]},
        )
    report(0.02, f"{samples:,} samples; signals {', '.join(spec.signals)}")
    labels = labels_for(
        station=station, start=start, end=end, window=spec.max_window, defects=defects
    )
    supervised = kind not in detectors.UNSUPERVISED_KINDS
    dataset = build_dataset(
        station=station,
        start=start,
        end=end,
        spec=spec,
        labels=labels,
        max_rows=max_rows,
        keep_defective=supervised,
        samples=samples,
        progress=_stage(progress, 0.03, 0.55),
    )
    defect_rows = int(dataset.defective.sum())
    if supervised:
        features, y = dataset.features, dataset.defective.astype(np.int64)
    else:
        # The range is assumed normal: what is known to be defective is left out of it.
        features, y = dataset.features[~dataset.defective], None
    try:
        trained = detectors.train(kind, features, y, progress=_stage(progress, 0.55, 0.93))
    except detectors.InsufficientData as error:
        raise InvalidInput(
            f"station {station.code}, {describe_range(start, end)}: {error}",
            fields={"start": [str(error)]},
        ) from None

    report(0.95, "registering the candidate (parity check on the stored artifact)")
    metrics: dict[str, Any] = dict(trained.metrics)
    metrics["dataset"] = {
        "samples_in_range": dataset.samples,
        "warmup_samples": dataset.warmup,
        "stride": dataset.stride,
        "rows": int(dataset.features.shape[0]),
        "training_rows": int(features.shape[0]),
        "defect_rows": defect_rows,
        "defect_rows_left_out": 0 if supervised else defect_rows,
        "defective_units": len(labels.defective_units),
        "true_defect_alerts": len(labels.confirmed_units) + len(labels.alert_windows),
        "defect_codes": list(defects) if defects else "all",
        "signals": {name: signals.get(name, 0) for name in spec.signals},
        "sampling_rate_hz": rate,  # the windows fit telemetry sampled at this rate
        "seconds": round(time.monotonic() - started, 3),
    }

    def parity_check(stored: bytes) -> None:
        detectors.verify_parity(stored, trained.parity_features, trained.parity_scores)

    model = registry.register_candidate(
        station=station,
        kind=kind,
        onnx=trained.onnx,
        feature_spec=spec.to_json(),
        feature_mean=trained.feature_mean,
        feature_std=trained.feature_std,
        threshold=trained.threshold,
        training_start=start,
        training_end=end,
        metrics=metrics,
        notes=notes or f"trained on station {station.code}, {describe_range(start, end)}",
        feature_names=spec.names,
        verify=parity_check,
        user=user,
    )
    report(1.0, f"registered {model.version} (threshold {model.threshold:.4g})")
    return model


# -- nightly retraining -------------------------------------------------------------------------

NIGHTLY_HOURS = 24
NIGHTLY_MIN_SAMPLES = 10_000


def samples_per_station(*, since: dt.datetime, until: dt.datetime) -> dict[int, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT station_id, count(*) FROM telemetry_sample"
            " WHERE ts >= %s AND ts <= %s GROUP BY station_id",
            [since, until],
        )
        return {station_id: int(count) for station_id, count in cursor.fetchall()}


def retrain_request(*, station: Station, start: dt.datetime, end: dt.datetime, reason: str) -> dict:
    """The arguments of a retraining of the station over [start, end]: its production model's
    kind and feature spec when that kind needs no labels and the spec's signals are still
    there, else the default kind over the station's own signals."""
    kind, spec = detectors.DEFAULT_KIND, None
    production = ModelVersion.objects.filter(station=station, status=ModelStatus.PRODUCTION).first()
    if production is not None and production.kind in detectors.UNSUPERVISED_KINDS:
        kind, spec = production.kind, production.feature_spec
        present = range_signals(station_id=station.pk, start=start, end=end)
        if not set(spec.get("signals", [])) <= set(present):
            spec = None  # the production model's signals are gone: the station's own
    return {
        "line": station.line.code,
        "station": station.code,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "kind": kind,
        "feature_spec": spec,
        "reason": reason,
    }


def nightly_plan(
    *, now: dt.datetime, hours: int = NIGHTLY_HOURS, min_samples: int = NIGHTLY_MIN_SAMPLES
) -> list[dict]:
    """One retraining per station with enough telemetry in the last `hours`, line by line."""
    since = now - dt.timedelta(hours=hours)
    counts = samples_per_station(since=since, until=now)
    plan = []
    for station in Station.objects.select_related("line").order_by("line__code", "position"):
        if counts.get(station.pk, 0) >= min_samples:
            request = retrain_request(station=station, start=since, end=now, reason="nightly")
            plan.append({**request, "samples": counts[station.pk]})
    return plan
