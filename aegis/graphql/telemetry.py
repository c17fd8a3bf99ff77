"""Telemetry over GraphQL: readings filtered by station, VIN, firmware, work order, signal,
value and time, in capped pages, and time buckets with min/max/avg/count per signal.

Every sample in `telemetry_sample` carries the MES state of its own instant (unit, VIN, work
order, firmware as {"EPS": "v2.1.4", …}; docs/telemetry-join.md), so most filters are plain
column tests. Two reach into the MES: `unitFirmware` (a version the unit was ever flashed with)
and `unitQualityEvent` (a defect found on the unit, optionally after the reading) — together
they answer "every torque reading above 50 N·m for VINs built with firmware v2.1.4 that later
reported a steering defect" in one query (docs/graphql.md).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import strawberry
from django.db import connection
from django.db.models import Exists, FloatField, OuterRef, QuerySet
from django.db.models.expressions import RawSQL
from strawberry.types import Info
from strawberry_django.optimizer import optimize

from aegis.graphql import limits
from aegis.graphql.filters import no_nul
from aegis.graphql.types import (
    FirmwareVersion,
    SignalValue,
    StationType,
    UnitType,
    WorkOrderType,
    firmware_versions,
    signal_values,
)
from mes.errors import InvalidInput
from mes.models import FirmwareFlash, QualityEvent, Station, Unit, WorkOrder
from telemetry.models import Sample

SIGNAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MIN_BUCKET = dt.timedelta(milliseconds=1)
MAX_BUCKET_SECONDS = 366 * 24 * 3600


# -- inputs -----------------------------------------------------------------------------------


@strawberry.input(description="A component and one of its software versions, e.g. EPS v2.1.4.")
class FirmwareMatch:
    component: str
    version: str = strawberry.field(description="As flashed, e.g. v2.1.4 (exact match).")


@strawberry.input(description="Bounds on a value; give any of them.")
class ValueRange:
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@strawberry.input(description="Keep readings of units on which this defect was found.")
class QualityEventMatch:
    defect: str = strawberry.field(description="Defect code, e.g. steering.")
    after_reading: bool = strawberry.field(
        default=False, description="Only defects found after the reading itself ('later')."
    )
    found_since: dt.datetime | None = None
    found_until: dt.datetime | None = None


@strawberry.input(description="Which telemetry readings; every given condition must hold.")
class TelemetryFilter:
    station: str | None = strawberry.field(default=None, description="Station code.")
    line: strawberry.ID | None = strawberry.field(default=None, description="Line id.")
    vin: str | None = None
    unit: str | None = strawberry.field(default=None, description="Unit serial.")
    work_order: str | None = strawberry.field(default=None, description="External id.")
    firmware: list[FirmwareMatch] | None = strawberry.field(
        default=None, description="Versions the unit ran at the reading's instant."
    )
    unit_firmware: list[FirmwareMatch] | None = strawberry.field(
        default=None, description="Versions the unit was flashed with at any time ('built with')."
    )
    signal: str | None = strawberry.field(
        default=None, description="Only readings of this signal; `value` bounds it."
    )
    value: ValueRange | None = strawberry.field(default=None, description="Bounds on `signal`.")
    since: dt.datetime | None = strawberry.field(default=None, description="At or after.")
    until: dt.datetime | None = strawberry.field(default=None, description="At or before.")
    unit_quality_event: QualityEventMatch | None = None


# -- the selection ----------------------------------------------------------------------------


def _signal_name(name: str, field: str) -> str:
    if not SIGNAL_NAME.match(name):
        raise InvalidInput(f"{name!r} is not a signal name", fields={field: ["lower_snake_case"]})
    return name


def signal_value(name: str) -> RawSQL:
    """The signal's value in a sample as double precision; NULL when absent or not a number."""
    column = f'"{Sample._meta.db_table}"."signals"'
    # The name is a query parameter; only the table's own column name is formatted in.
    return RawSQL(  # noqa: S611
        f"CASE WHEN jsonb_typeof({column} -> %s) = 'number' "
        f"THEN ({column} ->> %s)::double precision END",
        (name, name),
        output_field=FloatField(),
    )


def _aware(value: dt.datetime | None, field: str) -> dt.datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise InvalidInput("give instants with their offset", fields={field: ["naive datetime"]})
    return value


