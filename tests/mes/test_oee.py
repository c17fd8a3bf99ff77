"""OEE as the standard defines it, read from the SQL views (reporting/sql/2*.sql, docs/oee.md).

Every expected number is worked out by hand in the comments next to it, from the scenario's
facts, not from the code. tests/mes/api/test_oee_api.py checks the same scenarios through REST.
The plant is in Europe/Berlin; `local("2025-03-04", "06:00")` is a wall-clock time there.
"""

from __future__ import annotations

import datetime as dt
import secrets
import zoneinfo
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.db import IntegrityError, ProgrammingError, connection, transaction
from django.utils import timezone

from mes import services
from mes.models import (
    CountSource,
    DowntimeEvent,
    DowntimeReason,
    Line,
    LossCategory,
    ProductionCount,
    QualityEvent,
    ScrapReason,
    Shift,
    ShiftBreak,
    ShiftPattern,
    ShiftTemplate,
    Station,
    StationVisit,
    Unit,
    UnitStatus,
    WorkOrder,
)
from tests.factories import (
    DefectCodeFactory,
    LineFactory,
    RouteOperationFactory,
    StationFactory,
    UnitFactory,
    WorkOrderFactory,
)

pytestmark = pytest.mark.django_db

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def local(day: str, clock: str) -> dt.datetime:
    """A wall-clock time in Berlin as an absolute instant."""
    return dt.datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=BERLIN).astimezone(dt.UTC)


# -- building a plant and its history ---------------------------------------------------------


@dataclass
class Cell:
    """One station on its own line, with a product routed through it and a work order."""

    line: Line
    station: Station
    work_order: WorkOrder


def cell(
    *,
    ideal_cycle: str = "1.00",
    microstop_seconds: int = 120,
    startup_seconds: int = 0,
    **station_fields,
) -> Cell:
    line = LineFactory(microstop_seconds=microstop_seconds, startup_seconds=startup_seconds)
    station = StationFactory(line=line, **station_fields)
    operation = RouteOperationFactory(
        route__line=line, station=station, ideal_cycle_time_s=Decimal(ideal_cycle)
    )
    work_order = WorkOrderFactory(product=operation.route.product, line=line, quantity=100_000)
    return Cell(line, station, work_order)


def shift(line: Line, day: str, starts: str, ends: str, *, name: str = "Early", breaks=()) -> Shift:
    """A shift of `day` from `starts` to `ends` local (next day if earlier), with breaks given
    as (local start, minutes) on the day the break falls on."""
    start = local(day, starts)
    end = local(day, ends)
    if end <= start:
        next_day = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
        end = local(next_day, ends)
    created = Shift.objects.create(
        line=line,
        name=name,
        business_date=dt.date.fromisoformat(day),
        starts_at=start,
        ends_at=end,
    )
    for break_day, break_start, minutes in breaks:
        begins = local(break_day, break_start)
        ShiftBreak.objects.create(
            shift=created,
            name="Break",
            starts_at=begins,
            ends_at=begins + dt.timedelta(minutes=minutes),
        )
    return created


def reason(code: str, *, parent: DowntimeReason | None = None, category: str = "", planned=False):
    return DowntimeReason.objects.create(
        code=code, name=code.title(), parent=parent, loss_category=category, planned=planned
    )


def stop(station: Station, started_at, ended_at, *, why=None, planned=False) -> DowntimeEvent:
    return DowntimeEvent.objects.create(
        station=station, started_at=started_at, ended_at=ended_at, reason=why, planned=planned
    )


def counted(c: Cell, interval_start, interval_end, *, good: int, scrap: int = 0):
    scrap_reason = None
    if scrap:
        scrap_reason, _ = ScrapReason.objects.get_or_create(code="NOK", name="Not OK")
    return ProductionCount.objects.create(
        station=c.station,
        work_order=c.work_order,
        interval_start=interval_start,
        interval_end=interval_end,
        good=good,
        scrap=scrap,
        scrap_reason=scrap_reason,
    )


def view(name: str, **where) -> list[dict]:
    """The rows of reporting.<name> matching `where` (column = value)."""
    conditions = " AND ".join(f"{column} = %s" for column in where) or "true"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT * FROM reporting.{name} WHERE {conditions}",  # noqa: S608 - names are ours
            list(where.values()),
        )
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def one(name: str, **where) -> dict:
    rows = view(name, **where)
    assert len(rows) == 1, rows
    return rows[0]


def percent(ratio: Decimal) -> Decimal:
    return (ratio * 100).quantize(Decimal("0.01"))


