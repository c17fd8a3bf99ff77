"""OEE, the downtime Pareto and reliability through REST: the same numbers as the SQL views
(tests/mes/test_oee.py builds the scenarios and works the numbers out by hand)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mes.roles import ROLES
from tests.factories import LineFactory, StationFactory
from tests.mes.test_oee import (
    cell,
    counted,
    local,
    night_shifts,
    one,
    reason_tree,
    shift,
    stop,
    stops_around_the_threshold,
    textbook_shift,
    two_shifts,
    view,
)

pytestmark = pytest.mark.django_db


def as_json(value):
    """A view's value as the API writes it (decimals and instants as strings)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def assert_same_numbers(api_row: dict, view_row: dict) -> None:
    shared = set(api_row) & set(view_row)
    assert len(shared) >= 17
    for column in shared:
        assert api_row[column] == as_json(view_row[column]), column


@pytest.fixture
def supervisor(api_as):
    return api_as("supervisor")


def get_rows(client, url: str, **query) -> list[dict]:
    response = client.get(url, query)
    assert response.status_code == 200, response.json()
    return response.json()


# -- the worked scenarios, through REST ---------------------------------------------------------


def test_textbook_shift_through_rest_is_the_views_row(supervisor):
    c = textbook_shift()

    [row] = get_rows(
        supervisor,
        "/api/v1/oee/shifts",
        first_day="2025-03-04",
        last_day="2025-03-04",
        station=c.station.code,
    )

    # availability 88.81 %, performance 86.11 %, quality 97.80 %, OEE 74.79 % (74.80 % published)
    assert (row["availability"], row["performance"], row["quality"], row["oee"]) == (
        "0.888095",
        "0.861081",
        "0.978050",
        "0.747937",
    )
    assert (row["planned_seconds"], row["run_seconds"]) == ("25200.000", "22380.000")
    assert (row["total_count"], row["good_count"], row["scrap_count"]) == (19_271, 18_848, 423)
    assert_same_numbers(row, one("v_oee_shift", station=c.station.code))


def test_split_shifts_through_rest(supervisor):
    c = two_shifts()
    day = "2025-03-05"
    counted(c, local(day, "13:00"), local(day, "15:00"), good=121, scrap=7)
    stop(c.station, local(day, "13:50"), local(day, "14:20"))

    rows = get_rows(supervisor, "/api/v1/oee/shifts", first_day=day, last_day=day, line=c.line.pk)

    # 60 + 61 good, 3 + 4 scrap, 600 s + 1,200 s down (worked out in test_oee.py)
    assert [(r["shift_name"], r["good_count"], r["scrap_count"]) for r in rows] == [
        ("Early", 60, 3),
        ("Late", 61, 4),
    ]
    assert [r["downtime_seconds"] for r in rows] == ["600.000", "1200.000"]
    for row in rows:
        assert_same_numbers(
            row, one("v_oee_shift", station=c.station.code, shift_name=row["shift_name"])
        )


def test_a_period_cuts_shifts_at_its_ends(supervisor):
    c = two_shifts()
    day = "2025-03-05"
    counted(c, local(day, "13:00"), local(day, "15:00"), good=121, scrap=7)
    stop(c.station, local(day, "13:50"), local(day, "14:20"))

    [row] = get_rows(
        supervisor,
        "/api/v1/oee",
        start=local(day, "10:00").isoformat(),
        end=local(day, "18:00").isoformat(),
        station=c.station.code,
    )

    # 10:00-18:00: 8 h planned (4 h of each shift), the whole 30-minute stop, every unit of
    # the 13:00-15:00 count (all done by 15:00)
    assert (row["planned_seconds"], row["downtime_seconds"]) == ("28800.000", "1800.000")
    assert (row["total_count"], row["good_count"]) == (128, 121)
    assert row["calendar_seconds"] == "28800.000"
    [line_row] = get_rows(
        supervisor,
        "/api/v1/oee",
        start=local(day, "10:00").isoformat(),
        end=local(day, "18:00").isoformat(),
        per="line",
    )
    # the line has this one station: the same numbers, on a row without station
    assert (line_row["line"], line_row["station"], line_row["stations"]) == (c.line.code, None, 1)
    assert line_row["oee"] == row["oee"]
    # The period of exactly the Early shift is the Early shift's row.
    [early] = get_rows(
        supervisor,
        "/api/v1/oee",
        start=local(day, "06:00").isoformat(),
        end=local(day, "14:00").isoformat(),
        station=c.station.code,
    )
    shift_row = one("v_oee_shift", station=c.station.code, shift_name="Early")
    for column in ("planned_seconds", "run_seconds", "total_count", "good_count", "oee"):
        assert early[column] == as_json(shift_row[column]), column


