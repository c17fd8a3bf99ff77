"""Reads of stored telemetry for charts and traceability.

- `signal_series`: a station's signals over a range as min/max/mean buckets, computed in
  PostgreSQL, never more buckets than asked for: a chart gets one bucket per pixel and still
  shows every spike, because a bucket keeps its extremes.
- `samples_near`: the raw samples of a window closest to an instant (the VIN trace's table).
- `vin_trace`: everything the VIN trace shows for one unit and one instant.
- `spc_chart`: the points of a station signal's control chart over a range, with the limits
  and the SPC alerts the live scorer raised.

Long ranges read the 1-minute roll-ups (`telemetry_rollup_1m`) up to their watermark and the
raw samples after it, so a day costs the same as an hour.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import orjson
from django.db import DataError, connection, transaction
from django.db.models import Q
from psycopg import sql

from foresight import spc
from foresight.api.selectors import ScoreChart, score_chart
from foresight.models import AlertSource, ControlLimits, DefectAlert
from foresight.registry import unit_firmware
from mes.errors import InvalidInput, UnknownReference
from mes.models import (
    FirmwareFlash,
    QualityEvent,
    Station,
    StationSignal,
    StationVisit,
    Unit,
)
from telemetry.models import RollupWatermark
from telemetry.upkeep import WATERMARK

# Bounds of one request: what a chart may ask for, so no query reads without limit.
MAX_POINTS = 5000
DEFAULT_POINTS = 1000
MAX_SIGNALS = 16
MAX_RANGE = dt.timedelta(days=31)
# Ranges longer than this read the roll-ups (buckets of whole minutes): at 100 Hz an hour is
# 360,000 samples per station, about the most a page load should aggregate (docs/ui.md).
RAW_SPAN_LIMIT = dt.timedelta(hours=1)
# The trace's table: the samples closest to the instant, at most this many.
MAX_TRACE_ROWS = 400
TRACE_WINDOWS = (5, 10, 30, 60, 120, 300)  # seconds either side of the instant
DEFAULT_TRACE_WINDOW = 30
# A control chart over a long range reads at most this many samples (the newest).
MAX_SPC_SAMPLES = 100_000
MAX_SPC_POINTS = 2000
# date_bin's origin for minute-aligned buckets: the roll-ups' own.
MINUTE_ORIGIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def _check_range(start: dt.datetime, end: dt.datetime, longest: dt.timedelta = MAX_RANGE) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput("instants need a time zone", fields={"start": ["naive"]})
    if end < start:
        raise InvalidInput("the range ends before it starts", fields={"end": ["before start"]})
    if end - start > longest:
        raise InvalidInput(
            f"the range is longer than {longest.days} days",
            fields={"end": [f"at most {longest.days} days after start"]},
        )


# -- decimated series -------------------------------------------------------------------------


@dataclass
class SignalSeries:
    """One signal in buckets of equal width: each point is {ts, min, max, mean, samples}."""

    signal: str
    unit: str
    points: list[dict] = field(default_factory=list)


@dataclass
class SeriesChart:
    station: str
    start: dt.datetime
    end: dt.datetime
    bucket_seconds: float
    source: str  # "samples", or "rollups" (minutes up to the watermark, samples after it)
    series: list[SignalSeries]


# One row per bucket, four aggregates per signal. jsonb_to_record parses each sample's signals
# once into typed columns: 2.5x faster than extracting each signal with `->` (measured on
# 360,000 samples of four signals; docs/ui.md). The ingest stores numbers only; should a
# sample hold something else, the cast fails and SAFE_COLUMN is used instead.
RAW_BUCKETS_SQL = """
SELECT date_bin(%(width)s, s.ts, %(origin)s) AS bucket, {aggregates}
FROM telemetry_sample AS s {source}
WHERE s.station_id = %(station)s AND s.ts >= %(start)s AND s.ts <= %(end)s
GROUP BY 1
"""
FAST_SOURCE = "CROSS JOIN LATERAL jsonb_to_record(s.signals) AS r({columns})"
SAFE_COLUMN = (
    "CASE WHEN jsonb_typeof(s.signals -> {key}) = 'number' THEN (s.signals -> {key})::float8 END"
)


def _raw_buckets_sql(names: list[str], *, safe: bool) -> sql.Composed:
    if safe:
        values = [sql.SQL(SAFE_COLUMN).format(key=sql.Literal(name)) for name in names]
        source = sql.SQL("")
    else:
        values = [sql.SQL("r.{}").format(sql.Identifier(name)) for name in names]
        source = sql.SQL(FAST_SOURCE).format(
            columns=sql.SQL(", ").join(
                sql.SQL("{} float8").format(sql.Identifier(name)) for name in names
            )
        )
    aggregates = sql.SQL(", ").join(
        sql.SQL("min({v}), max({v}), avg({v}), count({v})").format(v=value) for value in values
    )
    return sql.SQL(RAW_BUCKETS_SQL).format(aggregates=aggregates, source=source)


def _raw_buckets(cursor, names: list[str], parameters: dict) -> list[tuple]:
    """(signal, bucket, min, max, mean, count) of the samples, one row per signal and bucket
    that has values."""
    try:
        with transaction.atomic():  # a savepoint: a failed cast leaves the caller's intact
            cursor.execute(_raw_buckets_sql(names, safe=False), parameters)
            fetched = cursor.fetchall()
    except DataError:
        cursor.execute(_raw_buckets_sql(names, safe=True), parameters)
        fetched = cursor.fetchall()
    rows = []
    for bucket, *aggregates in fetched:
        for index, name in enumerate(names):
            low, high, mean, count = aggregates[4 * index : 4 * index + 4]
            if count:
                rows.append((name, bucket, low, high, mean, count))
    return rows


ROLLUP_BUCKETS_SQL = """
SELECT signal, date_bin(%(width)s, bucket, %(origin)s) AS b,
       min(minimum), max(maximum), sum(mean * samples) / sum(samples), sum(samples)