# -- the textbook shift -------------------------------------------------------------------------


def textbook_shift() -> Cell:
    """An 8-hour shift with two 15-minute breaks and a 30-minute meal, 47 minutes of unplanned
    downtime, an ideal rate of 60 units a minute (1 s each), 19,271 units made, 423 rejected."""
    c = cell(ideal_cycle="1.00")
    day = "2025-03-04"
    shift(
        c.line,
        day,
        "06:00",
        "14:00",
        breaks=[(day, "08:00", 15), (day, "10:00", 30), (day, "12:00", 15)],
    )
    stop(c.station, local(day, "06:30"), local(day, "07:17"), why=reason("MECH.CONVEYOR"))
    counted(c, local(day, "06:00"), local(day, "14:00"), good=19_271 - 423, scrap=423)
    return c


def test_textbook_shift_gives_the_textbook_oee():
    c = textbook_shift()

    row = one("v_oee_shift", station=c.station.code)

    # planned = 480 min - (15 + 30 + 15) min = 420 min = 25,200 s
    assert row["planned_seconds"] == Decimal("25200.000")
    # run = 420 - 47 = 373 min = 22,380 s
    assert row["run_seconds"] == Decimal("22380.000")
    assert row["downtime_seconds"] == Decimal("2820.000")
    assert (row["total_count"], row["good_count"], row["scrap_count"]) == (19_271, 18_848, 423)
    assert row["ideal_cycle_seconds"] == Decimal("1.0000")
    # availability = 373 / 420 = 0.888095 -> 88.81 %
    assert row["availability"] == Decimal("0.888095")
    assert percent(row["availability"]) == Decimal("88.81")
    # performance = 19,271 units x 1 s / 22,380 s = 0.861081 -> 86.11 %
    assert row["performance"] == Decimal("0.861081")
    assert percent(row["performance"]) == Decimal("86.11")
    # quality = 18,848 / 19,271 = 0.978050 -> 97.80 %
    assert row["quality"] == Decimal("0.978050")
    assert percent(row["quality"]) == Decimal("97.80")
    # OEE = A x P x Q = 18,848 good x 1 s / 25,200 s = 0.747937: 74.79 %. The published answer,
    # 74.80 %, multiplies percentages rounded on the way; it is within a hundredth of a point.
    assert row["oee"] == Decimal("0.747937")
    assert abs(percent(row["oee"]) - Decimal("74.80")) <= Decimal("0.01")


def test_textbook_shift_six_big_losses_add_up_to_the_planned_time():
    c = textbook_shift()

    row = one("v_oee_shift", station=c.station.code)

    # All 47 minutes are one breakdown (a reason without a category is a breakdown).
    assert row["breakdown_seconds"] == Decimal("2820.000")
    assert row["setup_seconds"] == 0
    assert (row["small_stop_seconds"], row["small_stop_count"]) == (0, 0)
    # reduced speed = run - ideal time of all units - small stops = 22,380 - 19,271 = 3,109 s
    assert row["reduced_speed_seconds"] == Decimal("3109.000")
    # no startup window is configured: all 423 rejects are production rejects, 423 s of ideal time
    assert (row["startup_reject_count"], row["production_reject_count"]) == (0, 423)
    assert row["production_reject_seconds"] == Decimal("423.000")
    # fully productive time = 18,848 good x 1 s
    assert row["fully_productive_seconds"] == Decimal("18848.000")
    # 2,820 + 3,109 + 423 + 18,848 = 25,200: every planned second is accounted for once
    assert (
        row["breakdown_seconds"]
        + row["setup_seconds"]
        + row["small_stop_seconds"]
        + row["reduced_speed_seconds"]
        + row["startup_reject_seconds"]
        + row["production_reject_seconds"]
        + row["fully_productive_seconds"]
        == row["planned_seconds"]
    )
    # TEEP = OEE x planned / calendar = 0.747937 x 25,200 / 28,800 = 18,848 / 28,800 = 0.654444
    assert row["teep"] == Decimal("0.654444")
    # MTBF = run / failures = 22,380 s; MTTR = 47 min = 2,820 s
    assert (row["failure_count"], row["mtbf_seconds"], row["mttr_seconds"]) == (
        1,
        Decimal("22380.000"),
        Decimal("2820.000"),
    )


