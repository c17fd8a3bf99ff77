"""The OEE page draws what mes/oee.py computes (the SQL of docs/oee.md), never its own numbers:
the textbook shift shows the textbook OEE; the trend per day or shift, the downtime Pareto
(bars and cumulative share), MTBF and MTTR, and the stations of the line side by side."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mes import oee
from mes.models import DowntimeReason
from mes.roles import ROLES
from tests.mes.test_oee import counted, local, reason, shift, stop, textbook_shift
from tests.ui.test_trace_page import parse, signed_in

pytestmark = pytest.mark.django_db

DAY = "2025-03-04"


@pytest.fixture
def textbook():
    """The textbook shift (OEE 74.79 %) on 2025-03-04 and a second day with two stops."""
    c = textbook_shift()
    day = "2025-03-05"
    shift(c.line, day, "06:00", "14:00")
    stop(c.station, local(day, "07:00"), local(day, "07:20"), why=reason("ELEC.PLC"))
    conveyor = DowntimeReason.objects.get(code="MECH.CONVEYOR")
    stop(c.station, local(day, "09:00"), local(day, "09:05"), why=conveyor)
    counted(c, local(day, "06:00"), local(day, "14:00"), good=20_000)
    return c


def oee_page(client, **query):
    return client.get("/oee/", query)


def test_signed_out_visitors_are_sent_to_sign_in_and_roleless_users_refused(client, textbook):
    assert oee_page(client)["Location"] == "/accounts/login/?next=/oee/"
    assert oee_page(signed_in(client, None)).status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_oee(client, textbook, role):
    assert oee_page(signed_in(client, role), line=textbook.line.pk).status_code == 200


def test_the_textbook_shift_shows_the_textbook_oee(client, textbook):
    response = oee_page(
        signed_in(client, "supervisor"), line=textbook.line.pk, first_day=DAY, last_day=DAY
    )
    assert response.status_code == 200
    totals = parse(response).one("dl", id="oee-totals")
    shown = {field: totals.one("dd", data_field=field).text for field in ("oee", "availability")}
    assert shown == {"oee": "74.79 %", "availability": "88.81 %"}
    assert totals.one("dd", data_field="performance").text == "86.11 %"
    assert totals.one("dd", data_field="quality").text == "97.80 %"
    assert "18848 / 19271" in totals.text


def test_the_trend_pareto_and_reliability_are_mes_oee_s_numbers(client, textbook):
    line = textbook.line
    response = oee_page(
        signed_in(client, "quality_engineer"),
        line=line.pk,
        first_day=DAY,
        last_day="2025-03-05",
    )
    page = parse(response)
    days = oee.oee_per_day(first_day=dt.date(2025, 3, 4), last_day=dt.date(2025, 3, 5), line=line)
    data = json.loads(page.one("script", id="oee-data").text)
    assert data["trend"]["labels"] == ["2025-03-04", "2025-03-05"]
    assert data["trend"]["oee"] == [float(row["oee"]) for row in days]
    rows = page.one("table", id="oee-trend-table").find_all("tr")[1:]
    assert [row.one("th").text for row in rows] == ["2025-03-04", "2025-03-05"]

    start, end = min(r["period_start"] for r in days), max(r["period_end"] for r in days)
    pareto = oee.downtime_pareto(start=start, end=end, reason_depth=2, line=line)
    assert [row["key"] for row in pareto] == ["MECH.CONVEYOR", "ELEC.PLC"]  # 52 min, then 20
    assert data["pareto"]["labels"] == ["MECH.CONVEYOR", "ELEC.PLC"]
    assert data["pareto"]["minutes"] == [52.0, 20.0]
    assert data["pareto"]["cumulative"] == [float(row["cumulative_share"]) * 100 for row in pareto]
    table = page.one("table", id="oee-pareto-table").text
    assert "1 MECH.CONVEYOR Mech.Conveyor 2 0 52.0" in table

    (reliability,) = oee.reliability(start=start, end=end, per="line", line=line)
    totals = page.one("dl", id="oee-totals")
    # Three breakdowns (47, 20 and 5 minutes): 24 minutes to repair on average, and
    # 49,680 s of run time (22,380 + 27,300) between them.
    assert (reliability["mtbf_seconds"], reliability["mttr_seconds"]) == (16560, 1440)
    assert totals.one("dd", data_field="mtbf").text == "4 h 36 min"
    assert totals.one("dd", data_field="mttr").text == "24 min"
    station_row = page.one("table", id="oee-stations").one("tr", data_station=textbook.station.code)
    assert station_row.one("a").attrs["href"].startswith(f"/oee/?station={textbook.station.code}")


def test_per_shift_and_per_station(client, textbook):
    response = oee_page(
        signed_in(client, "operator"),
        station=textbook.station.code,
        per="shift",
        first_day=DAY,
        last_day="2025-03-05",
    )
    assert response.status_code == 200
    page = parse(response)
    data = json.loads(page.one("script", id="oee-data").text)
    assert data["per"] == "shift"
    assert data["trend"]["labels"] == ["03-04 Early", "03-05 Early"]
    assert f"Station {textbook.station.code}" in page.one(id="totals-heading").text


def test_days_without_shifts_say_so(client, textbook):
    page = parse(
        oee_page(
            signed_in(client, "operator"),
            line=textbook.line.pk,
            first_day="2025-01-01",
            last_day="2025-01-02",
        )
    )
    assert "No shift is scheduled in these days" in page.one(id="totals-heading").parent.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"first_day": "yesterday"}, "The first day is a date"),
        ({"first_day": "2025-03-06", "last_day": "2025-03-04"}, "The last day comes before"),
        ({"first_day": "2024-01-01", "last_day": "2025-03-04"}, "At most 92 days"),
        ({"per": "hour"}, "per day or per shift"),
        ({"station": "NOPE"}, "There is no station"),
    ],
)
def test_bad_parameters_are_400_with_a_message(client, textbook, query, message):
    response = oee_page(signed_in(client, "operator"), **query)
    assert response.status_code == 400
    assert message in " ".join(p.text for p in parse(response).find_all("p", role="alert"))


def test_the_page_costs_a_fixed_number_of_queries(client, textbook):
    signed_in(client, "operator")
    with CaptureQueriesContext(connection) as captured:
        oee_page(client, line=textbook.line.pk, first_day=DAY, last_day="2025-03-05")
    assert len(captured) <= 12