FROM telemetry_rollup_1m
WHERE station_id = %(station)s AND signal = ANY(%(signals)s::text[])
  AND bucket >= %(first_minute)s AND bucket <= %(end)s AND bucket < %(until)s
GROUP BY 1, 2
"""


def station_signal_units(station: Station) -> dict[str, str]:
    """The signals a station declares, name → engineering unit, in name order."""
    return dict(
        StationSignal.objects.filter(station=station).order_by("name").values_list("name", "unit")
    )


def observed_signals(*, station: Station, start: dt.datetime, end: dt.datetime) -> list[str]:
    """Numeric signals found in the first thousand samples of the range (for a station that
    declares none)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT entry.key FROM (
                SELECT signals FROM telemetry_sample
                WHERE station_id = %s AND ts >= %s AND ts <= %s LIMIT 1000
            ) AS s, jsonb_each(s.signals) AS entry
            WHERE jsonb_typeof(entry.value) = 'number' ORDER BY 1
            """,
            [station.pk, start, end],
        )
        return [name for (name,) in cursor.fetchall()][:MAX_SIGNALS]


def _bucket_width(span: dt.timedelta, points: int, *, minutes: bool) -> dt.timedelta:
    """A width giving at most `points` buckets over `span`. With an origin at the range's
    start, strictly more than span/points keeps the inclusive end in the last bucket; buckets
    aligned to whole minutes (another origin) need span/(points - 1), rounded up to minutes."""
    span_us = max(1, int(span / dt.timedelta(microseconds=1)))
    if not minutes:
        return dt.timedelta(microseconds=max(1000, span_us // points + 1))
    minute_us = 60_000_000
    per_bucket = -(-span_us // max(1, points - 1))
    return dt.timedelta(microseconds=max(1, -(-per_bucket // minute_us)) * minute_us)


def _rollups_complete_until() -> dt.datetime | None:
    return (
        RollupWatermark.objects.filter(name=WATERMARK)
        .values_list("complete_until", flat=True)
        .first()
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def signal_series(
    *,
    station: Station,
    start: dt.datetime,
    end: dt.datetime,
    points: int = DEFAULT_POINTS,
    signals: list[str] | None = None,
) -> SeriesChart:
    """The station's signals from `start` to `end` (inclusive), at most `points` buckets per
    signal, each with the lowest, highest and mean value and the sample count. Without
    `signals`, those the station declares (or, if none, those its samples carry)."""
    _check_range(start, end)
    if not 2 <= points <= MAX_POINTS:
        raise InvalidInput(
            f"points is 2 to {MAX_POINTS}", fields={"points": [f"2 to {MAX_POINTS}"]}
        )
    units = station_signal_units(station)
    if signals and len(set(signals)) > MAX_SIGNALS:
        raise InvalidInput(
            f"at most {MAX_SIGNALS} signals at once", fields={"signal": [f"≤ {MAX_SIGNALS}"]}
        )
    # Without a choice, the station's signals (the first MAX_SIGNALS of them).
    names = list(dict.fromkeys(signals)) if signals else list(units)[:MAX_SIGNALS]
    if not names:
        names = observed_signals(station=station, start=start, end=end)
    span = end - start
    use_rollups = span > RAW_SPAN_LIMIT
    width = _bucket_width(span, points, minutes=use_rollups)
    origin = MINUTE_ORIGIN if use_rollups else start
    parameters = {
        "width": width,
        "origin": origin,
        "station": station.pk,
        "signals": names,
        "start": start,
        "end": end,
    }
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        if names and use_rollups:
            until = _rollups_complete_until() or start
            first_minute = MINUTE_ORIGIN + (start - MINUTE_ORIGIN) // MINUTE * MINUTE
            cursor.execute(
                ROLLUP_BUCKETS_SQL, {**parameters, "first_minute": first_minute, "until": until}
            )
            rows.extend(cursor.fetchall())
            # After the watermark the minutes are not rolled up yet: read the samples.
            if until <= end:
                tail = {**parameters, "start": max(start, until)}
                rows.extend(_raw_buckets(cursor, names, tail))
        elif names:
            rows.extend(_raw_buckets(cursor, names, parameters))
    merged: dict[tuple[str, dt.datetime], list] = {}
    for name, bucket, low, high, mean, count in rows:
        count = int(count)
        known = merged.get((name, bucket))
        if known is None:
            merged[(name, bucket)] = [low, high, float(mean) * count, count]
        else:  # a minute bucket both rolled up and read raw (late samples): combine
            known[0], known[1] = min(known[0], low), max(known[1], high)
            known[2] += float(mean) * count
            known[3] += count
    series = {name: SignalSeries(signal=name, unit=units.get(name, "")) for name in names}
    for (name, bucket), (low, high, total, count) in sorted(merged.items()):
        series[name].points.append(
            {
                "ts": bucket,
                "min": _finite(low),
                "max": _finite(high),
                "mean": _finite(total / count),
                "samples": count,
            }
        )
    return SeriesChart(
        station=station.code,
        start=start,
        end=end,
        bucket_seconds=width.total_seconds(),
        source="rollups" if use_rollups else "samples",
        series=list(series.values()),
    )


# -- raw samples near an instant ----------------------------------------------------------------

SAMPLES_NEAR_SQL = """
(SELECT ts, seq, vin, serial, signals FROM telemetry_sample
 WHERE station_id = %(station)s AND ts >= %(start)s AND ts <= %(at)s
 ORDER BY ts DESC, seq DESC LIMIT %(before)s)