def test_views_have_the_contract_columns_in_order_with_odbc_friendly_types():
    textbook_shift()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name, data_type, numeric_scale FROM"
            " information_schema.columns WHERE table_schema = 'reporting'"
            " AND table_name IN ('v_oee_shift', 'v_oee_line_shift', 'v_oee_line_day',"
            " 'v_oee_station_day', 'v_quality_per_shift', 'v_downtime_pareto',"
            " 'v_downtime_stops', 'v_downtime_reason')"
            " ORDER BY table_name, ordinal_position"
        )
        columns = cursor.fetchall()
    shift_columns = [name for table, name, _, _ in columns if table == "v_oee_shift"]
    assert shift_columns[:17] == [
        "site",
        "line",
        "station",
        "shift_name",
        "shift_start",
        "shift_end",
        "planned_seconds",
        "run_seconds",
        "downtime_seconds",
        "total_count",
        "good_count",
        "scrap_count",
        "ideal_cycle_seconds",
        "availability",
        "performance",
        "quality",
        "oee",
    ]
    allowed = {
        "character varying",
        "numeric",
        "integer",
        "bigint",
        "timestamp with time zone",
        "date",
    }
    assert {table for table, *_ in columns} == {
        "v_oee_shift",
        "v_oee_line_shift",
        "v_oee_line_day",
        "v_oee_station_day",
        "v_quality_per_shift",
        "v_downtime_pareto",
        "v_downtime_stops",
        "v_downtime_reason",
    }
    for table, name, data_type, scale in columns:
        assert data_type in allowed, (table, name, data_type)
        if data_type == "numeric":
            assert scale is not None, (table, name, "numeric without a scale")


# -- splitting at shift boundaries --------------------------------------------------------------


def two_shifts() -> Cell:
    """Early 06:00-14:00 and Late 14:00-22:00 on 2025-03-05, without breaks; 30 s a unit."""
    c = cell(ideal_cycle="30.00")
    day = "2025-03-05"
    shift(c.line, day, "06:00", "14:00", name="Early")
    shift(c.line, day, "14:00", "22:00", name="Late")
    return c


def test_a_run_spanning_two_shifts_is_split_by_time_never_copied():
    c = two_shifts()
    day = "2025-03-05"
    # One count for 13:00-15:00: 121 good and 7 scrap, made evenly, the last one at 15:00.
    counted(c, local(day, "13:00"), local(day, "15:00"), good=121, scrap=7)
    # One downtime from 13:50 to 14:20 (30 min, a breakdown).
    stop(c.station, local(day, "13:50"), local(day, "14:20"))

    rows = {row["shift_name"]: row for row in view("v_oee_shift", station=c.station.code)}

    # Good unit k of 121 is done at 13:00 + k x 2 h / 121; those done by 14:00 are
    # floor(121 x 1 h / 2 h) = 60, so 60 in Early and 61 in Late. Scrap: floor(7 / 2) = 3 and 4.
    assert (rows["Early"]["good_count"], rows["Late"]["good_count"]) == (60, 61)
    assert (rows["Early"]["scrap_count"], rows["Late"]["scrap_count"]) == (3, 4)
    assert rows["Early"]["total_count"] + rows["Late"]["total_count"] == 121 + 7
    # The downtime is 10 min in Early and 20 min in Late: 600 s and 1,200 s.
    assert (rows["Early"]["downtime_seconds"], rows["Late"]["downtime_seconds"]) == (600, 1200)
    # It is one failure, counted in the shift where it started.
    assert (rows["Early"]["failure_count"], rows["Late"]["failure_count"]) == (1, 0)
    # Early: planned 28,800 s, run 28,200 s; 63 units x 30 s = 1,890 s of ideal time.
    assert rows["Early"]["run_seconds"] == Decimal("28200.000")
    assert rows["Early"]["ideal_seconds"] == Decimal("1890.000")
    # performance = 1,890 / 28,200 = 0.067021
    assert rows["Early"]["performance"] == Decimal("0.067021")
    # Late: run 27,600 s; 65 units x 30 s = 1,950 s -> 0.070652
    assert rows["Late"]["performance"] == Decimal("0.070652")


def test_a_count_for_exactly_one_shift_stays_in_it():
    c = two_shifts()
    day = "2025-03-05"
    counted(c, local(day, "06:00"), local(day, "14:00"), good=500)
    counted(c, local(day, "14:00"), local(day, "22:00"), good=400)

    rows = {row["shift_name"]: row for row in view("v_oee_shift", station=c.station.code)}

    # The last unit of 06:00-14:00 is done at 14:00, the end of Early: it is Early's.
    assert (rows["Early"]["good_count"], rows["Late"]["good_count"]) == (500, 400)