def telemetry_queryset(where: TelemetryFilter) -> QuerySet[Sample]:
    """The samples `where` selects, in time order, with `value` (the filter's signal)."""
    samples = Sample.objects.all()
    if where.station is not None:
        stations = Station.objects.filter(code=no_nul(where.station)).values("pk")
        samples = samples.filter(station_id__in=stations)
    if where.line is not None:
        try:
            line_id = int(where.line)
        except (TypeError, ValueError):
            raise InvalidInput("line is an id", fields={"line": ["a whole number"]}) from None
        samples = samples.filter(
            station_id__in=Station.objects.filter(line_id=line_id).values("pk")
        )
    if where.vin is not None:
        samples = samples.filter(vin=no_nul(where.vin))
    if where.unit is not None:
        samples = samples.filter(
            unit_id__in=Unit.objects.filter(serial=no_nul(where.unit)).values("pk")
        )
    if where.work_order is not None:
        orders = WorkOrder.objects.filter(external_id=no_nul(where.work_order)).values("pk")
        samples = samples.filter(work_order_id__in=orders)
    for match in where.firmware or ():
        samples = samples.filter(
            firmware__contains={no_nul(match.component): no_nul(match.version)}
        )
    for match in where.unit_firmware or ():
        flashes = FirmwareFlash.objects.filter(
            unit_id=OuterRef("unit_id"),
            component=no_nul(match.component),
            version=no_nul(match.version),
        )
        samples = samples.filter(Exists(flashes))
    since, until = _aware(where.since, "since"), _aware(where.until, "until")
    if since is not None:
        samples = samples.filter(ts__gte=since)
    if until is not None:
        samples = samples.filter(ts__lte=until)
    samples = _by_value(samples, where)
    if where.unit_quality_event is not None:
        samples = samples.filter(Exists(_quality_events(where.unit_quality_event)))
    return samples.order_by("ts", "station_id", "seq")


def _by_value(samples: QuerySet[Sample], where: TelemetryFilter) -> QuerySet[Sample]:
    if where.signal is None:
        if where.value is not None:
            raise InvalidInput("value bounds a signal", fields={"signal": ["give the signal"]})
        return samples
    samples = samples.annotate(value=signal_value(_signal_name(where.signal, "signal")))
    samples = samples.filter(value__isnull=False)
    bounds = where.value
    if bounds is not None:
        for lookup in ("gt", "gte", "lt", "lte"):
            bound = getattr(bounds, lookup)
            if bound is not None:
                samples = samples.filter(**{f"value__{lookup}": bound})
    return samples


def _quality_events(match: QualityEventMatch) -> QuerySet[QualityEvent]:
    events = QualityEvent.objects.filter(
        unit_id=OuterRef("unit_id"), defect__code=no_nul(match.defect)
    )
    if match.after_reading:
        events = events.filter(found_at__gt=OuterRef("ts"))
    if (since := _aware(match.found_since, "foundSince")) is not None:
        events = events.filter(found_at__gte=since)
    if (until := _aware(match.found_until, "foundUntil")) is not None:
        events = events.filter(found_at__lte=until)
    return events


READING_COLUMNS = (
    "station_id",
    "ts",
    "seq",
    "unit_id",
    "vin",
    "serial",
    "work_order_id",
    "firmware",
    "signals",
)


# -- results ----------------------------------------------------------------------------------


class Related:
    """The stations, units and work orders the rows of one result refer to: loaded in one
    optimized query per selection the first time a row asks, whatever the number of rows."""

    def __init__(self, rows: Iterable[dict]) -> None:
        self.rows = list(rows)
        self.loaded: dict[tuple[str, Any], dict[int, Any]] = {}

    def get(self, info: Info, model, column: str, object_id: int | None):
        if object_id is None:
            return None
        key = (column, info.path.key)
        objects = self.loaded.get(key)
        if objects is None:
            ids = {row[column] for row in self.rows if row[column] is not None}
            queryset = optimize(model.objects.filter(pk__in=ids), info)
            objects = self.loaded[key] = {instance.pk: instance for instance in queryset}
        return objects.get(object_id)


@strawberry.type(description="One sample of a station, with the MES state of its instant.")
class TelemetryReading:
    ts: dt.datetime
    seq: int = strawberry.field(description="Orders samples of one station at one ts.")
    vin: str | None
    serial: str | None = strawberry.field(description="Serial of the unit at the station.")
    value: float | None = strawberry.field(
        description="The value of the filter's `signal` (null without one)."
    )
    row: strawberry.Private[dict]
    related: strawberry.Private[Related]

    @strawberry.field
    def station(self, info: Info) -> StationType:
        return self.related.get(info, Station, "station_id", self.row["station_id"])

    @strawberry.field(description="The unit at the station then (null: none).")
    def unit(self, info: Info) -> UnitType | None:
        return self.related.get(info, Unit, "unit_id", self.row["unit_id"])

    @strawberry.field
    def work_order(self, info: Info) -> WorkOrderType | None:
        return self.related.get(info, WorkOrder, "work_order_id", self.row["work_order_id"])

    @strawberry.field(description="What the unit ran at that instant.")
    def firmware(self) -> list[FirmwareVersion]:
        return firmware_versions(self.row["firmware"])

    @strawberry.field(description="Every signal of the sample, or only those named.")
    def signals(self, names: list[str] | None = None) -> list[SignalValue]:
        return signal_values(self.row["signals"], names)


@strawberry.type(description="A page of readings, oldest first.")
class TelemetryPage:
    readings: list[TelemetryReading]
    limit: int
    offset: int
    has_more: bool = strawberry.field(description="More readings follow this page.")
    queryset: strawberry.Private[QuerySet]

    @strawberry.field(description="All readings the filter selects (one COUNT query).")
    def total_count(self) -> int:
        return self.queryset.order_by().count()


