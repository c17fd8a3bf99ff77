"""Work orders: the list filters by status, line, product and number and shows each order's
progress (units completed of the quantity); the detail lists the units with where each was last
and a link to its trace. Both cost the same queries however many rows they show."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mes import services
from mes.models import WorkOrderStatus
from mes.roles import ROLES
from tests.factories import (
    LineFactory,
    ProductFactory,
    RouteFactory,
    StationFactory,
)
from tests.telemetry.test_series_api import SERIAL, VIN, WORK_ORDER, traced_vehicle
from tests.ui.test_trace_page import parse, signed_in

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2025, 3, 11, 6, 0, tzinfo=dt.UTC)


def order_with_units(number: str, *, line, product, quantity: int, done: int, started: int):
    """A work order in progress with `done` units completed and `started` more at a station."""
    work_order = services.work_order_create(
        external_id=number, product=product, line=line, quantity=quantity
    )
    services.work_order_release(work_order=work_order, at=T0)
    services.work_order_start(work_order=work_order, at=T0)
    station = line.stations.first()
    for n in range(done + started):
        unit = services.unit_create(work_order=work_order, serial=f"{number}-{n}")
        arrived = T0 + dt.timedelta(minutes=n)
        services.unit_arrive(unit=unit, station=station, at=arrived)
        if n < done:
            services.unit_leave(unit=unit, station=station, at=arrived + dt.timedelta(seconds=30))
            services.unit_complete(unit=unit, at=arrived + dt.timedelta(seconds=31))
    return work_order


@pytest.fixture
def plant():
    line = LineFactory(code="WL")
    StationFactory(line=line, code="W1", position=1)
    product = ProductFactory(code="PACK-W")
    RouteFactory(product=product, line=line)
    other_line = LineFactory(code="XL")
    StationFactory(line=other_line, code="X1", position=1)
    other_product = ProductFactory(code="SEDAN-X")
    RouteFactory(product=other_product, line=other_line)
    return {
        "a": order_with_units("WO-A", line=line, product=product, quantity=4, done=3, started=1),
        "b": order_with_units(
            "WO-B", line=other_line, product=other_product, quantity=10, done=0, started=2
        ),
        "c": services.work_order_create(external_id="WO-C", product=product, line=line, quantity=5),
        "line": line,
    }


def listed(response) -> list[str]:
    return [
        row.attrs["data-work-order"] for row in parse(response).find_all("tr", data_work_order=True)
    ]


def test_signed_out_visitors_are_sent_to_sign_in(client):
    assert client.get("/work-orders/")["Location"] == "/accounts/login/?next=/work-orders/"
    assert client.get("/work-orders/WO-A/").status_code == 302


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_work_orders(client, plant, role):
    signed_in(client, role)
    assert client.get("/work-orders/").status_code == 200
    assert client.get("/work-orders/WO-A/").status_code == 200


def test_a_user_without_a_role_is_refused(client, plant):
    signed_in(client, None)
    assert client.get("/work-orders/").status_code == 403
    assert client.get("/work-orders/WO-A/").status_code == 403


def test_the_list_shows_progress_as_units_done_of_the_quantity(client, plant):
    page = parse(signed_in(client, "supervisor").get("/work-orders/"))
    row = page.one("tr", data_work_order="WO-A")
    bar = row.one("progress")
    assert (bar.attrs["value"], bar.attrs["max"]) == ("3", "4")
    assert bar.attrs["aria-label"] == "WO-A: 3 of 4 units done"
    assert row.one(data_field="progress").text == "3 / 4"
    assert "In Progress" in row.text
    assert page.one("tr", data_work_order="WO-C").one(data_field="progress").text == "0 / 5"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["WO-C", "WO-B", "WO-A"]),
        ({"status": "planned"}, ["WO-C"]),
        ({"status": "in_progress"}, ["WO-B", "WO-A"]),
        ({"status": "open"}, ["WO-C", "WO-B", "WO-A"]),
        ({"status": "completed"}, []),
        ({"product": "SEDAN-X"}, ["WO-B"]),
        ({"q": "-a"}, ["WO-A"]),
        ({"status": "nonsense", "line": "x"}, ["WO-C", "WO-B", "WO-A"]),
    ],
)
def test_filters(client, plant, query, expected):
    response = signed_in(client, "operator").get("/work-orders/", query)
    assert response.status_code == 200
    assert listed(response) == expected


def test_filter_by_line(client, plant):
    response = signed_in(client, "operator").get("/work-orders/", {"line": plant["line"].pk})
    assert listed(response) == ["WO-C", "WO-A"]
    selected = parse(response).one("select", id="wo-line").find_all("option", selected=True)
    assert [option.text for option in selected] == [f"WL {plant['line'].name}"]


def test_the_list_costs_the_same_queries_for_three_or_thirty_orders(client, plant):
    signed_in(client, "operator")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            client.get("/work-orders/")
        return len(captured)

    before = queries()
    for n in range(27):
        services.work_order_create(
            external_id=f"WO-N{n}", product=plant["a"].product, line=plant["line"], quantity=2
        )
    assert queries() == before


def test_the_detail_lists_units_where_they_were_and_links_to_their_trace(client):
    vehicle = traced_vehicle()
    signed_in(client, "quality_engineer")
    with CaptureQueriesContext(connection) as captured:
        response = client.get(f"/work-orders/{WORK_ORDER}/")
    assert response.status_code == 200
    page = parse(response)
    row = page.one("tr", data_unit=SERIAL)
    cells = [cell.text for cell in row.find_all("td")]
    assert cells[:6] == [
        SERIAL,
        VIN,
        "In Progress",
        "TB ECU flash",
        "03-10 10:01:30",
        "03-10 10:03:20",
    ]
    assert cells[6:8] == ["1", "1"]  # one alert, one quality event
    link = row.one("a", **{"aria-label": f"Trace {VIN}"})
    assert link.attrs["href"] == f"/trace/?vin={VIN}"
    summary = page.one(id="work-order-summary").text
    assert "0 / 3 done" in summary
    assert "1 in progress, 0 scrapped, 1 created" in summary
    assert "2025-03-10 09:50:00" in summary  # released, in Europe/Berlin

    # More units cost no more queries.
    for n in range(10):
        services.unit_create(work_order=vehicle.unit.work_order, serial=f"EXTRA-{n}")
    with CaptureQueriesContext(connection) as again:
        client.get(f"/work-orders/{WORK_ORDER}/")
    assert len(again) == len(captured)


def test_an_unknown_work_order_is_404(client, plant):
    assert signed_in(client, "operator").get("/work-orders/WO-NOPE/").status_code == 404


def test_cancelled_orders_show_why(client, plant):
    services.work_order_cancel(work_order=plant["c"], reason="customer withdrew")
    page = parse(signed_in(client, "operator").get("/work-orders/WO-C/"))
    assert "Status Cancelled : customer withdrew" in page.one(id="work-order-summary").text
    assert plant["c"].status == WorkOrderStatus.CANCELLED