def test_a_line_day_sums_its_shifts_and_derives_ratios_from_the_sums():
    c = two_shifts()
    day = "2025-03-05"
    counted(c, local(day, "13:00"), local(day, "15:00"), good=121, scrap=7)
    stop(c.station, local(day, "13:50"), local(day, "14:20"))

    row = one("v_oee_line_day", line=c.line.code)

    # Two 8-hour shifts, no breaks: planned 57,600 s; 30 min down: run 55,800 s.
    assert (row["planned_seconds"], row["run_seconds"]) == (57600, 55800)
    assert (row["total_count"], row["good_count"]) == (128, 121)
    # availability = 55,800 / 57,600 = 0.968750; performance = 128 x 30 / 55,800 = 0.068817;
    # quality = 121 / 128 = 0.945313; OEE = 121 x 30 / 57,600 = 0.063021
    assert row["availability"] == Decimal("0.968750")
    assert row["performance"] == Decimal("0.068817")
    assert row["quality"] == Decimal("0.945313")
    assert row["oee"] == Decimal("0.063021")
    # TEEP against the calendar day of 2025-03-05 (24 h = 86,400 s): 3,630 / 86,400 = 0.042014
    assert row["teep"] == Decimal("0.042014")
    line_shifts = view("v_oee_line_shift", line=c.line.code)
    assert sum(r["planned_seconds"] for r in line_shifts) == row["planned_seconds"]


# -- daylight-saving nights ---------------------------------------------------------------------


def night_shifts(first_day: str) -> Cell:
    """The demo plant's night shift, 22:00-06:00 local with breaks at 01:00 (30 min) and 04:00
    (15 min), generated from its template like every shift the plant has."""
    c = cell(ideal_cycle="1.00")
    pattern = ShiftPattern.objects.create(line=c.line, name="Nights")
    ShiftTemplate.objects.create(
        pattern=pattern,
        name="Night",
        starts=dt.time(22),
        ends=dt.time(6),
        breaks=[
            {"name": "Break", "starts": "01:00", "minutes": 30},
            {"name": "Break", "starts": "04:00", "minutes": 15},
        ],
    )
    day = dt.date.fromisoformat(first_day)
    services.shifts_generate(pattern=pattern, first_day=day, last_day=day)
    return c


def test_a_spring_night_is_seven_hours_of_absolute_time():
    # Clocks go from 02:00 to 03:00 on 2025-03-30 in Berlin.
    c = night_shifts("2025-03-29")
    counted(c, local("2025-03-29", "22:00"), local("2025-03-30", "06:00"), good=20_000)

    row = one("v_oee_shift", station=c.station.code)

    # 22:00 -> 06:00 is 7 h = 25,200 s; planned = 25,200 - 45 min (2,700 s) = 22,500 s
    assert row["calendar_seconds"] == Decimal("25200.000")
    assert row["planned_seconds"] == Decimal("22500.000")
    # performance = 20,000 x 1 s / 22,500 s = 0.888889; OEE = 20,000 / 22,500 = 0.888889
    assert row["performance"] == Decimal("0.888889")
    assert row["oee"] == Decimal("0.888889")
    # TEEP = 20,000 / 25,200 = 0.793651
    assert row["teep"] == Decimal("0.793651")


def test_an_autumn_night_is_nine_hours_of_absolute_time():
    # Clocks go from 03:00 back to 02:00 on 2025-10-26 in Berlin.
    c = night_shifts("2025-10-25")
    counted(c, local("2025-10-25", "22:00"), local("2025-10-26", "06:00"), good=20_000)

    row = one("v_oee_shift", station=c.station.code)

    # 9 h = 32,400 s; planned = 32,400 - 2,700 = 29,700 s
    assert row["calendar_seconds"] == Decimal("32400.000")
    assert row["planned_seconds"] == Decimal("29700.000")
    # performance = OEE = 20,000 / 29,700 = 0.673401
    assert row["oee"] == Decimal("0.673401")
    # The business day 2025-10-26 has 25 hours (90,000 s); the night belongs to 2025-10-25 (24 h)
    day_row = one("v_oee_line_day", line=c.line.code)
    assert day_row["business_date"] == dt.date(2025, 10, 25)
    assert day_row["calendar_seconds"] == Decimal("86400.000")


def test_a_business_day_with_the_clock_change_has_25_hours_of_calendar_time():
    c = cell()
    shift(c.line, "2025-10-26", "06:00", "14:00")
    counted(c, local("2025-10-26", "06:00"), local("2025-10-26", "14:00"), good=9_000)

    row = one("v_oee_line_day", line=c.line.code)

    # 2025-10-26 00:00 -> 2025-10-27 00:00 local is 25 h = 90,000 s; TEEP = 9,000 / 90,000
    assert row["calendar_seconds"] == Decimal("90000.000")
    assert row["teep"] == Decimal("0.100000")