def test_a_spring_night_through_rest(supervisor):
    c = night_shifts("2025-03-29")
    counted(c, local("2025-03-29", "22:00"), local("2025-03-30", "06:00"), good=20_000)

    [row] = get_rows(
        supervisor,
        "/api/v1/oee/shifts",
        first_day="2025-03-29",
        last_day="2025-03-29",
        station=c.station.code,
    )

    # 7 h of absolute time, 45 min of breaks: 22,500 s planned; OEE 20,000 / 22,500
    assert (row["calendar_seconds"], row["planned_seconds"]) == ("25200.000", "22500.000")
    assert row["oee"] == "0.888889"
    assert row["shift_end"] == "2025-03-30T04:00:00Z"  # 06:00 CEST


def test_micro_stops_through_rest(supervisor):
    c = stops_around_the_threshold()

    [row] = get_rows(
        supervisor,
        "/api/v1/oee/shifts",
        first_day="2025-03-06",
        last_day="2025-03-06",
        station=c.station.code,
    )

    # 119 s: small stop; 120 s and 121 s: downtime
    assert (row["small_stop_count"], row["small_stop_seconds"]) == (1, "119.000")
    assert (row["stop_count"], row["downtime_seconds"]) == (2, "241.000")


def test_days_per_line_and_per_station(supervisor):
    c = two_shifts()
    day = "2025-03-05"
    counted(c, local(day, "13:00"), local(day, "15:00"), good=121, scrap=7)

    [line_day] = get_rows(supervisor, "/api/v1/oee/days", first_day=day, last_day=day)
    [station_day] = get_rows(
        supervisor, "/api/v1/oee/days", first_day=day, last_day=day, per="station"
    )

    assert line_day["station"] is None
    assert station_day["station"] == c.station.code
    assert line_day["good_count"] == station_day["good_count"] == 121
    assert_same_numbers(line_day, one("v_oee_line_day", line=c.line.code))


# -- downtime -----------------------------------------------------------------------------------


def pareto_day():
    c = cell()
    tree = reason_tree()
    day = "2025-03-10"
    shift(c.line, day, "06:00", "14:00", name="Early")
    shift(c.line, day, "14:00", "22:00", name="Late")
    stop(c.station, local(day, "07:00"), local(day, "07:10"), why=tree["MECH.CONVEYOR"])
    stop(c.station, local(day, "15:00"), local(day, "15:15"), why=tree["MECH.TOOLING"])
    stop(c.station, local(day, "08:00"), local(day, "08:20"), why=tree["SETUP.ADJUST"])
    return c, day


def test_pareto_rolls_the_reason_tree_up(supervisor):
    _, day = pareto_day()
    period = {"start": local(day, "06:00").isoformat(), "end": local(day, "22:00").isoformat()}

    leaves = get_rows(supervisor, "/api/v1/downtime/pareto", **period)
    roots = get_rows(supervisor, "/api/v1/downtime/pareto", depth=1, **period)

    # leaves: SETUP.ADJUST 1,200 s, MECH.TOOLING 900 s, MECH.CONVEYOR 600 s
    assert [(r["key"], r["lost_seconds"]) for r in leaves] == [
        ("SETUP.ADJUST", "1200.000"),
        ("MECH.TOOLING", "900.000"),
        ("MECH.CONVEYOR", "600.000"),
    ]
    # roots: MECH 900 + 600 = 1,500 s, SETUP 1,200 s; shares of 2,700 s
    assert [(r["pareto_rank"], r["key"], r["lost_seconds"], r["stop_count"]) for r in roots] == [
        (1, "MECH", "1500.000", 2),
        (2, "SETUP", "1200.000", 1),
    ]
    assert [r["cumulative_share"] for r in roots] == ["0.555556", "1.000000"]


