"""Reads of OEE, downtime and reliability: the SQL functions of the schema `reporting`.

The numbers are computed once, in PostgreSQL (reporting/sql/20_oee_core.sql and the files after
it; docs/oee.md). The views ODBC/JDBC clients read, these selectors and so the REST API all call
the same functions, so a supervisor's screen and a BI report can never disagree.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db import connection

from mes.errors import InvalidInput
from mes.models import Line, Station

# The levels of reporting.oee_report: the rows it returns.
PERIOD_LEVELS = ("station", "line")  # one row per station (or line) over any period
SHIFT_LEVELS = ("station_shift", "line_shift")  # one row per shift
DAY_LEVELS = ("station_day", "line_day")  # one row per business date
OEE_LEVELS = PERIOD_LEVELS + SHIFT_LEVELS + DAY_LEVELS

PARETO_GROUPS = ("reason", "station", "shift")

# What one request may compute: a year of shifts, or a year of time.
LONGEST_PERIOD = dt.timedelta(days=366)

OeeRow = dict[str, str | int | Decimal | dt.datetime | dt.date | None]


def _rows(sql: str, params: list) -> list[OeeRow]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


MAX_DAYS_AFTER_FIRST = 365  # a report covers at most 366 business dates


def _check_days(first_day: dt.date, last_day: dt.date) -> None:
    """The business dates asked for: in order and at most a year (REST, GraphQL, pages)."""
    if last_day < first_day:
        raise InvalidInput(
            "the last day is before the first",
            fields={"last_day": ["must not be before first_day"]},
        )
    if last_day - first_day > dt.timedelta(days=MAX_DAYS_AFTER_FIRST):
        raise InvalidInput(
            "more than 366 business dates",
            fields={"last_day": [f"at most {MAX_DAYS_AFTER_FIRST} days after first_day"]},
        )


def _check_period(start: dt.datetime, end: dt.datetime) -> None:
    errors = {}
    for field, value in (("from", start), ("to", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            errors[field] = ["give the time zone"]
    if errors:
        raise InvalidInput("the period needs time zones", fields=errors)
    if end <= start:
        raise InvalidInput(
            "the period ends before it starts", fields={"to": ["must be after from"]}
        )
    if end - start > LONGEST_PERIOD:
        raise InvalidInput(
            "the period is longer than 366 days", fields={"to": ["at most 366 days after from"]}
        )


def _check_days(first_day: dt.date, last_day: dt.date) -> None:
    if last_day < first_day:
        raise InvalidInput(
            "last_day is before first_day", fields={"last_day": ["must not be before first_day"]}
        )
    if last_day - first_day >= LONGEST_PERIOD:
        raise InvalidInput(
            "more than 366 business days", fields={"last_day": ["at most 365 days after first_day"]}
        )


def oee_report(
    *,
    level: str,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    first_day: dt.date | None = None,
    last_day: dt.date | None = None,
    line: Line | None = None,
    station: Station | None = None,
) -> list[OeeRow]:
    """OEE rows of `level` (OEE_LEVELS) for the period [start, end) or the business dates
    [first_day, last_day], for every station, one line or one station (reporting.oee_report)."""
    if level not in OEE_LEVELS:
        raise InvalidInput(f"no OEE level {level!r}", fields={"level": list(OEE_LEVELS)})
    if start is not None and end is not None:
        _check_period(start, end)
    if first_day is not None and last_day is not None:
        _check_days(first_day, last_day)
    return _rows(
        "SELECT * FROM reporting.oee_report(%s::varchar, %s::timestamptz, %s::timestamptz,"
        " %s::date, %s::date, %s::bigint, %s::bigint)",
        [
            level,
            start or "-infinity",
            end or "infinity",
            first_day or "-infinity",
            last_day or "infinity",
            line.pk if line else None,
            station.pk if station else None,
        ],
    )


def oee_over_period(
    *,
    start: dt.datetime,
    end: dt.datetime,
    per: str = "station",
    line: Line | None = None,
    station: Station | None = None,
) -> list[OeeRow]:
    """OEE of each station (or line) over [start, end): shifts cut at the period's ends."""
    _check_period(start, end)
    return oee_report(level=per, start=start, end=end, line=line, station=station)


def oee_per_shift(
    *,
    first_day: dt.date,
    last_day: dt.date,
    per: str = "station",
    line: Line | None = None,
    station: Station | None = None,
) -> list[OeeRow]:
    """OEE of each station (or line) and shift of the business dates [first_day, last_day]."""
    _check_days(first_day, last_day)
    return oee_report(
        level=f"{per}_shift", first_day=first_day, last_day=last_day, line=line, station=station
    )


def oee_per_day(
    *,
    first_day: dt.date,
    last_day: dt.date,
    per: str = "line",
    line: Line | None = None,
    station: Station | None = None,
) -> list[OeeRow]:
    """OEE of each line (or station) and business date in [first_day, last_day]."""
    _check_days(first_day, last_day)
    return oee_report(
        level=f"{per}_day", first_day=first_day, last_day=last_day, line=line, station=station
    )


RELIABILITY_COLUMNS = (
    "site",
    "line",
    "station",
    "period_start",
    "period_end",
    "run_seconds",
    "downtime_seconds",
    "stop_count",
    "failure_count",
    "mtbf_seconds",
    "mttr_seconds",
)


def reliability(
    *,
    start: dt.datetime,
    end: dt.datetime,
    per: str = "station",
    line: Line | None = None,
    station: Station | None = None,
) -> list[OeeRow]:
    """MTBF and MTTR of each station (or line) over [start, end): the OEE rows' failures."""
    return [
        {column: row[column] for column in RELIABILITY_COLUMNS}
        for row in oee_over_period(start=start, end=end, per=per, line=line, station=station)
    ]


def downtime_pareto(
    *,
    start: dt.datetime,
    end: dt.datetime,
    by: str = "reason",
    reason_depth: int | None = None,
    line: Line | None = None,
    station: Station | None = None,
) -> list[OeeRow]:
    """Unplanned stops over [start, end) ranked by the time they cost, grouped by reason (rolled
    up to `reason_depth` levels of the tree), station or shift (reporting.downtime_pareto)."""
    if by not in PARETO_GROUPS:
        raise InvalidInput(f"no Pareto by {by!r}", fields={"by": list(PARETO_GROUPS)})
    _check_period(start, end)
    return _rows(
        "SELECT * FROM reporting.downtime_pareto("
        "%s::varchar, %s::timestamptz, %s::timestamptz, %s::bigint, %s::bigint, %s::integer)",
        [
            by,
            start,
            end,
            line.pk if line else None,
            station.pk if station else None,
            reason_depth,
        ],
    )


def downtime_stops(
    *,
    start: dt.datetime,
    end: dt.datetime,
    line: Line | None = None,
    station: Station | None = None,
) -> list[OeeRow]:
    """Every unplanned stop over [start, end), per station and shift it falls in."""
    _check_period(start, end)
    return _rows(
        "SELECT * FROM reporting.downtime_stops("
        "%s::timestamptz, %s::timestamptz, %s::bigint, %s::bigint)",
        [start, end, line.pk if line else None, station.pk if station else None],
    )