# -- micro-stops --------------------------------------------------------------------------------


def stops_around_the_threshold(**cell_fields) -> Cell:
    """A 06:00-14:00 shift without breaks and three unplanned stops of 119, 120 and 121 s."""
    c = cell(microstop_seconds=120, **cell_fields)
    day = "2025-03-06"
    shift(c.line, day, "06:00", "14:00")
    for clock, seconds in (("07:00", 119), ("08:00", 120), ("09:00", 121)):
        start = local(day, clock)
        stop(c.station, start, start + dt.timedelta(seconds=seconds))
    return c


def test_stops_below_the_threshold_are_small_stops_and_at_or_above_it_downtime():
    c = stops_around_the_threshold()

    row = one("v_oee_shift", station=c.station.code)

    # 119 s < 120 s: a small stop (performance). 120 s and 121 s: downtime (availability).
    assert (row["small_stop_count"], row["small_stop_seconds"]) == (1, Decimal("119.000"))
    assert (row["stop_count"], row["downtime_seconds"]) == (2, Decimal("241.000"))
    # run = 28,800 - 241 = 28,559 s: the small stop is inside the run time
    assert row["run_seconds"] == Decimal("28559.000")
    # availability = 28,559 / 28,800 = 0.991632
    assert row["availability"] == Decimal("0.991632")


def test_a_station_threshold_overrides_its_lines():
    c = stops_around_the_threshold()
    Station.objects.filter(pk=c.station.pk).update(microstop_seconds=122)

    row = one("v_oee_shift", station=c.station.code)

    # All three are shorter than 122 s: 119 + 120 + 121 = 360 s of small stops, no downtime
    assert (row["small_stop_count"], row["small_stop_seconds"]) == (3, Decimal("360.000"))
    assert (row["stop_count"], row["downtime_seconds"]) == (0, 0)
    assert row["availability"] == 1


def test_a_stop_is_judged_by_its_whole_length_across_a_shift_change():
    c = two_shifts()
    day = "2025-03-05"
    # 13:59:00-14:00:40: 100 s, a small stop, even though neither part is as long
    stop(c.station, local(day, "13:59:00"), local(day, "14:00:40"))

    rows = {row["shift_name"]: row for row in view("v_oee_shift", station=c.station.code)}

    assert rows["Early"]["small_stop_seconds"] == 60
    assert rows["Late"]["small_stop_seconds"] == 40
    assert rows["Early"]["small_stop_count"] + rows["Late"]["small_stop_count"] == 1
    assert rows["Early"]["downtime_seconds"] == rows["Late"]["downtime_seconds"] == 0


# -- planned stops ----------------------------------------------------------------------------


def test_planned_downtime_and_breaks_are_not_losses_and_not_counted_twice():
    c = cell()
    day = "2025-03-07"
    shift(c.line, day, "06:00", "14:00", breaks=[(day, "10:00", 30)])
    # Planned maintenance 09:45-10:45 overlaps the 10:00-10:30 break: 60 min planned stop in all.
    stop(c.station, local(day, "09:45"), local(day, "10:45"), planned=True)
    # A breakdown during the break costs no planned production time.
    stop(c.station, local(day, "11:00"), local(day, "11:20"))

    row = one("v_oee_shift", station=c.station.code)

    # planned = 480 - 60 (09:45-10:45, the break inside it counted once) = 420 min = 25,200 s
    assert row["planned_seconds"] == Decimal("25200.000")
    # the 20-minute breakdown: 1,200 s
    assert row["downtime_seconds"] == Decimal("1200.000")


def test_a_breakdown_during_a_break_costs_only_the_planned_time_it_overlaps():
    c = cell()
    day = "2025-03-07"
    shift(c.line, day, "06:00", "14:00", breaks=[(day, "10:00", 30)])
    # 10:20-10:50: 10 min in the break, 20 min of planned production time lost
    stop(c.station, local(day, "10:20"), local(day, "10:50"))

    row = one("v_oee_shift", station=c.station.code)

    assert row["downtime_seconds"] == Decimal("1200.000")
    assert row["stop_count"] == 1


# -- losses by category and the reason tree ----------------------------------------------------


