"""Each event type a legacy MES may send becomes its MES service call, recorded as the
integration's machine account with source "webhook"."""

from __future__ import annotations

import datetime as dt

import pytest

from mes.demo import demo_vin
from mes.models import (
    AuditEntry,
    DetectionSource,
    DowntimeEvent,
    FirmwareFlash,
    ProductionCount,
    QualityEvent,
    ScrapReason,
    StationVisit,
    Unit,
    WorkOrder,
    WorkOrderStatus,
)
from tests.factories import DefectCodeFactory, DowntimeReasonFactory
from tests.mes.webhooks.conftest import VIN, written

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.mes.webhooks.urls")]

AT = "2026-04-27T09:22:47+02:00"


def _ok(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["result"]


def test_work_order_lifecycle(send, plant, integrator):
    created = _ok(
        send(
            {
                "event_id": "wo-1",
                "type": "work_order.created",
                "work_order": "WO-5000",
                "product": plant.work_order.product.code,
                "line": plant.station.line.code,
                "quantity": 40,
                "due_at": "2026-04-30T22:00:00Z",
            }
        ),
        201,
    )
    assert created == {"work_order": "WO-5000", "status": "planned"}
    for number, (step, status) in enumerate(
        [("released", "released"), ("started", "in_progress"), ("completed", "completed")]
    ):
        result = _ok(
            send(
                {
                    "event_id": f"wo-step-{number}",
                    "type": f"work_order.{step}",
                    "work_order": "WO-5000",
                    "at": 1777274567000 + number * 60_000,
                }
            ),
            200,
        )
        assert result == {"work_order": "WO-5000", "status": status}
    work_order = WorkOrder.objects.get(external_id="WO-5000")
    assert work_order.quantity == 40
    assert work_order.due_at == dt.datetime(2026, 4, 30, 22, tzinfo=dt.UTC)
    assert work_order.completed_at - work_order.released_at == dt.timedelta(minutes=2)
    assert set(
        AuditEntry.objects.filter(model="mes.workorder").values_list("source", "actor_id")
    ) == {("webhook", integrator.pk)}


def test_work_order_may_be_due_in_the_future(send, plant):
    due = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).replace(microsecond=0)
    payload = {
        "event_id": "wo-2",
        "type": "work_order.created",
        "work_order": "WO-5001",
        "product": plant.work_order.product.code,
        "line": plant.station.line.code,
        "quantity": 1,
        "due_at": due.isoformat(),
    }

    _ok(send(payload), 201)

    assert WorkOrder.objects.get(external_id="WO-5001").due_at == due


def test_work_order_cancelled_with_reason(send, plant):
    payload = {"event_id": "c-1", "type": "work_order.cancelled", "work_order": "WO-4711"}
    body = send(payload).json()
    assert body["fields"] == {"reason": ["This field is required."]}

    _ok(send({**payload, "reason": "customer order withdrawn"}), 200)

    plant.work_order.refresh_from_db()
    assert plant.work_order.status == WorkOrderStatus.CANCELLED
    assert plant.work_order.cancel_reason == "customer order withdrawn"


def test_unit_created_with_valid_vin_and_refused_with_invalid_check_digit(send, plant):
    vin = demo_vin("1HG", 100006)
    payload = {"event_id": "u-1", "type": "unit.created", "work_order": "WO-4711"}

    result = _ok(send({**payload, "serial": "SEDAN-100006", "vin": vin}), 201)

    assert result["vin"] == vin
    assert Unit.objects.get(serial="SEDAN-100006").work_order == plant.work_order
    before = written()
    refused = send({**payload, "event_id": "u-2", "serial": "X-1", "vin": "1HGBH41JXMN100005"})
    assert refused.status_code == 400
    assert "check digit" in refused.json()["fields"]["vin"][0]
    assert written() == before


def test_unit_arrives_and_leaves(send, plant):
    arrived = _ok(
        send({"event_id": "a-1", "type": "unit.arrived", "station_id": "5", "vin": VIN, "at": AT}),
        201,
    )
    left = _ok(
        send(
            {
                "event_id": "l-1",
                "type": "unit.left",
                "station_id": "5",
                "serial": "SEDAN-100005",
                "at": "2026-04-27T07:23:45Z",
            }
        ),
        200,
    )

    visit = StationVisit.objects.get()
    assert arrived["visit"] == left["visit"] == visit.pk
    assert visit.left_at - visit.arrived_at == dt.timedelta(seconds=58)


