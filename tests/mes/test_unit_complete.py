"""A unit completes once it has left the last station of its route: audited, announced on its
station's MES state subject, refused (and nothing written) whenever the history says otherwise."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from mes import services
from mes.errors import Conflict, InvalidInput, TransitionRefused
from mes.models import AuditEntry, OutboxMessage, StationVisit, Unit, UnitStatus
from tests.factories import StationFactory, UnitFactory, UserFactory

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def _written() -> tuple[int, int, int]:
    return AuditEntry.objects.count(), OutboxMessage.objects.count(), StationVisit.objects.count()


@pytest.fixture
def line_end():
    """A unit that went through two stations of its line and left the last one at minute 9."""
    first = StationFactory()
    last = StationFactory(line=first.line)
    unit = UnitFactory(vin="1HGBH41JXMN109186", work_order__line=first.line)
    services.unit_arrive(unit=unit, station=first, at=minutes(0))
    services.unit_arrive(unit=unit, station=last, at=minutes(5))
    services.unit_leave(unit=unit, station=last, at=minutes(9))
    return unit, last


def test_a_unit_that_left_its_last_station_completes_audited_and_announced_there(line_end):
    unit, last = line_end

    completed = services.unit_complete(unit=unit, at=minutes(9))  # the instant it left

    assert completed.status == unit.status == UnitStatus.COMPLETED
    assert Unit.objects.get(pk=unit.pk).status == UnitStatus.COMPLETED
    entry = AuditEntry.objects.filter(model="mes.unit", object_id=str(unit.pk)).latest("id")
    assert entry.action == "update"
    assert (entry.before["status"], entry.after["status"]) == ("in_progress", "completed")
    message = OutboxMessage.objects.latest("id")
    assert (message.kind, message.subject) == ("unit.completed", f"aegis.mes.state.{last.code}")
    assert message.payload == {
        "kind": "unit.completed",
        "station": last.code,
        "unit": unit.serial,
        "unit_id": unit.pk,
        "vin": "1HGBH41JXMN109186",
        "work_order": unit.work_order.external_id,
        "work_order_id": unit.work_order_id,
        "work_order_status": unit.work_order.status,
        "product": unit.work_order.product.code,
        "product_id": unit.work_order.product_id,
        "status": "completed",
        "at": minutes(9).isoformat(),
    }
    assert OutboxMessage.objects.filter(kind="unit.completed").count() == 1


def test_a_unit_still_at_a_station_is_refused_and_nothing_is_written():
    station, unit = StationFactory(), UnitFactory()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    before = _written()

    with pytest.raises(TransitionRefused, match=f"is at station {station.code}"):
        services.unit_complete(unit=unit, at=minutes(3))

    assert _written() == before
    assert Unit.objects.get(pk=unit.pk).status == UnitStatus.IN_PROGRESS


def test_a_planned_unit_that_was_never_at_a_station_is_refused():
    unit = UnitFactory()
    before = _written()

    with pytest.raises(TransitionRefused, match="planned") as refused:
        services.unit_complete(unit=unit, at=minutes(0))

    assert refused.value.status == 409
    assert refused.value.fields == {"status": ["planned"]}
    assert _written() == before


@pytest.mark.parametrize("status", [UnitStatus.COMPLETED, UnitStatus.SCRAPPED])
def test_a_completed_or_scrapped_unit_is_refused(line_end, status):
    unit, _last = line_end
    Unit.objects.filter(pk=unit.pk).update(status=status)
    before = _written()

    with pytest.raises(TransitionRefused, match=f"is {status}"):
        services.unit_complete(unit=unit, at=minutes(10))

    assert _written() == before


def test_completing_twice_is_refused_the_second_time(line_end):
    unit, _last = line_end
    services.unit_complete(unit=unit, at=minutes(10))
    before = _written()

    with pytest.raises(TransitionRefused, match="completed already"):
        services.unit_complete(unit=unit, at=minutes(11))

    assert _written() == before


def test_a_completion_before_the_unit_left_its_last_station_is_a_conflict(line_end):
    unit, last = line_end
    before = _written()

    with pytest.raises(Conflict, match=f"left station {last.code}") as conflict:
        services.unit_complete(unit=unit, at=minutes(8))

    assert conflict.value.fields == {"at": [f"before the unit left {last.code}"]}
    assert _written() == before
    assert Unit.objects.get(pk=unit.pk).status == UnitStatus.IN_PROGRESS


def test_a_completion_without_a_time_zone_is_refused(line_end):
    unit, _last = line_end
    with pytest.raises(InvalidInput, match="time zone"):
        services.unit_complete(unit=unit, at=dt.datetime(2026, 5, 4, 9, 30))


def test_a_completed_unit_arrives_nowhere_any_more(line_end):
    unit, last = line_end
    services.unit_complete(unit=unit, at=minutes(10))
    fresh = Unit.objects.get(pk=unit.pk)

    with pytest.raises(TransitionRefused, match="completed"):
        services.unit_arrive(unit=fresh, station=last, at=minutes(12))


def test_a_unit_in_progress_without_any_visit_tells_its_whole_line():
    station = StationFactory()
    other = StationFactory(line=station.line)
    unit = UnitFactory(work_order__line=station.line, status=UnitStatus.IN_PROGRESS)

    services.unit_complete(unit=unit, at=minutes(0))

    subjects = set(OutboxMessage.objects.filter(kind="unit.completed").values_list("subject"))
    assert subjects == {(f"aegis.mes.state.{code}",) for code in (station.code, other.code)}


# -- the REST operation ------------------------------------------------------------------------


def _client(role: str | None) -> APIClient:
    client = APIClient()
    user = UserFactory(role=role)
    client.force_authenticate(user)
    client.user = user
    return client


def test_an_operator_completes_a_unit_over_the_api(line_end):
    unit, _last = line_end
    operator = _client("operator")

    response = operator.post(
        f"/api/v1/units/{unit.serial}/complete", {"at": "2026-05-04T11:10:00+02:00"}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert (response.json()["serial"], response.json()["status"]) == (unit.serial, "completed")
    entry = AuditEntry.objects.filter(model="mes.unit", object_id=str(unit.pk)).latest("id")
    assert (entry.source, entry.actor_id) == ("api", operator.user.pk)
    assert OutboxMessage.objects.latest("id").payload["at"] == "2026-05-04T09:10:00+00:00"


def test_the_api_answers_409_for_a_unit_at_a_station_and_writes_nothing():
    station, unit = StationFactory(), UnitFactory()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    before = _written()

    response = _client("operator").post(f"/api/v1/units/{unit.serial}/complete", {}, format="json")

    assert response.status_code == 409
    assert response.json()["code"] == "transition_refused"
    assert response.json()["fields"] == {"station": [f"open visit at {station.code}"]}
    assert _written() == before


def test_the_api_refuses_roles_that_do_not_record_the_floor_and_unknown_units(line_end):
    unit, _last = line_end
    url = f"/api/v1/units/{unit.serial}/complete"

    assert _client("ml_engineer").post(url, {}, format="json").status_code == 403
    assert _client("quality_engineer").post(url, {}, format="json").status_code == 403
    assert APIClient().post(url, {}, format="json").status_code == 401
    missing = _client("operator").post("/api/v1/units/NO-SUCH-UNIT/complete", {}, format="json")
    assert missing.status_code == 404
    assert Unit.objects.get(pk=unit.pk).status == UnitStatus.IN_PROGRESS


# -- concurrency --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_of_two_concurrent_completions_exactly_one_wins():
    station, unit = StationFactory(), UnitFactory()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    services.unit_leave(unit=unit, station=station, at=minutes(1))
    first_done, outcome = threading.Event(), {}

    def second_completion() -> None:
        try:
            first_done.wait(10)
            services.unit_complete(unit=Unit.objects.get(pk=unit.pk), at=minutes(3))
            outcome["second"] = "completed"
        except TransitionRefused as error:
            outcome["second"] = error.detail
        finally:
            connection.close()

    # The first completion holds its transaction open while the second one reads the unit:
    # the row lock makes the second wait, then see the first one's result.
    with transaction.atomic():
        services.unit_complete(unit=unit, at=minutes(2))
        other = threading.Thread(target=second_completion)
        other.start()
        first_done.set()
        time.sleep(0.5)
    other.join(10)

    assert "completed already" in outcome["second"]
    assert OutboxMessage.objects.filter(kind="unit.completed").count() == 1
    assert AuditEntry.objects.filter(model="mes.unit", action="update").count() == 1
