"""OEE and the downtime Pareto over GraphQL: the rows of mes/oee.py, which reads the SQL
functions of the schema `reporting` (docs/oee.md) — the numbers the REST API and the ODBC/JDBC
views give, to the last digit. Nothing is recomputed here.

Times are seconds and ratios fractions (0.888095 is 88.81 %), as Decimal strings, exactly as
PostgreSQL computed them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import Enum

import strawberry

from aegis.graphql.filters import no_nul
from mes import oee, selectors
from mes.errors import InvalidInput
from mes.models import Line, Station


@strawberry.enum(description="One row per station or per line.")
class OeePer(Enum):
    STATION = "station"
    LINE = "line"


@strawberry.enum(description="Group unplanned stops by reason, station or shift name.")
class ParetoBy(Enum):
    REASON = "reason"
    STATION = "station"
    SHIFT = "shift"


@strawberry.type(description="OEE of a station or line over a period, a shift or a day.")
class OeeRow:
    site: str
    line: str
    station: str | None = strawberry.field(description="Null on line rows.")
    shift_name: str | None
    shift_start: dt.datetime | None
    shift_end: dt.datetime | None
    business_date: dt.date | None = strawberry.field(description="Local date of the shifts.")
    period_start: dt.datetime
    period_end: dt.datetime = strawberry.field(description="Now for a running shift.")
    stations: int = strawberry.field(description="Stations summed in this row.")
    calendar_seconds: Decimal | None = strawberry.field(description="The basis of TEEP.")
    planned_seconds: Decimal = strawberry.field(description="Shift time minus planned stops.")
    run_seconds: Decimal = strawberry.field(description="Planned time minus downtime.")
    downtime_seconds: Decimal
    total_count: int
    good_count: int
    scrap_count: int
    ideal_cycle_seconds: Decimal | None
    availability: Decimal | None = strawberry.field(description="run / planned.")
    performance: Decimal | None = strawberry.field(description="ideal cycle x total / run.")
    quality: Decimal | None = strawberry.field(description="good / total.")
    oee: Decimal | None = strawberry.field(description="availability x performance x quality.")
    teep: Decimal | None = strawberry.field(description="OEE x planned / calendar time.")
    breakdown_seconds: Decimal
    setup_seconds: Decimal
    small_stop_seconds: Decimal
    small_stop_count: int
    reduced_speed_seconds: Decimal
    startup_reject_count: int
    production_reject_count: int
    startup_reject_seconds: Decimal
    production_reject_seconds: Decimal
    ideal_seconds: Decimal
    fully_productive_seconds: Decimal
    unrated_count: int
    stop_count: int
    failure_count: int
    mtbf_seconds: Decimal | None
    mttr_seconds: Decimal | None
    defect_count: int


@strawberry.type(description="Unplanned stops of one reason, station or shift, ranked.")
class ParetoRow:
    pareto_rank: int = strawberry.field(description="1 cost the most time.")
    key: str | None = strawberry.field(description="Reason code, station code or shift name.")
    name: str
    stop_count: int
    small_stop_count: int
    downtime_seconds: Decimal
    small_stop_seconds: Decimal
    lost_seconds: Decimal
    share: Decimal | None
    cumulative_share: Decimal | None


_OEE_FIELDS = [name for name in OeeRow.__annotations__]
_PARETO_FIELDS = [name for name in ParetoRow.__annotations__]


def _oee_rows(rows: list[oee.OeeRow]) -> list[OeeRow]:
    return [OeeRow(**{name: row[name] for name in _OEE_FIELDS}) for row in rows]


def _scope(line: strawberry.ID | None, station: str | None) -> tuple[Line | None, Station | None]:
    """The line and station a report is narrowed to; unknown ones are refused (422)."""
    found_line = found_station = None
    if line is not None:
        try:
            found_line = selectors.line_by_id(int(line))
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput("line is an id", fields={"line": ["a whole number"]}) from None
    if station is not None:
        found_station = selectors.station_by_code(no_nul(station))
    if found_line and found_station and found_station.line_id != found_line.pk:
        raise InvalidInput("the station is not on that line", fields={"station": ["not on line"]})
    return found_line, found_station


def oee_over_period(
    *,
    start: dt.datetime,
    end: dt.datetime,
    per: OeePer,
    line: strawberry.ID | None,
    station: str | None,
) -> list[OeeRow]:
    found_line, found_station = _scope(line, station)
    return _oee_rows(
        oee.oee_over_period(
            start=start, end=end, per=per.value, line=found_line, station=found_station
        )
    )


def oee_per_shift(
    *,
    first_day: dt.date,
    last_day: dt.date,
    per: OeePer,
    line: strawberry.ID | None,
    station: str | None,
) -> list[OeeRow]:
    found_line, found_station = _scope(line, station)
    return _oee_rows(
        oee.oee_per_shift(
            first_day=first_day,
            last_day=last_day,
            per=per.value,
            line=found_line,
            station=found_station,
        )
    )


def oee_per_day(
    *,
    first_day: dt.date,
    last_day: dt.date,
    per: OeePer,
    line: strawberry.ID | None,
    station: str | None,
) -> list[OeeRow]:
    found_line, found_station = _scope(line, station)
    return _oee_rows(
        oee.oee_per_day(
            first_day=first_day,
            last_day=last_day,
            per=per.value,
            line=found_line,
            station=found_station,
        )
    )


def downtime_pareto(
    *,
    start: dt.datetime,
    end: dt.datetime,
    by: ParetoBy,
    depth: int | None,
    line: strawberry.ID | None,
    station: str | None,
) -> list[ParetoRow]:
    if depth is not None and not 1 <= depth <= 32:
        raise InvalidInput("depth is 1 to 32", fields={"depth": ["1 to 32"]})
    found_line, found_station = _scope(line, station)
    rows = oee.downtime_pareto(
        start=start,
        end=end,
        by=by.value,
        reason_depth=depth,
        line=found_line,
        station=found_station,
    )
    return [ParetoRow(**{name: row[name] for name in _PARETO_FIELDS}) for row in rows]
