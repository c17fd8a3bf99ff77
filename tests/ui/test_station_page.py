"""The station page: signals decimated for display, Foresight's score with its threshold, the
SPC chart with its limits and rule violations (or how to get limits), recent visits and
downtime, over a time range chosen in the URL; permissions by role; constant query count."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from aegis.ui.station import CHART_POINTS
from foresight import registry, spc
from mes import services
from mes.demo import seed_demo_plant
from mes.models import Shift, Station, StationVisit, Unit
from mes.roles import ROLES
from telemetry.models import Sample
from tests.factories import DowntimeReasonFactory, UnitFactory
from tests.telemetry.test_series_api import SERIAL, SPIKE, SPIKE_AT, VIN, at, traced_vehicle
from tests.ui.test_trace_page import parse, signed_in

pytestmark = pytest.mark.django_db

# The traced vehicle's minute at TA, as a supervisor in Berlin types it (UTC+1 in March).
AROUND = {"range": "custom", "from": "2025-03-10T09:59:50", "to": "2025-03-10T10:01:10"}


@pytest.fixture
def vehicle():
    return traced_vehicle()


def station_page(client, code: str = "TA", **query):
    return client.get(f"/stations/{code}/", query)


def chart_data(response) -> dict:
    return json.loads(parse(response).one("script", id="station-data").text)


def test_signed_out_visitors_are_sent_to_sign_in(client, vehicle):
    response = station_page(client)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/stations/TA/"


def test_a_user_without_a_role_is_refused_and_an_unknown_station_is_404(client, vehicle):
    assert station_page(signed_in(client, None)).status_code == 403
    assert station_page(signed_in(client, "operator"), "NOPE").status_code == 404


@pytest.mark.parametrize("role", ROLES)
def test_every_role_sees_a_station(client, vehicle, role):
    assert station_page(signed_in(client, role), **AROUND).status_code == 200


def test_signals_and_scores_of_a_custom_range(client, vehicle):
    response = station_page(signed_in(client, "supervisor"), **AROUND)
    assert response.status_code == 200
    data = chart_data(response)
    assert data["live"] is False
    assert data["zone"] == "Europe/Berlin"
    assert data["start"] == at(-10).timestamp()
    signals = {s["name"]: s for s in data["signals"]}
    assert set(signals) == {"torque", "angle"}
    torque = signals["torque"]
    assert torque["unit"] == "N·m"
    assert torque["nominal"] == [40.0, 48.0]
    assert len(torque["ts"]) <= CHART_POINTS
    assert max(torque["max"]) == SPIKE  # the spike survives the decimation
    scores = {s["label"]: s for s in data["scores"]}
    assert scores["pca-TA-1"]["threshold"] == 5.0
    assert max(scores["pca-TA-1"]["max"]) == 7.5
    assert scores["pca-TA-2"]["shadow"] is True
    assert [(a["ts"], a["score"]) for a in data["alerts"]] == [(SPIKE_AT.timestamp(), 7.5)]

    page = parse(response)
    summary = page.one("table", id="score-summary").text
    assert "pca-TA-1 production 5.000 7.500" in summary
    assert "pca-TA-2 shadow 4.000 6.000" in summary
    alert = page.one("table", id="station-alerts").one("tr", data_alert_id=str(vehicle.alert_id))
    assert alert.one("a").attrs["href"] == (
        f"/trace/?vin={VIN}&at=2025-03-10T10%3A00%3A20%2B01%3A00"
    )
    # The tables that repeat the charts for keyboards and screen readers.
    torque_table = page.one("figure", data_signal="torque").one("table")
    assert "57.250" in torque_table.text
    visits = page.one("table", id="station-visits").text
    assert SERIAL in visits
    assert "03-10 10:00:00" in visits


def test_spc_chart_shows_limits_points_and_the_rule_violations(client, vehicle):
    station = vehicle.station_a
    values = np.array(
        [s.signals["torque"] for s in Sample.objects.filter(station_id=station.pk).order_by("ts")]
    )
    limits = spc.compute_limits(values[values < 50], 1)
    row, _ = registry.control_limits_activate(
        station=station, signal="torque", limits=limits, baseline_start=at(-10), baseline_end=at(70)
    )
    violation = registry.raise_alert(
        station=station,
        ts=SPIKE_AT,
        score=SPIKE,
        threshold=row.ucl,
        source="spc",
        rule="nelson_1",
        chart="i",
        signal="torque",
        control_limits=row,
        triggering={"torque": SPIKE},
    )
    response = station_page(signed_in(client, "quality_engineer"), **AROUND)
    page = parse(response)
    assert not page.find_all(id="spc-none")
    figure = page.one("figure", data_spc="torque")
    assert "I-MR" in figure.text
    assert "1 rule violation raised" in figure.text
    assert figure.one("tr", data_alert_id=str(violation.pk)).text.startswith("10:00:20 nelson_1 I")
    (chart,) = chart_data(response)["spc"]
    assert chart["location"] == "i"
    assert chart["spread"] == "mr"
    assert chart["ucl"] == row.ucl
    assert len(chart["points"]) == 801  # every sample is an individual
    assert max(chart["points"]) == SPIKE
    assert chart["violations"] == [
        {"ts": SPIKE_AT.timestamp(), "value": SPIKE, "rule": "nelson_1", "chart": "i"}
    ]


def test_without_limits_the_page_says_how_to_compute_them(client, vehicle):
    page = parse(station_page(signed_in(client, "operator"), **AROUND))
    hint = page.one(id="spc-none").text
    assert "No control limits are active" in hint
    assert "manage.py spc_limits --station TA --signal angle" in hint


def test_recent_visits_and_downtime_newest_first(client, vehicle):
    station = vehicle.station_a
    reason = DowntimeReasonFactory(code="MECH.TOOLING", name="Tool failure")
    stop = services.downtime_open(station=station, at=at(62), reason=reason)
    services.downtime_close(downtime=stop, at=at(65))
    services.downtime_open(station=station, at=at(66))
    page = parse(station_page(signed_in(client, "operator"), **AROUND))
    rows = page.one("table", id="station-downtime").find_all("tr")[1:]
    assert rows[0].text == "03-10 10:01:06 ongoing not given yet unplanned"
    assert rows[1].text == "03-10 10:01:02 03-10 10:01:05 MECH.TOOLING Tool failure unplanned"


def test_a_running_shift_is_a_live_range_and_a_bad_range_falls_back_with_a_message(client, vehicle):
    now = timezone.now()
    Shift.objects.create(
        line=vehicle.station_a.line,
        name="Early",
        business_date=now.date(),
        starts_at=now - dt.timedelta(hours=2),
        ends_at=now + dt.timedelta(hours=6),
    )
    signed_in(client, "operator")
    shift = station_page(client, range="shift")
    assert shift.status_code == 200
    assert chart_data(shift)["live"] is True
    assert f"Early shift of {now.date():%Y-%m-%d}" in parse(shift).one(class_="range-line").text

    far = station_page(client, range="custom", **{"from": "0001-01-01T00:00", "to": "0001-01-02"})
    assert far.status_code == 400
    bad = station_page(client, range="custom", **{"from": "soon", "to": ""})
    assert bad.status_code == 400
    assert "Give both ends of a custom range" in parse(bad).one("p", role="alert").text
    assert chart_data(bad)["lengthSeconds"] == 300


def test_the_page_costs_the_same_queries_however_many_visits_and_alerts(client, vehicle):
    signed_in(client, "operator")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert station_page(client, **AROUND).status_code == 200
        return len(captured)

    before = queries()
    for n in range(12):
        unit = UnitFactory(work_order=vehicle.unit.work_order)
        StationVisit.objects.create(
            unit=unit,
            station=vehicle.station_a,
            arrived_at=at(-9 + n * 0.5),
            left_at=at(-9 + n * 0.5 + 0.4),
        )
        registry.raise_alert(
            station=vehicle.station_a, ts=at(-9 + n * 0.5 + 0.1), score=6.0, threshold=5.0
        )
    assert queries() == before


def test_every_page_of_the_demo_plant_renders(client):
    seed_demo_plant()
    unit = Unit.objects.exclude(vin=None).order_by("serial").first()
    services.unit_arrive(unit=unit, station=Station.objects.get(code="1"))
    signed_in(client, "supervisor")
    for url in (
        "/stations/1/?range=shift",
        "/stations/12/?range=1h",
        f"/trace/?vin={unit.vin}",
        f"/work-orders/?line={unit.work_order.line_id}",
        f"/work-orders/{unit.work_order.external_id}/",
        "/oee/?per=shift",
        "/models/",
    ):
        assert client.get(url).status_code == 200, url
