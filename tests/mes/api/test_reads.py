"""Lists and details: filters, as-of queries, pages, nested rows, and a fixed query count."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Group

from mes import services
from mes.models import ScrapReason, Shift, ShiftBreak, StationSignal
from tests.factories import (
    DefectCodeFactory,
    DowntimeReasonFactory,
    RouteOperationFactory,
    StationFactory,
    UnitFactory,
    UserFactory,
    WorkOrderFactory,
)

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2025, 3, 4, 9, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def reader(api_as):
    return api_as("ml_engineer")


@pytest.fixture
def line():
    operation = RouteOperationFactory()
    StationSignal.objects.create(
        station=operation.station, name="torque", unit="N·m", nominal_min=40, nominal_max=48
    )
    return operation.route.line


def _work_order(line, **fields):
    route = line.routes.get()
    return WorkOrderFactory(product=route.product, line=line, **fields)


def _results(response) -> list[dict]:
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def test_work_orders_filter_by_status_line_product_and_due_range(reader, line):
    other_line = RouteOperationFactory().route.line
    due_soon = _work_order(line, due_at=T0 + dt.timedelta(hours=2))
    due_later = _work_order(line, due_at=T0 + dt.timedelta(days=3))
    elsewhere = _work_order(other_line, due_at=T0)
    services.work_order_release(work_order=due_later)

    def ids(**params):
        return {row["external_id"] for row in _results(reader.get("/api/v1/work-orders/", params))}

    assert ids(line=line.pk) == {due_soon.external_id, due_later.external_id}
    assert ids(status="released") == {due_later.external_id}
    assert ids(status=["planned", "released"], line=line.pk) == {
        due_soon.external_id,
        due_later.external_id,
    }
    assert ids(product=other_line.routes.get().product.code) == {elsewhere.external_id}
    assert ids(
        due_after=(T0 + MINUTE).isoformat(), due_before=(T0 + dt.timedelta(days=1)).isoformat()
    ) == {due_soon.external_id}


def test_a_malformed_filter_value_is_400_naming_the_parameter(reader):
    response = reader.get("/api/v1/work-orders/", {"status": "exploded", "line": "L1"})
    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"status", "line"}


def test_work_order_detail_is_found_by_external_id(reader, line):
    work_order = _work_order(line, external_id="SAP.2025/0001".replace("/", "-"))
    response = reader.get(f"/api/v1/work-orders/{work_order.external_id}/")
    assert response.status_code == 200
    assert response.json()["external_id"] == "SAP.2025-0001"
    assert reader.get("/api/v1/work-orders/NOPE/").status_code == 404
    assert reader.get("/api/v1/work-orders/NUL%00/").status_code == 404


def test_units_filter_by_vin_serial_work_order_and_status(reader, line):
    work_order = _work_order(line)
    vehicle = UnitFactory(work_order=work_order, vin="1HGBH41JXMN109186")
    pack = UnitFactory(work_order=_work_order(line))

    def serials(**params):
        return {row["serial"] for row in _results(reader.get("/api/v1/units/", params))}

    assert serials(vin=vehicle.vin) == {vehicle.serial}
    assert serials(serial=pack.serial) == {pack.serial}
    assert serials(work_order=work_order.external_id) == {vehicle.serial}
    assert serials(status="planned") == {vehicle.serial, pack.serial}
    assert serials(status="scrapped") == set()


def test_station_visits_answer_where_a_vin_was_at_an_instant(reader, line):
    first = line.stations.get()
    second = StationFactory(line=line)
    unit = UnitFactory(work_order=_work_order(line), vin="1HGBH41JXMN109186")
    services.unit_arrive(unit=unit, station=first, at=T0)
    services.unit_arrive(unit=unit, station=second, at=T0 + 2 * MINUTE)  # leaves `first` then

    def stations_at(at, **params):
        rows = _results(reader.get("/api/v1/station-visits/", {"at": at.isoformat(), **params}))
        return [row["station"] for row in rows]

    assert stations_at(T0 - MINUTE, vin=unit.vin) == []
    assert stations_at(T0, vin=unit.vin) == [first.code]
    assert stations_at(T0 + MINUTE, vin=unit.vin) == [first.code]
    assert stations_at(T0 + 2 * MINUTE, vin=unit.vin) == [second.code]  # [arrived, left)
    assert stations_at(T0 + dt.timedelta(days=1), station=second.code) == [second.code]
    assert stations_at(T0 + dt.timedelta(days=1), station=first.code) == []

    visits = _results(reader.get("/api/v1/station-visits/", {"unit": unit.serial, "open": "true"}))
    assert [(v["station"], v["vin"], v["left_at"]) for v in visits] == [
        (second.code, unit.vin, None)
    ]
    arrived = _results(
        reader.get("/api/v1/station-visits/", {"arrived_before": (T0 + MINUTE).isoformat()})
    )
    assert [v["station"] for v in arrived] == [first.code]


def test_quality_events_filter_by_defect_severity_vin_and_time(reader, line):
    unit = UnitFactory(work_order=_work_order(line), vin="1HGBH41JXMN109186")
    other = UnitFactory(work_order=unit.work_order)
    steering = DefectCodeFactory(code="steering")
    leak = DefectCodeFactory(code="leak", name="Leak")
    services.quality_event_record(
        unit=unit, defect=steering, severity="major", source="inspection", found_at=T0
    )
    services.quality_event_record(
        unit=other, defect=leak, severity="minor", source="test_rig", found_at=T0 + MINUTE
    )

    def defects(**params):
        return [row["defect"] for row in _results(reader.get("/api/v1/quality-events/", params))]

    assert defects(vin=unit.vin) == ["steering"]
    assert defects(defect="leak") == ["leak"]
    assert defects(severity=["major", "critical"]) == ["steering"]
    assert defects(found_after=(T0 + MINUTE).isoformat()) == ["leak"]
    assert defects() == ["leak", "steering"]  # newest first


def test_stations_carry_their_signals_and_routes_their_operations(reader, line):
    station = line.stations.get()
    detail = reader.get(f"/api/v1/stations/{station.code}/").json()
    assert detail["signals"] == [
        {"name": "torque", "unit": "N·m", "nominal_min": 40.0, "nominal_max": 48.0}
    ]
    routes = _results(reader.get("/api/v1/routes/", {"line": line.pk}))
    assert [op["station"] for op in routes[0]["operations"]] == [station.code]
    assert routes[0]["ideal_cycle_time_s"] == "60.00"


def test_shifts_carry_their_breaks_and_answer_which_shift_ran_at_an_instant(reader, line):
    shift = Shift.objects.create(
        line=line, name="Early", business_date=T0.date(), starts_at=T0, ends_at=T0 + 8 * 60 * MINUTE
    )
    ShiftBreak.objects.create(
        shift=shift, name="Lunch", starts_at=T0 + 4 * 60 * MINUTE, ends_at=T0 + 270 * MINUTE
    )
    rows = _results(reader.get("/api/v1/shifts/", {"at": (T0 + MINUTE).isoformat()}))
    assert [(r["name"], [b["name"] for b in r["breaks"]]) for r in rows] == [("Early", ["Lunch"])]
    assert _results(reader.get("/api/v1/shifts/", {"at": (T0 - MINUTE).isoformat()})) == []


def test_downtime_reference_lists_and_open_downtimes(reader, line):
    reason = DowntimeReasonFactory()
    ScrapReason.objects.create(code="DAMAGED", name="Damaged part")
    station = line.stations.get()
    services.downtime_open(station=station, at=T0, reason=reason)
    assert [r["code"] for r in _results(reader.get("/api/v1/downtime-reasons/"))] == [reason.code]
    assert [r["code"] for r in _results(reader.get("/api/v1/scrap-reasons/"))] == ["DAMAGED"]
    open_ = _results(reader.get("/api/v1/downtime-events/", {"open": "true"}))
    assert [(d["station"], d["reason"]) for d in open_] == [(station.code, reason.code)]
    assert reader.get(f"/api/v1/downtime-reasons/{reason.code}/").json()["name"] == reason.name


def test_audit_entries_are_read_by_admins_filtered_by_model(api_as, line):
    _work_order(line)
    services.work_order_release(work_order=_work_order(line))
    rows = _results(api_as("admin").get("/api/v1/audit-entries/", {"model": "mes.workorder"}))
    assert [row["action"] for row in rows] == ["update"]  # factories write no audit entry
    assert rows[0]["after"]["status"] == "released"


def test_pages_have_a_limit_capped_at_1000_and_links(reader, line):
    for _ in range(3):
        _work_order(line)
    page = reader.get("/api/v1/work-orders/", {"limit": 2}).json()
    assert page["count"] == 3
    assert len(page["results"]) == 2
    assert "offset=2" in page["next"]
    last = reader.get(page["next"]).json()
    assert len(last["results"]) == 1
    assert last["next"] is None
    huge = reader.get("/api/v1/work-orders/", {"limit": 10**9, "offset": 10**30}).json()
    assert (huge["count"], huge["results"]) == (3, [])


# -- query counts ------------------------------------------------------------------------------

# Per request with a bearer token: the token and its user (1), the user's permissions and
# its groups' permissions (2), the page's count (1) and rows (1), then one per prefetch.
AUTH_AND_PERMISSIONS = 3


def _plant_rows(line, n: int) -> None:
    work_order = _work_order(line)
    for i in range(n):
        unit = UnitFactory(work_order=work_order)
        WorkOrderFactory(product=work_order.product, line=line)
        station = RouteOperationFactory(route__line=line, route__product__code=f"PX{i}").station
        StationSignal.objects.create(station=station, name="torque", unit="N·m")
        services.unit_arrive(unit=unit, station=station, at=T0 + i * MINUTE)
        services.quality_event_record(
            unit=unit, defect=DefectCodeFactory(), severity="minor", source="operator"
        )
        Group.objects.get(name="operator").user_set.add(UserFactory())


LIST_QUERIES = {
    "/api/v1/work-orders/": 2,
    "/api/v1/units/": 2,
    "/api/v1/station-visits/": 2,
    "/api/v1/stations/": 3,  # + signals
    "/api/v1/routes/": 3,  # + operations with their stations
    "/api/v1/quality-events/": 2,
    "/api/v1/audit-entries/": 2,
    "/api/v1/users/": 3,  # + roles
}


@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("url", LIST_QUERIES)
def test_list_query_count_does_not_grow_with_the_page(
    api_as, line, django_assert_num_queries, url, rows
):
    _plant_rows(line, rows)
    admin = api_as("admin")
    admin.get(url)  # the first use of a token records last_used_at
    with django_assert_num_queries(AUTH_AND_PERMISSIONS + LIST_QUERIES[url]):
        response = admin.get(url)
    assert response.status_code == 200
    assert response.json()["count"] >= rows


def test_time_filters_take_any_iso_offset_and_refuse_instants_out_of_range(reader, line):
    station = line.stations.get()
    unit = UnitFactory(work_order=_work_order(line))
    services.unit_arrive(unit=unit, station=station, at=T0)
    # 09:00 UTC is 02:28 the next day at +17:28: legal ISO 8601, refused by PostgreSQL as is.
    rows = _results(reader.get("/api/v1/station-visits/", {"at": "2025-03-05T02:28:00+17:28"}))
    assert [row["unit"] for row in rows] == [unit.serial]
    naive_is_utc = _results(reader.get("/api/v1/station-visits/", {"at": "2025-03-04T08:59:59"}))
    assert naive_is_utc == []
    too_early = reader.get(
        "/api/v1/station-visits/", {"arrived_after": "0001-01-01T00:00:00+01:00"}
    )
    assert too_early.status_code == 400
    assert "arrived" in str(too_early.json()["fields"])