def reason_tree() -> dict[str, DowntimeReason]:
    mech = reason("MECH")
    setup = reason("SETUP", category=LossCategory.SETUP)
    return {
        "MECH": mech,
        "MECH.CONVEYOR": reason("MECH.CONVEYOR", parent=mech),
        "MECH.TOOLING": reason("MECH.TOOLING", parent=mech),
        "SETUP": setup,
        "SETUP.ADJUST": reason("SETUP.ADJUST", parent=setup),
    }


def test_setup_reasons_are_setup_losses_and_their_children_inherit_it():
    c = cell()
    tree = reason_tree()
    day = "2025-03-10"
    shift(c.line, day, "06:00", "14:00")
    stop(c.station, local(day, "07:00"), local(day, "07:10"), why=tree["SETUP.ADJUST"])
    stop(c.station, local(day, "08:00"), local(day, "08:05"), why=tree["MECH.TOOLING"])

    row = one("v_oee_shift", station=c.station.code)

    assert row["setup_seconds"] == Decimal("600.000")
    assert row["breakdown_seconds"] == Decimal("300.000")
    # only breakdowns are failures for MTBF/MTTR
    assert (row["stop_count"], row["failure_count"]) == (2, 1)
    reasons = {r["reason_code"]: r for r in view("v_downtime_reason")}
    assert reasons["SETUP.ADJUST"]["loss_category"] == "setup"
    assert reasons["SETUP.ADJUST"]["reason_path"] == "SETUP > SETUP.ADJUST"
    assert reasons["MECH.CONVEYOR"]["root_reason_code"] == "MECH"
    assert reasons["MECH.CONVEYOR"]["depth"] == 2


def test_the_daily_pareto_ranks_reasons_by_lost_time():
    c = cell()
    tree = reason_tree()
    day = "2025-03-10"
    shift(c.line, day, "06:00", "14:00")
    stop(c.station, local(day, "07:00"), local(day, "07:10"), why=tree["MECH.CONVEYOR"])
    stop(c.station, local(day, "08:00"), local(day, "08:30"), why=tree["SETUP.ADJUST"])
    stop(c.station, local(day, "09:00"), local(day, "09:01"), why=tree["MECH.CONVEYOR"])
    stop(c.station, local(day, "10:00"), local(day, "10:20"))

    rows = sorted(view("v_downtime_pareto", line=c.line.code), key=lambda r: r["pareto_rank"])

    # SETUP.ADJUST 1,800 s; no reason 1,200 s; MECH.CONVEYOR 600 s + a 60 s small stop = 660 s
    assert [(r["reason_code"], r["lost_seconds"]) for r in rows] == [
        ("SETUP.ADJUST", 1800),
        (None, 1200),
        ("MECH.CONVEYOR", 660),
    ]
    conveyor = rows[2]
    assert (conveyor["stop_count"], conveyor["small_stop_count"]) == (1, 1)
    assert (conveyor["downtime_seconds"], conveyor["small_stop_seconds"]) == (600, 60)
    # shares of 3,660 s: 0.491803, then cumulative 0.819672, 1
    assert rows[0]["share"] == Decimal("0.491803")
    assert rows[1]["cumulative_share"] == Decimal("0.819672")
    assert rows[2]["cumulative_share"] == 1


# -- where counts come from -------------------------------------------------------------------


def test_a_station_counting_visits_counts_each_unit_when_it_leaves():
    c = cell(ideal_cycle="60.00", count_source=CountSource.VISITS)
    day = "2025-03-11"
    shift(c.line, day, "06:00", "14:00")
    units = [UnitFactory(work_order=c.work_order) for _ in range(4)]
    for index, unit in enumerate(units[:3]):
        arrived = local(day, f"0{7 + index}:00")
        StationVisit.objects.create(
            unit=unit,
            station=c.station,
            arrived_at=arrived,
            left_at=arrived + dt.timedelta(minutes=1),
        )
    # the fourth unit is still at the station: not made yet
    StationVisit.objects.create(unit=units[3], station=c.station, arrived_at=local(day, "10:00"))
    # the third unit was scrapped here (this was the last station it visited)
    Unit.objects.filter(pk=units[2].pk).update(status=UnitStatus.SCRAPPED)
    # reported counts are not what this station uses
    counted(c, local(day, "06:00"), local(day, "07:00"), good=1_000)

    row = one("v_oee_shift", station=c.station.code)

    # Units 1-3 left at 07:01, 08:01 and 09:01; unit 4 has not left.
    assert (row["total_count"], row["good_count"], row["scrap_count"]) == (3, 2, 1)
    assert row["ideal_seconds"] == Decimal("180.000")