def test_pareto_by_shift_and_by_station(supervisor):
    c, day = pareto_day()
    other = StationFactory(line=c.line)
    stop(other, local(day, "09:00"), local(day, "10:00"))
    period = {"start": local(day, "06:00").isoformat(), "end": local(day, "22:00").isoformat()}

    by_shift = get_rows(supervisor, "/api/v1/downtime/pareto", by="shift", **period)
    by_station = get_rows(supervisor, "/api/v1/downtime/pareto", by="station", **period)

    # Early: 600 + 1,200 + 3,600 s; Late: 900 s
    assert [(r["key"], r["lost_seconds"]) for r in by_shift] == [
        ("Early", "5400.000"),
        ("Late", "900.000"),
    ]
    assert [(r["key"], r["lost_seconds"]) for r in by_station] == [
        (other.code, "3600.000"),
        (c.station.code, "2700.000"),
    ]


def test_reliability_gives_mtbf_and_mttr(supervisor):
    c, day = pareto_day()

    [row] = get_rows(
        supervisor,
        "/api/v1/downtime/reliability",
        start=local(day, "06:00").isoformat(),
        end=local(day, "22:00").isoformat(),
        station=c.station.code,
    )

    # planned 16 h = 57,600 s; down 600 + 900 + 1,200 = 2,700 s; run 54,900 s.
    # Failures are the two breakdowns (the setup is not one): MTBF = 54,900 / 2 = 27,450 s,
    # MTTR = (600 + 900) / 2 = 750 s.
    assert (row["stop_count"], row["failure_count"]) == (3, 2)
    assert (row["mtbf_seconds"], row["mttr_seconds"]) == ("27450.000", "750.000")


def test_stops_across_a_shift_change_are_one_row_per_shift(supervisor):
    c = two_shifts()
    day = "2025-03-05"
    stop(c.station, local(day, "13:50"), local(day, "14:20"))

    rows = get_rows(
        supervisor,
        "/api/v1/downtime/stops",
        start=local(day, "06:00").isoformat(),
        end=local(day, "22:00").isoformat(),
    )

    assert [(r["shift_name"], r["lost_seconds"], r["stop_count"]) for r in rows] == [
        ("Early", "600.000", 1),
        ("Late", "1200.000", 0),
    ]
    assert [r["reason_name"] for r in rows] == ["No reason given"] * 2
    assert len(view("v_downtime_stops", station=c.station.code)) == 2


# -- who may ask, and how -----------------------------------------------------------------------

REPORTS = [
    ("/api/v1/oee", {"start": "2025-03-04T00:00:00Z", "end": "2025-03-05T00:00:00Z"}),
    ("/api/v1/oee/shifts", {"first_day": "2025-03-04", "last_day": "2025-03-04"}),
    ("/api/v1/oee/days", {"first_day": "2025-03-04", "last_day": "2025-03-04"}),
    ("/api/v1/downtime/pareto", {"start": "2025-03-04T00:00:00Z", "end": "2025-03-05T00:00:00Z"}),
    (
        "/api/v1/downtime/reliability",
        {"start": "2025-03-04T00:00:00Z", "end": "2025-03-05T00:00:00Z"},
    ),
    ("/api/v1/downtime/stops", {"start": "2025-03-04T00:00:00Z", "end": "2025-03-05T00:00:00Z"}),
]


