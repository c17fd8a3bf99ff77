"""Each root field answers what the MES holds: the plant, stations, work orders with progress
and units, units with visits, firmware and quality events, alerts, models and OEE (the REST
API's numbers), and the alert mutations (the REST API's services and permissions)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.test import Client

from foresight.models import AlertStatus, ModelStatus
from mes.models import AuditEntry, UnitStatus
from tests.factories import UserFactory
from tests.graphql.conftest import codes
from tests.graphql.plant import T0, alert, line_with_stations, model_version, work_orders_with_units
from tests.mes.test_oee import local, textbook_shift

pytestmark = pytest.mark.django_db


def test_plant_is_the_equipment_tree_in_plant_order(signed_in):
    line, stations = line_with_stations(3)
    data = signed_in("operator").data(
        "{ plant { code timezone areas { code lines { id code stations { code position "
        "signals { name unit } } } } } }"
    )
    [site] = data["plant"]
    assert site["code"] == line.area.site.code
    assert site["timezone"] == "Europe/Berlin"
    [area] = site["areas"]
    [found] = area["lines"]
    assert found["id"] == str(line.pk)
    assert [s["code"] for s in found["stations"]] == [s.code for s in stations]
    assert found["stations"][0]["signals"] == [
        {"name": "angle", "unit": "deg"},
        {"name": "torque", "unit": "N·m"},
    ]


def test_stations_are_filtered_by_line_and_one_is_found_by_code(signed_in):
    line, stations = line_with_stations(2)
    line_with_stations(1)
    caller = signed_in("operator")
    data = caller.data(
        "query ($line: ID) { stations(filter: {line: $line}) { code line { id } } }", line=line.pk
    )
    assert [s["code"] for s in data["stations"]] == [s.code for s in stations]
    one = caller.data(
        "query ($code: String!) { station(code: $code) { name stationType } }",
        code=stations[1].code,
    )
    assert one["station"] == {"name": stations[1].name, "stationType": "tightening"}
    assert caller.data('{ station(code: "nope") { name } }')["station"] is None


def test_work_orders_show_progress_and_units_and_filter_by_status(signed_in):
    orders = work_orders_with_units(3, units=2)
    orders[0].status = "released"
    orders[0].released_at = T0
    orders[0].save()
    caller = signed_in("supervisor")
    data = caller.data(
        """{ workOrders(filter: {status: [RELEASED]}) {
              totalCount
              results { externalId status quantity
                        progress { quantity planned inProgress completed scrapped completedShare }
                        units { serial status } } } }"""
    )
    assert data["workOrders"]["totalCount"] == 1
    [order] = data["workOrders"]["results"]
    assert order["externalId"] == orders[0].external_id
    assert order["status"] == "RELEASED"
    # work_orders_with_units: quantity 3, the first unit completed, the second in progress
    assert order["progress"] == {
        "quantity": 3,
        "planned": 0,
        "inProgress": 1,
        "completed": 1,
        "scrapped": 0,
        "completedShare": pytest.approx(1 / 3),
    }
    assert [u["status"] for u in order["units"]] == ["COMPLETED", "IN_PROGRESS"]

    by_number = caller.data(
        "query ($id: String!) { workOrder(externalId: $id) { progress { completed } } }",
        id=orders[1].external_id,
    )
    assert by_number["workOrder"]["progress"]["completed"] == 1


def test_a_filter_the_rest_api_would_refuse_is_refused_with_its_fields(signed_in):
    body = signed_in().query('{ workOrders(filter: {line: "x"}) { totalCount } }')
    assert codes(body) == ["INVALID"]
    assert "line" in body["errors"][0]["extensions"]["fields"]


def test_a_unit_by_vin_has_its_visits_firmware_and_quality_events(signed_in):
    _, stations = line_with_stations(2)
    unit = work_orders_with_units(1, units=1, stations=stations)[0].units.get()
    unit.vin = "1HGBH41JXMN109186"
    unit.save()
    caller = signed_in("quality_engineer")
    data = caller.data(
        """query ($vin: String) { unit(vin: $vin) {
              serial status workOrder { externalId }
              visits { station { code } arrivedAt leftAt }
              firmwareFlashes { component version station { code } }
              firmware { component version }
              qualityEvents { defect { code name } severity source station { code } }
        } }""",
        vin=unit.vin,
    )["unit"]
    assert data["serial"] == unit.serial
    assert data["status"] == UnitStatus.COMPLETED.upper()
    assert [v["station"]["code"] for v in data["visits"]] == [s.code for s in stations]
    assert data["visits"][0]["arrivedAt"] == T0.isoformat()
    assert data["firmware"] == [{"component": "EPS", "version": "v2.1.4"}]
    assert data["qualityEvents"] == [
        {
            "defect": {"code": "steering", "name": "Steering pull"},
            "severity": "major",
            "source": "inspection",
            "station": {"code": stations[-1].code},
        }
    ]
    units = caller.data(
        "query ($vin: String) { units(filter: {vin: $vin}) { totalCount results { serial } } }",
        vin=unit.vin,
    )
    assert units["units"] == {"totalCount": 1, "results": [{"serial": unit.serial}]}
    body = caller.query("{ unit { serial } }")
    assert codes(body) == ["INVALID"]


def test_alerts_are_filtered_by_status_station_line_and_time(signed_in):
    line, stations = line_with_stations(2)
    other_line, other_stations = line_with_stations(1)
    unit = work_orders_with_units(1, units=1, stations=stations)[0].units.get()
    model = model_version(stations[0], version="st-a-1", status=ModelStatus.PRODUCTION)
    first = alert(stations[0], ts=T0, unit=unit, model=model)
    second = alert(
        stations[1],
        ts=T0 + dt.timedelta(hours=1),
        status=AlertStatus.ACKNOWLEDGED,
        acknowledged_at=T0 + dt.timedelta(hours=1, minutes=1),
    )
    elsewhere = alert(other_stations[0], ts=T0 + dt.timedelta(hours=2))
    caller = signed_in("supervisor")

    def ids(**where) -> list[int]:
        data = caller.data(
            "query ($where: AlertFilter) { alerts(filter: $where) { results { id } } }",
            where=where,
        )
        return [int(a["id"]) for a in data["alerts"]["results"]]

    assert ids() == [elsewhere.pk, second.pk, first.pk]  # newest first
    assert ids(status=["OPEN"]) == [elsewhere.pk, first.pk]
    assert ids(station=stations[1].code) == [second.pk]
    assert ids(line=str(line.pk)) == [second.pk, first.pk]
    assert ids(line=str(other_line.pk)) == [elsewhere.pk]
    assert ids(since=(T0 + dt.timedelta(minutes=30)).isoformat()) == [elsewhere.pk, second.pk]
    assert ids(until=T0.isoformat()) == [first.pk]

    one = caller.data(
        """query ($id: ID!) { alert(id: $id) { score threshold source status vin triggerTorqueNm
             triggering { name value } firmware { component version }
             explanation { feature signal z } modelVersion { version }
             unit { serial } workOrder { externalId } station { code } } }""",
        id=first.pk,
    )["alert"]
    assert one == {
        "score": 7.5,
        "threshold": 3.5,
        "source": "MODEL",
        "status": "OPEN",
        "vin": "",
        "triggerTorqueNm": 52.5,
        "triggering": [{"name": "angle", "value": 31.0}, {"name": "torque", "value": 52.5}],
        "firmware": [{"component": "EPS", "version": "v2.1.4"}],
        "explanation": [{"feature": "torque_mean", "signal": "torque", "z": 6.1}],
        "modelVersion": {"version": "st-a-1"},
        "unit": {"serial": unit.serial},
        "workOrder": {"externalId": unit.work_order.external_id},
        "station": {"code": stations[0].code},
    }


def test_models_show_status_metrics_and_threshold(signed_in):
    _, stations = line_with_stations(1)
    old = model_version(stations[0], version="m-1", status=ModelStatus.ARCHIVED, threshold=3.0)
    model_version(
        stations[0],
        version="m-2",
        status=ModelStatus.PRODUCTION,
        threshold=4.25,
        metrics={"recall": 0.97, "false_alarms_per_1000": 0.4},
        previous_production=old,
    )
    caller = signed_in("ml_engineer")
    data = caller.data(
        """{ models(filter: {status: [PRODUCTION]}) { totalCount results {
              version status threshold metrics featureNames station { code }
              previousProduction { version threshold } } } }"""
    )
    assert data["models"]["totalCount"] == 1
    assert data["models"]["results"] == [
        {
            "version": "m-2",
            "status": "PRODUCTION",
            "threshold": 4.25,
            "metrics": {"recall": 0.97, "false_alarms_per_1000": 0.4},
            "featureNames": ["torque_mean", "torque_std"],
            "station": {"code": stations[0].code},
            "previousProduction": {"version": "m-1", "threshold": 3.0},
        }
    ]
    assert caller.data('{ model(version: "m-1") { status } }')["model"] == {"status": "ARCHIVED"}


OEE_FIELDS = (
    "station shiftName periodStart periodEnd plannedSeconds runSeconds downtimeSeconds "
    "totalCount goodCount scrapCount availability performance quality oee teep"
)


def _rest(path: str, **params) -> list[dict]:
    client = Client()
    client.force_login(UserFactory(role="supervisor"))
    response = client.get(path, params)
    assert response.status_code == 200, response.content
    return response.json()


def _same_numbers(graphql_row: dict, rest_row: dict) -> None:
    for camel, value in graphql_row.items():
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
        expected = rest_row[snake]
        if isinstance(value, str) and isinstance(expected, str) and camel.endswith(("At",)):
            assert value == expected
        elif camel in ("periodStart", "periodEnd"):
            assert dt.datetime.fromisoformat(value) == dt.datetime.fromisoformat(expected)
        elif isinstance(expected, str) and expected.replace(".", "").isdigit():
            assert Decimal(value) == Decimal(expected), camel
        else:
            assert value == expected, camel


def test_oee_is_the_rest_apis_oee_to_the_last_digit(signed_in):
    cell = textbook_shift()
    start, end = local("2025-03-04", "06:00"), local("2025-03-04", "14:00")
    data = signed_in("supervisor").data(
        "query ($from: DateTime!, $to: DateTime!, $station: String) {"
        f" oee(from: $from, to: $to, station: $station) {{ {OEE_FIELDS} }} }}",
        **{"from": start.isoformat(), "to": end.isoformat(), "station": cell.station.code},
    )
    [row] = data["oee"]
    # The textbook numbers (tests/mes/test_oee.py works them out by hand).
    assert row["availability"] == "0.888095"
    assert row["performance"] == "0.861081"
    [rest] = _rest(
        "/api/v1/oee/", start=start.isoformat(), end=end.isoformat(), station=cell.station.code
    )
    _same_numbers(row, rest)


def test_oee_per_shift_and_per_day_and_the_pareto_are_the_rest_apis(signed_in):
    cell = textbook_shift()
    caller = signed_in("operator")
    per_shift = caller.data(
        f'{{ oeePerShift(firstDay: "2025-03-04", lastDay: "2025-03-04") {{ {OEE_FIELDS} }} }}'
    )["oeePerShift"]
    rest = _rest("/api/v1/oee/shifts/", first_day="2025-03-04", last_day="2025-03-04")
    assert len(per_shift) == len(rest) == 1
    _same_numbers(per_shift[0], rest[0])
    assert per_shift[0]["shiftName"] == "Early"

    per_day = caller.data(
        'query ($line: ID) { oeePerDay(firstDay: "2025-03-04", lastDay: "2025-03-04", '
        "line: $line) { oee } }",
        line=cell.line.pk,
    )["oeePerDay"]
    rest = _rest(
        "/api/v1/oee/days/", first_day="2025-03-04", last_day="2025-03-04", line=cell.line.pk
    )
    assert [Decimal(r["oee"]) for r in per_day] == [Decimal(r["oee"]) for r in rest]

    start, end = local("2025-03-04", "06:00"), local("2025-03-04", "14:00")
    pareto = caller.data(
        "query ($from: DateTime!, $to: DateTime!) { downtimePareto(from: $from, to: $to) "
        "{ paretoRank key lostSeconds share } }",
        **{"from": start.isoformat(), "to": end.isoformat()},
    )["downtimePareto"]
    rest = _rest("/api/v1/downtime/pareto/", start=start.isoformat(), end=end.isoformat())
    assert pareto == [
        {
            "paretoRank": r["pareto_rank"],
            "key": r["key"],
            "lostSeconds": str(Decimal(r["lost_seconds"])),
            "share": str(Decimal(r["share"])),
        }
        for r in rest
    ]
    assert pareto[0]["key"] == "MECH.CONVEYOR"


def test_oee_refuses_what_the_rest_api_refuses(signed_in):
    caller = signed_in()
    long = caller.query('{ oee(from: "2025-01-01T00:00:00Z", to: "2026-03-01T00:00:00Z") { oee } }')
    assert codes(long) == ["INVALID"]
    unknown = caller.query(
        '{ oee(from: "2025-01-01T00:00:00Z", to: "2025-01-02T00:00:00Z", station: "no") { oee } }'
    )
    assert codes(unknown) == ["UNKNOWN_REFERENCE"]
    assert unknown["errors"][0]["extensions"]["status"] == 422


# -- mutations --------------------------------------------------------------------------------

ACKNOWLEDGE = """mutation ($id: ID!) {
  acknowledgeAlert(id: $id, note: "on it") { status note acknowledgedBy }
}"""
RESOLVE = """mutation ($id: ID!) {
  resolveAlert(id: $id, feedback: TRUE_DEFECT) { status feedback resolvedBy }
}"""


def test_an_operator_acknowledges_an_alert_through_the_registry_and_the_audit_trail(signed_in):
    _, stations = line_with_stations(1)
    raised = alert(stations[0], ts=T0)
    caller = signed_in("operator")
    data = caller.data(ACKNOWLEDGE, id=raised.pk)
    assert data["acknowledgeAlert"] == {
        "status": "ACKNOWLEDGED",
        "note": "on it",
        "acknowledgedBy": caller.user.username,
    }
    entry = AuditEntry.objects.get(model="foresight.defectalert", object_id=str(raised.pk))
    assert (entry.actor_name, entry.source) == (caller.user.username, "graphql")
    again = caller.query(ACKNOWLEDGE, id=raised.pk)
    assert codes(again) == ["TRANSITION_REFUSED"]
    assert again["errors"][0]["extensions"]["status"] == 409


def test_resolving_needs_the_rest_apis_permission(signed_in):
    _, stations = line_with_stations(1)
    raised = alert(stations[0], ts=T0)
    operator = signed_in("operator")  # may acknowledge, not resolve (mes/roles.py)
    body = operator.query(RESOLVE, id=raised.pk)
    assert codes(body) == ["FORBIDDEN"]
    assert body["data"] is None
    raised.refresh_from_db()
    assert raised.status == AlertStatus.OPEN

    engineer = signed_in("quality_engineer")
    data = engineer.data(RESOLVE, id=raised.pk)
    assert data["resolveAlert"] == {
        "status": "RESOLVED",
        "feedback": "TRUE_DEFECT",
        "resolvedBy": engineer.user.username,
    }


def test_an_unknown_alert_is_not_found(signed_in):
    body = signed_in("admin").query(ACKNOWLEDGE, id=999_999)
    assert codes(body) == ["NOT_FOUND"]


def test_an_unexpected_failure_is_masked(signed_in, monkeypatch):
    from aegis.graphql import schema as schema_module

    def broken(*args, **kwargs):
        raise RuntimeError("password=hunter2 at db.internal:5432")

    monkeypatch.setattr(schema_module.oee_reports, "oee_per_day", broken)
    body = signed_in().query('{ oeePerDay(firstDay: "2025-03-04", lastDay: "2025-03-04") { oee } }')
    assert body["errors"][0]["message"] == "Unexpected error."
    assert "hunter2" not in json.dumps(body)