UNION ALL
(SELECT ts, seq, vin, serial, signals FROM telemetry_sample
 WHERE station_id = %(station)s AND ts > %(at)s AND ts <= %(end)s
 ORDER BY ts, seq LIMIT %(after)s)
"""


@dataclass
class SampleRow:
    ts: dt.datetime
    seq: int
    vin: str | None
    serial: str | None
    signals: dict[str, float | None]


def samples_near(
    *,
    station: Station,
    at: dt.datetime,
    start: dt.datetime,
    end: dt.datetime,
    limit: int = MAX_TRACE_ROWS,
) -> tuple[list[SampleRow], bool]:
    """The station's samples in [start, end] closest to `at` (at most `limit`, half before and
    half after it, in time order) and whether the window held more."""
    _check_range(start, end)
    with connection.cursor() as cursor:
        cursor.execute(
            SAMPLES_NEAR_SQL,
            {
                "station": station.pk,
                "start": start,
                "end": end,
                "at": at,
                "before": limit + 1,
                "after": limit + 1,
            },
        )
        fetched = cursor.fetchall()
    before = sorted((row for row in fetched if row[0] <= at), key=lambda row: (row[0], row[1]))
    after = sorted((row for row in fetched if row[0] > at), key=lambda row: (row[0], row[1]))
    # Half after the instant, the rest up to it; a side with fewer gives its share away.
    take_after = min(len(after), limit // 2)
    take_before = min(len(before), limit - take_after)
    take_after = min(len(after), limit - take_before)
    truncated = len(before) > take_before or len(after) > take_after
    kept = before[len(before) - take_before :] + after[:take_after]
    rows = [
        SampleRow(ts=ts, seq=seq, vin=vin, serial=serial, signals=_numbers(signals))
        for ts, seq, vin, serial, signals in kept
    ]
    return rows, truncated


def _numbers(signals: str | dict | None) -> dict[str, float | None]:
    """A sample's signals (jsonb, which Django's cursor hands over as text): numbers as floats,
    anything else None."""
    if isinstance(signals, str | bytes):
        signals = orjson.loads(signals)
    if not isinstance(signals, dict):
        return {}
    return {
        str(name): (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
        for name, value in signals.items()
    }


# -- the VIN trace ----------------------------------------------------------------------------


def unit_by_vin_or_serial(text: str, *, field: str = "vin") -> Unit:
    """The unit with this VIN (case-insensitive: VINs are capitals) or else this serial."""
    wanted = text.strip()
    units = Unit.objects.select_related("work_order__product", "work_order__line__area__site")
    unit = None
    if wanted and "\x00" not in wanted:
        unit = units.filter(vin=wanted.upper()).first() or units.filter(serial=wanted).first()
    if unit is None:
        raise UnknownReference(
            f"no unit with the VIN or serial {wanted!r}", fields={field: ["unknown VIN or serial"]}
        )
    return unit


@dataclass
class TraceTelemetry:
    station: Station
    start: dt.datetime
    end: dt.datetime
    signals: list[str]
    units: dict[str, str]
    rows: list[SampleRow]
    truncated: bool
    series: SeriesChart
    scores: ScoreChart


@dataclass
class VinTrace:
    """What the trace shows for `unit` at `at`: its whole life on the line as a timeline, and
    what happened at the station it was at then."""

    unit: Unit
    at: dt.datetime
    window: int
    visits: list[StationVisit]
    flashes: list[FirmwareFlash]
    quality_events: list[QualityEvent]
    alerts: list[DefectAlert]
    life_start: dt.datetime | None
    life_end: dt.datetime | None
    in_life: bool
    visit: StationVisit | None  # the visit covering `at`
    previous_visit: StationVisit | None  # between stations: the last one it left
    next_visit: StationVisit | None  # and the next it reached
    firmware: dict[str, str]  # component → version valid at `at`
    telemetry: TraceTelemetry | None

    @property
    def station(self) -> Station | None:
        return self.visit.station if self.visit else None


def unit_life(
    visits: list[StationVisit], *, now: dt.datetime
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """From its first arrival at a station to its last departure (now while it is at one)."""
    if not visits:
        return None, None
    end = max((visit.left_at or now) for visit in visits)
    return visits[0].arrived_at, end


def vin_trace(
    *,
    unit: Unit,
    at: dt.datetime,
    window: int = DEFAULT_TRACE_WINDOW,
    points: int = DEFAULT_POINTS,
    now: dt.datetime,
) -> VinTrace:
    """The unit's visits, firmware flashes, quality events and alerts; and, at the station it
    was at at `at`, its telemetry and Foresight's scores `window` seconds either side."""
    if at.tzinfo is None:
        raise InvalidInput("the instant needs a time zone", fields={"at": ["naive"]})
    if window not in TRACE_WINDOWS:
        raise InvalidInput(
            f"window is one of {', '.join(map(str, TRACE_WINDOWS))} seconds",
            fields={"window": [f"one of {', '.join(map(str, TRACE_WINDOWS))}"]},
        )
    visits = list(
        StationVisit.objects.filter(unit=unit)
        .select_related("station")
        .order_by("arrived_at", "id")
    )
    flashes = list(
        FirmwareFlash.objects.filter(unit=unit)
        .select_related("station")
        .order_by("flashed_at", "id")
    )
    quality_events = list(
        QualityEvent.objects.filter(unit=unit)
        .select_related("defect", "station")
        .order_by("found_at", "id")
    )
    by_unit = Q(unit=unit) | Q(vin=unit.vin) if unit.vin else Q(unit=unit)
    alerts = list(
        DefectAlert.objects.filter(by_unit)
        .select_related("station", "model_version")
        .order_by("ts", "id")
    )
    life_start, life_end = unit_life(visits, now=now)
    in_life = life_start is not None and life_start <= at <= life_end
    visit = next(
        (v for v in visits if v.arrived_at <= at and (v.left_at is None or at < v.left_at)), None
    )
    previous_visit = next_visit = None
    if visit is None:
        previous_visit = next((v for v in reversed(visits) if v.left_at and v.left_at <= at), None)
        next_visit = next((v for v in visits if v.arrived_at > at), None)
    telemetry = None
    if visit is not None:
        telemetry = trace_telemetry(station=visit.station, at=at, window=window, points=points)
    return VinTrace(
        unit=unit,
        at=at,
        window=window,
        visits=visits,
        flashes=flashes,
        quality_events=quality_events,
        alerts=alerts,
        life_start=life_start,
        life_end=life_end,
        in_life=in_life,
        visit=visit,
        previous_visit=previous_visit,
        next_visit=next_visit,
        firmware=unit_firmware(unit, at),
        telemetry=telemetry,
    )