def telemetry_page(*, where: TelemetryFilter, limit: int, offset: int) -> TelemetryPage:
    if not 1 <= limit <= limits.TELEMETRY_MAX_LIMIT:
        raise InvalidInput(
            f"limit is 1 to {limits.TELEMETRY_MAX_LIMIT}",
            fields={"limit": [f"at most {limits.TELEMETRY_MAX_LIMIT}"]},
        )
    if offset < 0:
        raise InvalidInput("offset is not negative", fields={"offset": ["0 or more"]})
    samples = telemetry_queryset(where)
    columns = READING_COLUMNS + (("value",) if where.signal is not None else ())
    rows = list(samples.values(*columns)[offset : offset + limit + 1])
    related = Related(rows[:limit])
    readings = [
        TelemetryReading(
            ts=row["ts"],
            seq=row["seq"],
            vin=row["vin"],
            serial=row["serial"],
            value=row.get("value"),
            row=row,
            related=related,
        )
        for row in rows[:limit]
    ]
    return TelemetryPage(
        readings=readings,
        limit=limit,
        offset=offset,
        has_more=len(rows) > limit,
        queryset=samples,
    )


# -- buckets ----------------------------------------------------------------------------------


@strawberry.type(description="One signal of one station over one time bucket.")
class TelemetryBucket:
    start: dt.datetime = strawberry.field(description="Start of the bucket.")
    signal: str
    count: int = strawberry.field(description="Samples with a numeric value.")
    min: float
    max: float
    avg: float
    station_id: strawberry.Private[int]
    related: strawberry.Private[Related]

    @strawberry.field
    def station(self, info: Info) -> StationType:
        return self.related.get(info, Station, "station_id", self.station_id)


BUCKETS_SQL = """
SELECT sample.station_id, date_bin(%s, sample.ts, %s) AS bucket, reading.signal,
       count(*), min(reading.number), max(reading.number), avg(reading.number)
FROM ({selection}) AS sample
CROSS JOIN LATERAL (
    SELECT entry.key AS signal, (entry.value #>> '{{}}')::double precision AS number
    FROM jsonb_each(sample.signals) AS entry
    WHERE jsonb_typeof(entry.value) = 'number' {only_signals}
) AS reading
GROUP BY 1, 2, 3
ORDER BY 2, 1, 3
LIMIT %s
"""


@dataclass(frozen=True)
class BucketRow:
    station_id: int
    start: dt.datetime
    signal: str
    count: int
    minimum: float
    maximum: float
    mean: float


def telemetry_buckets(
    *, where: TelemetryFilter, bucket_seconds: float, signals: list[str] | None
) -> list[TelemetryBucket]:
    """Per station, signal and bucket of `bucket_seconds` from `where.since`: the count, min,
    max and mean of the numeric values of the selected samples (date_bin, no TimescaleDB)."""
    since, until = _aware(where.since, "since"), _aware(where.until, "until")
    if since is None or until is None:
        raise InvalidInput(
            "buckets need a time range", fields={"since": ["required"], "until": ["required"]}
        )
    if not (math.isfinite(bucket_seconds) and 0 < bucket_seconds <= MAX_BUCKET_SECONDS):
        raise InvalidInput(
            "bucketSeconds is above 0 and at most a year", fields={"bucketSeconds": ["range"]}
        )
    width = max(MIN_BUCKET, dt.timedelta(seconds=bucket_seconds))
    if (until - since) / width > limits.MAX_BUCKETS:
        raise InvalidInput(
            f"more than {limits.MAX_BUCKETS:,} buckets: widen the bucket or narrow the range",
            fields={"bucketSeconds": [f"at most {limits.MAX_BUCKETS:,} buckets"]},
        )
    names = [_signal_name(name, "signals") for name in signals] if signals else None
    samples = telemetry_queryset(where).order_by().values("station_id", "ts", "signals")
    selection, params = samples.query.sql_with_params()
    only = "AND entry.key = ANY(%s)" if names else ""
    sql = BUCKETS_SQL.format(selection=selection, only_signals=only)
    arguments = [width, since, *params, *([names] if names else []), limits.MAX_BUCKETS + 1]
    with connection.cursor() as cursor:
        cursor.execute(sql, arguments)
        rows = [BucketRow(*row) for row in cursor.fetchall()]
    if len(rows) > limits.MAX_BUCKETS:
        raise InvalidInput(
            f"more than {limits.MAX_BUCKETS:,} buckets: widen the bucket, narrow the range or "
            "name fewer signals",
            fields={"bucketSeconds": [f"at most {limits.MAX_BUCKETS:,} buckets"]},
        )
    related = Related({"station_id": row.station_id} for row in rows)
    return [
        TelemetryBucket(
            start=row.start,
            signal=row.signal,
            count=row.count,
            min=row.minimum,
            max=row.maximum,
            avg=row.mean,
            station_id=row.station_id,
            related=related,
        )
        for row in rows
    ]