def test_a_station_counting_telemetry_reads_its_part_counter():
    c = cell(
        ideal_cycle="10.00",
        count_source=CountSource.TELEMETRY,
        count_signal="parts_made",
        reject_signal="parts_rejected",
    )
    day = "2025-03-12"
    shift(c.line, day, "06:00", "14:00")
    product_id = c.work_order.product_id
    readings = [
        # (local time, parts_made, parts_rejected)
        ("05:59", 100, 7),  # before the shift: the base the first increment is measured from
        ("06:30", 160, 7),  # +60
        ("07:00", 220, 9),  # +60, 2 rejected
        ("07:30", 15, 9),  # the counter was reset: 15 made since; rejects unchanged
        ("08:00", 45, 10),  # +30, 1 rejected
    ]
    with connection.cursor() as cursor:
        for seq, (clock, parts, rejects) in enumerate(readings):
            cursor.execute(
                "INSERT INTO telemetry_sample (station_id, ts, seq, product_id, signals)"
                " VALUES (%s, %s, %s, %s, %s::jsonb)",
                [
                    c.station.pk,
                    local(day, clock),
                    seq,
                    product_id,
                    f'{{"parts_made": {parts}, "parts_rejected": {rejects}, "torque": 40.1}}',
                ],
            )

    row = one("v_oee_shift", station=c.station.code)

    # made = 60 + 60 + 15 + 30 = 165, of which 2 + 1 = 3 rejected
    assert (row["total_count"], row["good_count"], row["scrap_count"]) == (165, 162, 3)
    # ideal = 165 x 10 s
    assert row["ideal_seconds"] == Decimal("1650.000")


def test_telemetry_counts_need_a_counter_signal():
    c = cell()
    with pytest.raises(IntegrityError), transaction.atomic():
        Station.objects.filter(pk=c.station.pk).update(count_source=CountSource.TELEMETRY)


# -- ideal cycle time fallbacks and rejects ----------------------------------------------------


def test_a_count_without_work_order_is_rated_at_the_stations_fastest_operation():
    c = cell(ideal_cycle="50.00")
    # another product's route also passes the station, faster
    RouteOperationFactory(route__line=c.line, station=c.station, ideal_cycle_time_s=Decimal("40"))
    day = "2025-03-13"
    shift(c.line, day, "06:00", "14:00")
    ProductionCount.objects.create(
        station=c.station,
        interval_start=local(day, "06:00"),
        interval_end=local(day, "07:00"),
        good=10,
    )
    counted(c, local(day, "07:00"), local(day, "08:00"), good=10)

    row = one("v_oee_shift", station=c.station.code)

    # 10 units with no product x 40 s + 10 units of the work order's product x 50 s = 900 s
    assert row["ideal_seconds"] == Decimal("900.000")
    assert row["ideal_cycle_seconds"] == Decimal("45.0000")
    assert row["unrated_count"] == 0


def test_scrap_right_after_a_restart_is_a_startup_reject():
    c = cell(startup_seconds=600)
    day = "2025-03-14"
    shift(c.line, day, "06:00", "14:00")
    stop(c.station, local(day, "08:00"), local(day, "08:30"))
    # 06:00-06:05: 2 scrap, within 10 min of the shift start (no shift before it on the line)
    counted(c, local(day, "06:00"), local(day, "06:05"), good=10, scrap=2)
    # 08:30-08:39: 3 scrap, within 10 min after the breakdown ended at 08:30
    counted(c, local(day, "08:30"), local(day, "08:39"), good=10, scrap=3)
    # 09:00-09:10: 4 scrap, in stable production
    counted(c, local(day, "09:00"), local(day, "09:10"), good=10, scrap=4)

    row = one("v_oee_shift", station=c.station.code)

    assert (row["startup_reject_count"], row["production_reject_count"]) == (5, 4)
    quality = one("v_quality_per_shift", station=c.station.code)
    assert (quality["scrap_count"], quality["startup_reject_count"]) == (9, 5)


def test_a_shift_that_takes_over_a_running_line_is_no_restart():
    c = cell(startup_seconds=600)
    day = "2025-03-14"
    shift(c.line, day, "06:00", "14:00", name="Early")
    shift(c.line, day, "14:00", "22:00", name="Late")
    # 14:00-14:05, right after the shift change, and 06:00-06:05 after the line started
    counted(c, local(day, "14:00"), local(day, "14:05"), good=10, scrap=2)
    counted(c, local(day, "06:00"), local(day, "06:05"), good=10, scrap=1)

    rows = {row["shift_name"]: row for row in view("v_oee_shift", station=c.station.code)}

    # Early started the line (no shift before it): its first 10 minutes are a startup.
    assert (rows["Early"]["startup_reject_count"], rows["Early"]["production_reject_count"]) == (
        1,
        0,
    )
    # Late took the running line over from Early: its scrap is production scrap.
    assert (rows["Late"]["startup_reject_count"], rows["Late"]["production_reject_count"]) == (
        0,
        2,
    )