def trace_telemetry(
    *, station: Station, at: dt.datetime, window: int, points: int = DEFAULT_POINTS
) -> TraceTelemetry:
    """A station's samples, decimated series and scores `window` seconds either side of `at`."""
    start, end = at - dt.timedelta(seconds=window), at + dt.timedelta(seconds=window)
    rows, truncated = samples_near(station=station, at=at, start=start, end=end)
    units = station_signal_units(station)
    seen = {name for row in rows for name in row.signals}
    # Declared signals first (in their order), then whatever else the samples carry.
    signals = [name for name in units if name in seen] + sorted(seen - set(units))
    series = signal_series(
        station=station, start=start, end=end, points=points, signals=signals or None
    )
    scores = score_chart(station=station, start=start, end=end, points=points)
    return TraceTelemetry(
        station=station,
        start=start,
        end=end,
        signals=signals,
        units=units,
        rows=rows,
        truncated=truncated,
        series=series,
        scores=scores,
    )


# -- control charts ---------------------------------------------------------------------------

SPC_SAMPLES_SQL = """
SELECT ts, seq, (signals -> %(signal)s)::float8 FROM telemetry_sample
WHERE station_id = %(station)s AND ts >= %(start)s AND ts <= %(end)s
  AND jsonb_typeof(signals -> %(signal)s) = 'number'
ORDER BY ts DESC, seq DESC LIMIT %(limit)s
"""


