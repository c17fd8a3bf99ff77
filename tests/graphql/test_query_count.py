"""No N+1: a result ten times longer costs the same number of database queries."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from telemetry.models import Sample
from tests.graphql.plant import T0, alert, line_with_stations, model_version, work_orders_with_units

pytestmark = pytest.mark.django_db

WORK_ORDERS = """
query {
  workOrders(pagination: {limit: 50}) {
    totalCount
    results {
      externalId
      status
      product { code }
      line { code area { code site { code } } }
      progress { quantity completed inProgress completedShare }
      units {
        serial
        status
        firmware { component version }
        visits { arrivedAt leftAt station { code line { code } } }
        firmwareFlashes { component version station { code } }
        qualityEvents { foundAt defect { code } station { code } }
      }
    }
  }
}
"""


def queries_for(caller, document: str, **variables) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as captured:
        data = caller.data(document, **variables)
    # The session and the user's permissions are read per request whatever the query.
    return len(captured.captured_queries), data


def test_work_orders_with_units_visits_flashes_and_defects_cost_the_same_for_2_or_20(signed_in):
    caller = signed_in("supervisor")
    _, stations = line_with_stations()
    work_orders_with_units(2, stations=stations)
    few, data = queries_for(caller, WORK_ORDERS)
    assert len(data["workOrders"]["results"]) == 2

    work_orders_with_units(18, stations=stations, start=T0 + dt.timedelta(days=1))
    many, data = queries_for(caller, WORK_ORDERS)

    assert len(data["workOrders"]["results"]) == 20
    units = [unit for order in data["workOrders"]["results"] for unit in order["units"]]
    assert len(units) == 40
    assert all(len(unit["visits"]) == 2 and unit["qualityEvents"] for unit in units)
    assert many == few


def test_the_plant_tree_costs_the_same_for_2_or_20_stations_per_line(signed_in):
    caller = signed_in("supervisor")
    document = """{ plant { code areas { code lines { code stations {
        code line { code } signals { name unit } } } } } }"""
    line_with_stations(2)
    few, _ = queries_for(caller, document)
    for _ in range(4):
        line_with_stations(5)
    many, data = queries_for(caller, document)
    stations = [
        station
        for site in data["plant"]
        for area in site["areas"]
        for line in area["lines"]
        for station in line["stations"]
    ]
    assert len(stations) == 22
    assert many == few


ALERTS = """
query {
  alerts(pagination: {limit: 100}) {
    results {
      id
      station { code line { code } }
      unit { serial visits { station { code } } }
      workOrder { externalId progress { completed } }
      modelVersion { version station { code } }
      acknowledgedBy
      firmware { component version }
    }
  }
}
"""


def _alerts(count: int, stations, start: dt.datetime) -> None:
    orders = work_orders_with_units(count, units=1, stations=stations, start=start)
    model = model_version(stations[0], version=f"m-{start:%d%H%M}")
    for number, order in enumerate(orders):
        alert(
            stations[0],
            ts=start + dt.timedelta(seconds=number),
            unit=order.units.get(),
            model=model,
        )


def test_alerts_with_their_station_unit_work_order_and_model_cost_the_same_for_2_or_20(signed_in):
    caller = signed_in("quality_engineer")
    _, stations = line_with_stations()
    _alerts(2, stations, T0)
    few, _ = queries_for(caller, ALERTS)
    _alerts(18, stations, T0 + dt.timedelta(days=1))
    many, data = queries_for(caller, ALERTS)
    assert len(data["alerts"]["results"]) == 20
    assert all(a["unit"]["visits"] and a["workOrder"] for a in data["alerts"]["results"])
    assert many == few


TELEMETRY = """
query ($vin: String) {
  telemetry(filter: {signal: "torque", vin: $vin}, limit: 500) {
    readings {
      ts
      value
      station { code signals { name } }
      unit { serial qualityEvents { defect { code } } visits { station { code } } }
      workOrder { externalId }
      firmware { component version }
    }
  }
}
"""


def _samples_of_units(orders, stations) -> None:
    rows = []
    for order in orders:
        for unit in order.units.all():
            for visit in unit.visits.all():
                for second in range(5):
                    rows.append(
                        Sample(
                            station_id=visit.station_id,
                            ts=visit.arrived_at + dt.timedelta(seconds=second),
                            seq=0,
                            unit_id=unit.pk,
                            vin=unit.vin,
                            serial=unit.serial,
                            work_order_id=order.pk,
                            firmware={"EPS": "v2.1.4"},
                            signals={"torque": 40.0 + second, "angle": 30.0},
                        )
                    )
    Sample.objects.bulk_create(rows)


def test_telemetry_readings_with_their_units_cost_the_same_for_2_or_20_units(signed_in):
    caller = signed_in("supervisor")
    _, stations = line_with_stations()
    orders = work_orders_with_units(2, units=1, stations=stations)
    _samples_of_units(orders, stations)
    few, data = queries_for(caller, TELEMETRY)
    assert len(data["telemetry"]["readings"]) == 2 * 2 * 5

    more = work_orders_with_units(18, units=1, stations=stations, start=T0 + dt.timedelta(days=1))
    _samples_of_units(more, stations)
    many, data = queries_for(caller, TELEMETRY)

    readings = data["telemetry"]["readings"]
    assert len(readings) == 20 * 2 * 5
    assert len({r["unit"]["serial"] for r in readings}) == 20
    assert all(r["unit"]["qualityEvents"][0]["defect"]["code"] == "steering" for r in readings)
    assert many == few