def test_unit_left_a_station_it_is_not_at_is_refused(send, plant):
    before = written()
    response = send({"event_id": "l-1", "type": "unit.left", "station_id": "5", "vin": VIN})
    assert response.status_code == 409
    assert written() == before


def test_vin_and_serial_of_different_units_are_refused(send, plant):
    payload = {"event_id": "a-1", "type": "unit.arrived", "station_id": "5"}
    response = send({**payload, "vin": VIN, "serial": "SOMEONE-ELSE"})
    assert response.status_code == 422
    assert list(response.json()["fields"]) == ["serial"]


def test_firmware_flashed(send, plant):
    result = _ok(
        send(
            {
                "event_id": "f-1",
                "type": "firmware.flashed",
                "vin": VIN,
                "component": "EPS",
                "version": "4.2.0",
                "station_id": "5",
                "at": AT,
            }
        ),
        201,
    )
    flash = FirmwareFlash.objects.get()
    assert result["flash"] == flash.pk
    assert (flash.component, flash.version, flash.station) == ("EPS", "4.2.0", plant.station)


def test_counts_reported_with_scrap_reason(send, plant):
    ScrapReason.objects.create(code="DAMAGED", name="Damaged part")
    payload = {
        "event_id": "n-1",
        "type": "counts.reported",
        "station_id": "5",
        "interval_start": "2026-04-27T06:00:00Z",
        "interval_end": "2026-04-27T07:00:00Z",
        "good": 57,
        "scrap": 2,
        "work_order": "WO-4711",
    }
    assert send(payload).json()["fields"] == {"scrap_reason": ["required when scrap > 0"]}

    _ok(send({**payload, "scrap_reason": "DAMAGED"}), 201)

    count = ProductionCount.objects.get()
    assert (count.good, count.scrap, count.scrap_reason.code) == (57, 2, "DAMAGED")
    assert count.work_order == plant.work_order


def test_counts_interval_must_move_forward(send, plant):
    response = send(
        {
            "event_id": "n-1",
            "type": "counts.reported",
            "station_id": "5",
            "interval_start": "2026-04-27T07:00:00Z",
            "interval_end": "2026-04-27T06:00:00Z",
            "good": 1,
        }
    )
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["interval_end"]


def test_downtime_opened_and_closed_with_reason(send, plant, integrator):
    DowntimeReasonFactory(code="MECH.CONVEYOR")
    opened = _ok(
        send({"event_id": "d-1", "type": "downtime.opened", "station_id": "5", "at": AT}), 201
    )
    closed = _ok(
        send(
            {
                "event_id": "d-2",
                "type": "downtime.closed",
                "station_id": "5",
                "reason": "MECH.CONVEYOR",
                "at": "2026-04-27T07:40:00Z",
            }
        ),
        200,
    )

    downtime = DowntimeEvent.objects.get()
    assert opened["downtime"] == closed["downtime"] == downtime.pk
    assert downtime.reason.code == "MECH.CONVEYOR"
    assert downtime.reported_by == integrator
    assert downtime.ended_at - downtime.started_at == dt.timedelta(minutes=17, seconds=13)


def test_downtime_closed_without_open_downtime_is_refused(send, plant):
    response = send({"event_id": "d-2", "type": "downtime.closed", "station_id": "5"})
    assert response.status_code == 409
    assert response.json()["fields"] == {"station_id": ["no open downtime"]}


def test_downtime_with_unknown_reason_is_unprocessable(send, plant):
    before = written()
    response = send(
        {"event_id": "d-1", "type": "downtime.opened", "station_id": "5", "reason": "NOPE"}
    )
    assert response.status_code == 422
    assert written() == before


def test_quality_recorded_as_legacy_mes_finding(send, plant, integrator):
    DefectCodeFactory(code="torque_low")
    result = _ok(
        send(
            {
                "event_id": "q-1",
                "type": "quality.recorded",
                "vin": VIN,
                "defect": "torque_low",
                "severity": "major",
                "station_id": "5",
                "at": AT,
                "description": "wheel nut 3 at 96 N·m",
            }
        ),
        201,
    )
    event = QualityEvent.objects.get()
    assert result["quality_event"] == event.pk
    assert event.source == DetectionSource.LEGACY_MES
    assert event.detected_by == integrator
    assert event.found_at == dt.datetime(2026, 4, 27, 7, 22, 47, tzinfo=dt.UTC)
    assert event.station == plant.station