@dataclass
class SpcChartData:
    """One control chart pair over a range: the charted points (X̄ or I, and R or MR) at their
    sample's instant, thinned to at most MAX_SPC_POINTS by keeping each bucket's extremes; the
    limits; and the SPC alerts (rule violations) raised in the range."""

    limits: ControlLimits
    location: str  # "xbar" or "i"
    spread: str  # "r" or "mr"
    ts: list[dt.datetime]
    points: list[float]
    spread_points: list[float | None]
    samples_read: int
    first_sample: dt.datetime | None
    capped: bool  # the range held more than MAX_SPC_SAMPLES: only the newest were charted
    violations: list[DefectAlert]

    @property
    def beyond_limits(self) -> int:
        limits = self.limits
        return sum(1 for p in self.points if p > limits.ucl or p < limits.lcl)


def active_control_limits(station: Station) -> list[ControlLimits]:
    return list(
        ControlLimits.objects.filter(station=station, active=True).order_by("signal", "-id")
    )


def spc_chart(*, limits: ControlLimits, start: dt.datetime, end: dt.datetime) -> SpcChartData:
    """The control chart of `limits`' signal over [start, end], computed from the stored
    samples as `foresight.spc` charts them (subgroups counted from the first sample read)."""
    _check_range(start, end)
    with connection.cursor() as cursor:
        cursor.execute(
            SPC_SAMPLES_SQL,
            {
                "signal": limits.signal,
                "station": limits.station_id,
                "start": start,
                "end": end,
                "limit": MAX_SPC_SAMPLES + 1,
            },
        )
        fetched = cursor.fetchall()
    capped = len(fetched) > MAX_SPC_SAMPLES
    fetched = fetched[:MAX_SPC_SAMPLES][::-1]
    values = np.array([row[2] for row in fetched], dtype=np.float64)
    stream = spc.ChartStream(
        spc.Limits(
            subgroup_size=limits.subgroup_size,
            centre=limits.centre,
            sigma=limits.sigma,
            ucl=limits.ucl,
            lcl=limits.lcl,
            range_centre=limits.range_centre,
            range_ucl=limits.range_ucl,
            range_lcl=limits.range_lcl,
            interval=limits.interval,
        )
    )
    batch = stream.take(values) if len(values) else None
    ts: list[dt.datetime] = []
    points: list[float] = []
    spread: list[float | None] = []
    if batch is not None:
        keep = _thin(batch.points, MAX_SPC_POINTS)
        ts = [fetched[int(batch.where[i])][0] for i in keep]
        points = [float(batch.points[i]) for i in keep]
        spread = [float(batch.spread[i]) if math.isfinite(batch.spread[i]) else None for i in keep]
    location, spread_chart = spc.CHARTS_OF[spc.chart_kind(limits.subgroup_size)]
    violations = list(
        DefectAlert.objects.filter(
            station_id=limits.station_id,
            source=AlertSource.SPC,
            signal=limits.signal,
            ts__gte=start,
            ts__lte=end,
        ).order_by("ts", "id")[:500]
    )
    return SpcChartData(
        limits=limits,
        location=location,
        spread=spread_chart,
        ts=ts,
        points=points,
        spread_points=spread,
        samples_read=len(fetched),
        first_sample=fetched[0][0] if fetched else None,
        capped=capped,
        violations=violations,
    )


def _thin(values: np.ndarray, most: int) -> list[int]:
    """Indices of at most about `most` points keeping each bucket's lowest and highest."""
    count = values.shape[0]
    if count <= most:
        return list(range(count))
    buckets = np.array_split(np.arange(count), most // 2)
    kept: set[int] = set()
    for bucket in buckets:
        part = values[bucket]
        kept.add(int(bucket[int(np.argmin(part))]))
        kept.add(int(bucket[int(np.argmax(part))]))
    return sorted(kept)