@pytest.mark.parametrize(("url", "query"), REPORTS)
def test_every_role_reads_the_reports_and_nobody_else(api_as, api_client, url, query):
    textbook_shift()
    assert api_client.get(url, query).status_code == 401
    assert api_as(None).get(url, query).status_code == 403
    for role in ROLES:
        response = api_as(role).get(url, query)
        assert response.status_code == 200, (role, response.json())
        assert response.json(), role


@pytest.mark.parametrize(
    ("url", "query", "fields"),
    [
        ("/api/v1/oee", {}, {"start", "end"}),
        ("/api/v1/oee", {"start": "2025-03-05T00:00:00Z", "end": "2025-03-04T00:00:00Z"}, {"end"}),
        ("/api/v1/oee", {"start": "2025-03-04T00:00:00", "end": "2025-03-05T00:00:00Z"}, {"start"}),
        ("/api/v1/oee", {"start": "2024-01-01T00:00:00Z", "end": "2025-03-05T00:00:00Z"}, {"end"}),
        (
            "/api/v1/oee",
            {"start": "2025-03-04T00:00:00Z", "end": "2025-03-05T00:00:00Z", "per": "site"},
            {"per"},
        ),
        ("/api/v1/oee/shifts", {"first_day": "2025-03-04"}, {"last_day"}),
        ("/api/v1/oee/days", {"first_day": "2025-03-05", "last_day": "2025-03-04"}, {"last_day"}),
        ("/api/v1/oee/shifts", {"first_day": "2024-01-01", "last_day": "2025-01-01"}, {"last_day"}),
        ("/api/v1/oee/days", {"first_day": "tuesday", "last_day": "2025-03-04"}, {"first_day"}),
        (
            "/api/v1/downtime/pareto",
            {"start": "2025-03-04T00:00:00Z", "end": "2025-03-05T00:00:00Z", "depth": "0"},
            {"depth"},
        ),
        (
            "/api/v1/downtime/pareto",
            {"start": "2025-03-04T00:00:00Z", "end": "2025-03-05T00:00:00Z", "by": "operator"},
            {"by"},
        ),
        (
            "/api/v1/oee/shifts",
            {"first_day": "2025-03-04", "last_day": "2025-03-04", "line": "first"},
            {"line"},
        ),
    ],
)
def test_bad_parameters_are_400_with_the_fields_at_fault(supervisor, url, query, fields):
    response = supervisor.get(url, query)

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert set(body["fields"]) == fields


def test_an_unknown_station_or_line_is_422(supervisor):
    query = {"first_day": "2025-03-04", "last_day": "2025-03-04"}

    station = supervisor.get("/api/v1/oee/shifts", {**query, "station": "NOPE"})
    line = supervisor.get("/api/v1/oee/shifts", {**query, "line": 987_654})

    assert station.status_code == line.status_code == 422
    assert set(station.json()["fields"]) == {"station"}
    assert set(line.json()["fields"]) == {"line"}


def test_a_station_of_another_line_is_400(supervisor):
    c = cell()
    response = supervisor.get(
        "/api/v1/oee/shifts",
        {
            "first_day": "2025-03-04",
            "last_day": "2025-03-04",
            "station": c.station.code,
            "line": LineFactory().pk,
        },
    )

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"station"}


def test_a_report_costs_the_same_queries_for_one_station_or_many(supervisor):
    query = {"first_day": "2025-03-04", "last_day": "2025-03-04"}
    c = textbook_shift()
    supervisor.get("/api/v1/oee/shifts", query)  # the first request warms the caches
    with CaptureQueriesContext(connection) as one_station:
        assert len(supervisor.get("/api/v1/oee/shifts", query).json()) == 1
    for _ in range(4):
        station = StationFactory(line=c.line)
        counted_cell = type(c)(c.line, station, c.work_order)
        counted(counted_cell, local("2025-03-04", "06:00"), local("2025-03-04", "07:00"), good=5)
    with CaptureQueriesContext(connection) as five_stations:
        assert len(supervisor.get("/api/v1/oee/shifts", query).json()) == 5

    assert len(five_stations) == len(one_station)