def test_quality_per_shift_counts_defects_found_at_the_station():
    c = cell()
    day = "2025-03-14"
    shift(c.line, day, "06:00", "14:00")
    counted(c, local(day, "06:00"), local(day, "14:00"), good=90, scrap=10)
    unit = UnitFactory(work_order=c.work_order)
    QualityEvent.objects.create(
        unit=unit,
        defect=DefectCodeFactory(),
        station=c.station,
        found_at=local(day, "09:00"),
        severity="minor",
        source="operator",
    )

    row = one("v_quality_per_shift", station=c.station.code)

    assert (row["total_count"], row["good_count"], row["scrap_count"]) == (100, 90, 10)
    assert row["quality"] == Decimal("0.900000")
    assert row["defect_count"] == 1


# -- time that has not happened yet ---------------------------------------------------------------


def test_the_running_shift_counts_planned_time_up_to_now_and_future_shifts_do_not_show():
    c = cell()
    now = timezone.now()
    running = Shift.objects.create(
        line=c.line,
        name="Running",
        business_date=now.date(),
        starts_at=now - dt.timedelta(hours=1),
        ends_at=now + dt.timedelta(hours=7),
    )
    Shift.objects.create(
        line=c.line,
        name="Next",
        business_date=now.date(),
        starts_at=running.ends_at,
        ends_at=running.ends_at + dt.timedelta(hours=8),
    )
    # an open breakdown since 30 minutes ago lasts until now
    DowntimeEvent.objects.create(station=c.station, started_at=now - dt.timedelta(minutes=30))

    rows = view("v_oee_shift", station=c.station.code)

    assert [row["shift_name"] for row in rows] == ["Running"]
    # now() is the start of this test's transaction, a moment before `now` above
    assert Decimal(3500) < rows[0]["planned_seconds"] <= Decimal(3600)
    assert Decimal(1700) < rows[0]["downtime_seconds"] <= Decimal(1800)


# -- who can read it ------------------------------------------------------------------------------

OEE_VIEWS = (
    "v_oee_shift",
    "v_oee_line_shift",
    "v_oee_station_day",
    "v_oee_line_day",
    "v_quality_per_shift",
    "v_downtime_reason",
    "v_downtime_stops",
    "v_downtime_pareto",
)


def test_a_role_with_only_the_reporting_grants_reads_the_views_and_functions_not_the_tables():
    textbook_shift()
    reader = f"oee_reader_{secrets.token_hex(4)}"
    with connection.cursor() as cursor:
        # What reporting/install.py grants the reporting role, and its search_path.
        cursor.execute(f"CREATE ROLE {reader} NOLOGIN NOINHERIT")
        cursor.execute(f"GRANT USAGE ON SCHEMA reporting TO {reader}")
        cursor.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO {reader}")
        cursor.execute(f"SET LOCAL ROLE {reader}")
        cursor.execute("SET LOCAL search_path = reporting")
        rows = {}
        for name in OEE_VIEWS:
            cursor.execute(f"SELECT count(*) FROM reporting.{name}")  # noqa: S608 - ours
            rows[name] = cursor.fetchone()[0]
        cursor.execute(
            "SELECT oee FROM reporting.oee(%s, %s)",
            [local("2025-03-04", "06:00"), local("2025-03-04", "14:00")],
        )
        over_the_shift = cursor.fetchone()[0]
        with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic():
            cursor.execute("SELECT count(*) FROM public.mes_productioncount")
        with (
            pytest.raises(ProgrammingError, match=r"permission denied|does not exist"),
            transaction.atomic(),
        ):
            # the internal functions run as the caller: no way around the views
            cursor.execute(
                "SELECT count(*) FROM reporting.oee_spans("
                "'-infinity', 'infinity', '-infinity', 'infinity', NULL, NULL)"
            )
        cursor.execute("RESET ROLE")

    assert rows["v_oee_shift"] == rows["v_quality_per_shift"] == 1
    assert rows["v_downtime_reason"] == rows["v_downtime_stops"] == 1
    assert over_the_shift == Decimal("0.747937")
