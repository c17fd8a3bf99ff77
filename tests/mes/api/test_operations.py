"""Every write of the API is one operation: it calls its service, answers with the result,
records who did it (source "api"), and writes nothing when it refuses."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from mes import services
from mes.models import (
    AuditEntry,
    DowntimeEvent,
    FirmwareFlash,
    OutboxMessage,
    ProductionCount,
    QualityEvent,
    ScrapReason,
    StationVisit,
    Unit,
    WorkOrder,
    WorkOrderStatus,
)
from tests.factories import (
    DefectCodeFactory,
    DowntimeReasonFactory,
    RouteOperationFactory,
    StationFactory,
    UnitFactory,
    WorkOrderFactory,
)

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2025, 3, 4, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def plant():
    operation = RouteOperationFactory()
    route = operation.route
    second = StationFactory(line=route.line)
    work_order = WorkOrderFactory(product=route.product, line=route.line)
    return {
        "line": route.line,
        "product": route.product,
        "station": operation.station,
        "second_station": second,
        "work_order": work_order,
        "unit": UnitFactory(work_order=work_order),
    }


@pytest.fixture
def admin(api_as):
    return api_as("admin")


def _rows():
    """Everything an operation can write."""
    return [
        model.objects.count()
        for model in (
            AuditEntry,
            OutboxMessage,
            WorkOrder,
            Unit,
            StationVisit,
            FirmwareFlash,
            ProductionCount,
            DowntimeEvent,
            QualityEvent,
        )
    ]


def _audited(client, model: str, object_id) -> AuditEntry:
    entry = AuditEntry.objects.filter(model=model, object_id=str(object_id)).first()
    assert entry is not None
    assert (entry.source, entry.actor_id, entry.actor_name) == (
        "api",
        client.user.pk,
        client.user.username,
    )
    return entry


def test_work_order_is_created_planned_and_audited(admin, plant):
    response = admin.post(
        "/api/v1/work-orders/",
        {
            "external_id": "SAP-4711",
            "product": plant["product"].code,
            "line": plant["line"].pk,
            "quantity": 12,
            "due_at": "2025-03-05T14:00:00+01:00",
        },
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["external_id"] == "SAP-4711"
    assert body["status"] == "planned"
    assert body["product"] == plant["product"].code
    assert body["due_at"] == "2025-03-05T13:00:00Z"
    _audited(admin, "mes.workorder", body["id"])


def test_work_order_walks_release_start_complete_through_the_api(admin, plant):
    external_id = plant["work_order"].external_id
    for step, status in [
        ("release", "released"),
        ("start", "in_progress"),
        ("complete", "completed"),
    ]:
        response = admin.post(f"/api/v1/work-orders/{external_id}/{step}", {})
        assert response.status_code == 200, response.json()
        assert response.json()["status"] == status
    assert AuditEntry.objects.filter(model="mes.workorder", source="api").count() == 3


def test_cancel_needs_a_reason_and_records_it(admin, plant):
    url = f"/api/v1/work-orders/{plant['work_order'].external_id}/cancel"
    before = _rows()
    refused = admin.post(url, {})
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid"
    assert "reason" in refused.json()["fields"]
    assert _rows() == before

    response = admin.post(url, {"reason": "customer withdrew the order"})
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["cancel_reason"] == "customer withdrew the order"
    _audited(admin, "mes.workorder", plant["work_order"].pk)


def test_refused_transition_is_409_with_the_service_message_and_writes_nothing(admin, plant):
    before = _rows()
    response = admin.post(f"/api/v1/work-orders/{plant['work_order'].external_id}/complete", {})
    assert response.status_code == 409
    assert response.json()["code"] == "transition_refused"
    assert "is planned" in response.json()["detail"]
    assert _rows() == before


def test_transition_before_the_previous_step_is_409_not_a_server_error(admin, plant):
    work_order = plant["work_order"]
    services.work_order_release(work_order=work_order, at=T0)
    before = _rows()
    response = admin.post(
        f"/api/v1/work-orders/{work_order.external_id}/start",
        {"at": (T0 - dt.timedelta(hours=1)).isoformat()},
    )
    assert response.status_code == 409
    assert response.json()["fields"] == {"constraint": ["mes_wo_started_after_release"]}
    assert _rows() == before


def test_unknown_work_order_in_the_path_is_404(admin):
    response = admin.post("/api/v1/work-orders/NO-SUCH-ORDER/release", {})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_unit_is_created_with_a_checked_vin(admin, plant):
    external_id = plant["work_order"].external_id
    bad = admin.post(
        "/api/v1/units/",
        {"work_order": external_id, "serial": "SN-1", "vin": "1HGBH41JXMN100043"},
    )
    assert bad.status_code == 400
    assert "vin" in bad.json()["fields"]
    response = admin.post(
        "/api/v1/units/",
        {"work_order": external_id, "serial": "SN-1", "vin": "1HGBH41JXMN109186"},
    )
    assert response.status_code == 201, response.json()
    assert response.json()["vin"] == "1HGBH41JXMN109186"
    assert response.json()["work_order"] == external_id
    _audited(admin, "mes.unit", response.json()["id"])


def test_unit_for_an_unknown_work_order_is_422_and_writes_nothing(admin):
    before = _rows()
    response = admin.post("/api/v1/units/", {"work_order": "NOPE", "serial": "SN-1"})
    assert response.status_code == 422
    assert response.json() == {
        "code": "unknown_reference",
        "detail": "no work order 'NOPE'",
        "fields": {"work_order": ["unknown work order"]},
    }
    assert _rows() == before


def test_unit_arrives_and_leaves_a_station(admin, plant):
    unit, station = plant["unit"], plant["station"]
    arrived = admin.post(
        f"/api/v1/units/{unit.serial}/arrive",
        {"station": station.code, "at": T0.isoformat()},
    )
    assert arrived.status_code == 200, arrived.json()
    assert arrived.json()["station"] == station.code
    assert arrived.json()["left_at"] is None
    visit_id = arrived.json()["id"]
    _audited(admin, "mes.stationvisit", visit_id)

    left = admin.post(
        f"/api/v1/units/{unit.serial}/leave",
        {"station": station.code, "at": (T0 + dt.timedelta(seconds=55)).isoformat()},
    )
    assert left.status_code == 200, left.json()
    assert left.json()["id"] == visit_id
    assert left.json()["left_at"] == "2025-03-04T09:00:55Z"
    assert AuditEntry.objects.filter(model="mes.stationvisit", action="update").exists()


def test_arrival_at_an_unknown_station_is_422_and_writes_nothing(admin, plant):
    before = _rows()
    response = admin.post(f"/api/v1/units/{plant['unit'].serial}/arrive", {"station": "NOPE"})
    assert response.status_code == 422
    assert response.json()["fields"] == {"station": ["unknown station"]}
    assert _rows() == before


def test_arrival_of_an_unknown_unit_is_404(admin, plant):
    response = admin.post("/api/v1/units/NO-SUCH-UNIT/arrive", {"station": plant["station"].code})
    assert response.status_code == 404


def test_a_malformed_body_is_400_before_references_are_looked_up(admin, plant):
    response = admin.post(
        f"/api/v1/units/{plant['unit'].serial}/arrive", {"station": "NOPE", "at": "yesterday"}
    )
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["at"]


def test_times_without_a_zone_are_refused(admin, plant):
    before = _rows()
    response = admin.post(
        f"/api/v1/units/{plant['unit'].serial}/arrive",
        {"station": plant["station"].code, "at": "2025-03-04T09:00:00"},
    )
    assert response.status_code == 400
    assert "time zone" in response.json()["fields"]["at"][0]
    assert _rows() == before


def test_leaving_a_station_the_unit_is_not_at_is_409(admin, plant):
    response = admin.post(
        f"/api/v1/units/{plant['unit'].serial}/leave", {"station": plant["station"].code}
    )
    assert response.status_code == 409
    assert response.json()["code"] == "transition_refused"


def test_two_units_at_one_station_at_once_is_a_409_conflict(admin, plant):
    station = plant["station"]
    other = UnitFactory(work_order=plant["work_order"])
    services.unit_arrive(unit=other, station=station, at=T0)
    services.unit_leave(unit=other, station=station, at=T0 + dt.timedelta(minutes=5))
    before = _rows()
    response = admin.post(
        f"/api/v1/units/{plant['unit'].serial}/arrive",
        {"station": station.code, "at": (T0 + dt.timedelta(minutes=1)).isoformat()},
    )
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert _rows() == before


def test_firmware_flash_is_recorded_for_the_unit(admin, plant):
    unit = plant["unit"]
    response = admin.post(
        f"/api/v1/units/{unit.serial}/firmware",
        {
            "component": "EPS",
            "version": "4.2.1",
            "at": T0.isoformat(),
            "station": plant["station"].code,
        },
    )
    assert response.status_code == 201, response.json()
    assert response.json()["component"] == "EPS"
    assert response.json()["station"] == plant["station"].code
    _audited(admin, "mes.firmwareflash", response.json()["id"])


def test_counts_are_reported_and_scrap_needs_a_known_reason(admin, plant):
    ScrapReason.objects.create(code="DAMAGED", name="Damaged part")
    body = {
        "station": plant["station"].code,
        "interval_start": T0.isoformat(),
        "interval_end": (T0 + dt.timedelta(minutes=15)).isoformat(),
        "good": 14,
        "scrap": 1,
        "work_order": plant["work_order"].external_id,
    }
    before = _rows()
    without_reason = admin.post("/api/v1/counts", body)
    assert without_reason.status_code == 400
    assert "scrap_reason" in without_reason.json()["fields"]
    unknown_reason = admin.post("/api/v1/counts", {**body, "scrap_reason": "NOPE"})
    assert unknown_reason.status_code == 422
    assert _rows() == before

    response = admin.post("/api/v1/counts", {**body, "scrap_reason": "DAMAGED"})
    assert response.status_code == 201, response.json()
    assert (response.json()["good"], response.json()["scrap"]) == (14, 1)
    assert response.json()["scrap_reason"] == "DAMAGED"
    _audited(admin, "mes.productioncount", response.json()["id"])


def test_downtime_is_opened_and_closed_with_a_reason(admin, plant):
    reason = DowntimeReasonFactory()
    opened = admin.post(
        "/api/v1/downtime-events",
        {"station": plant["station"].code, "at": T0.isoformat(), "comment": "belt stopped"},
    )
    assert opened.status_code == 201, opened.json()
    downtime_id = opened.json()["id"]
    assert opened.json()["reported_by"] == admin.user.username
    assert opened.json()["ended_at"] is None
    _audited(admin, "mes.downtimeevent", downtime_id)

    url = f"/api/v1/downtime-events/{downtime_id}/close"
    without_reason = admin.post(url, {})
    assert without_reason.status_code == 400
    assert without_reason.json()["fields"] == {"reason": ["required to close"]}

    closed = admin.post(
        url, {"reason": reason.code, "at": (T0 + dt.timedelta(minutes=7)).isoformat()}
    )
    assert closed.status_code == 200, closed.json()
    assert closed.json()["reason"] == reason.code
    assert closed.json()["ended_at"] == "2025-03-04T09:07:00Z"
    assert admin.post(url, {}).status_code == 409


def test_closing_an_unknown_downtime_is_404(admin):
    assert admin.post("/api/v1/downtime-events/999999999/close", {}).status_code == 404
    assert (
        admin.post("/api/v1/downtime-events/99999999999999999999999/close", {}).status_code == 404
    )


def test_quality_event_is_recorded_by_serial_or_vin(admin, plant):
    defect = DefectCodeFactory()
    unit = UnitFactory(work_order=plant["work_order"], vin="1HGBH41JXMN109186")
    by_vin = admin.post(
        "/api/v1/quality-events/",
        {
            "vin": unit.vin,
            "defect": defect.code,
            "severity": "major",
            "source": "inspection",
            "station": plant["station"].code,
            "found_at": T0.isoformat(),
        },
    )
    assert by_vin.status_code == 201, by_vin.json()
    assert by_vin.json()["unit"] == unit.serial
    assert by_vin.json()["detected_by"] == admin.user.username
    _audited(admin, "mes.qualityevent", by_vin.json()["id"])

    by_serial = admin.post(
        "/api/v1/quality-events/",
        {"unit": unit.serial, "defect": defect.code, "severity": "minor", "source": "operator"},
    )
    assert by_serial.status_code == 201
    neither = admin.post(
        "/api/v1/quality-events/",
        {"defect": defect.code, "severity": "minor", "source": "operator"},
    )
    assert neither.status_code == 400


def test_quality_event_for_an_unknown_defect_is_422_and_writes_nothing(admin, plant):
    before = _rows()
    response = admin.post(
        "/api/v1/quality-events/",
        {
            "unit": plant["unit"].serial,
            "defect": "nope",
            "severity": "minor",
            "source": "operator",
        },
    )
    assert response.status_code == 422
    assert response.json()["fields"] == {"defect": ["unknown defect code"]}
    assert _rows() == before


def test_paths_work_with_and_without_the_trailing_slash(admin, plant):
    external_id = plant["work_order"].external_id
    assert admin.post(f"/api/v1/work-orders/{external_id}/release/", {}).status_code == 200
    assert admin.get("/api/v1/work-orders").status_code == 200
    assert admin.get(f"/api/v1/work-orders/{external_id}").json()["status"] == (
        WorkOrderStatus.RELEASED
    )


def test_services_keep_their_own_timestamp_when_none_is_given(admin, plant):
    started = timezone.now()
    response = admin.post(f"/api/v1/work-orders/{plant['work_order'].external_id}/release", {})
    released_at = dt.datetime.fromisoformat(response.json()["released_at"])
    assert started <= released_at <= timezone.now()


def test_ids_that_could_not_appear_in_a_url_are_refused(admin, plant):
    response = admin.post(
        "/api/v1/work-orders/",
        {
            "external_id": "4711/10",
            "product": plant["product"].code,
            "line": plant["line"].pk,
            "quantity": 1,
        },
    )
    assert response.status_code == 400
    assert "external_id" in response.json()["fields"]
    unit = admin.post(
        "/api/v1/units/", {"work_order": plant["work_order"].external_id, "serial": "SN 1"}
    )
    assert unit.status_code == 400


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_instants_beyond_the_calendar_are_400(admin, plant, at):
    before = _rows()
    response = admin.post(
        f"/api/v1/units/{plant['unit'].serial}/arrive", {"station": plant["station"].code, "at": at}
    )
    assert response.status_code == 400
    assert "at" in response.json()["fields"]
    assert _rows() == before


def test_leaving_before_arriving_is_a_409_conflict(admin, plant):
    unit, station = plant["unit"], plant["station"]
    services.unit_arrive(unit=unit, station=station, at=T0)
    before = _rows()
    response = admin.post(
        f"/api/v1/units/{unit.serial}/leave",
        {"station": station.code, "at": (T0 - dt.timedelta(seconds=1)).isoformat()},
    )
    assert response.status_code == 409
    assert "leave after it arrived" in response.json()["detail"]
    assert _rows() == before


def test_a_duplicate_external_id_is_a_409_conflict(admin, plant):
    before = _rows()
    response = admin.post(
        "/api/v1/work-orders/",
        {
            "external_id": plant["work_order"].external_id,
            "product": plant["product"].code,
            "line": plant["line"].pk,
            "quantity": 1,
        },
    )
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert _rows() == before


def test_a_body_that_is_not_json_is_refused(admin, plant):
    url = f"/api/v1/work-orders/{plant['work_order'].external_id}/cancel"
    broken = admin.post(url, "{not json", content_type="application/json")
    assert broken.status_code == 400
    assert broken.json()["code"] == "parse_error"
    form = admin.post(url, "reason=x", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415
    assert WorkOrder.objects.get().status == WorkOrderStatus.PLANNED
