"""Where units were: arrivals and departures, and the database refusing impossible histories."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, transaction

from mes import services
from mes.errors import Conflict, TransitionRefused
from mes.models import AuditEntry, OutboxMessage, StationVisit
from tests.factories import StationFactory, UnitFactory

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def test_the_database_refuses_two_units_at_one_station_at_the_same_time():
    station = StationFactory()
    StationVisit.objects.create(
        unit=UnitFactory(), station=station, arrived_at=minutes(0), left_at=minutes(5)
    )
    with transaction.atomic(), pytest.raises(IntegrityError, match="no_overlap_at_station"):
        StationVisit.objects.create(
            unit=UnitFactory(), station=station, arrived_at=minutes(4), left_at=minutes(8)
        )
    # Touching intervals are fine: one leaves at 5, the next arrives at 5.
    StationVisit.objects.create(
        unit=UnitFactory(), station=station, arrived_at=minutes(5), left_at=minutes(8)
    )


def test_an_open_visit_blocks_every_later_arrival_at_its_station():
    station = StationFactory()
    StationVisit.objects.create(unit=UnitFactory(), station=station, arrived_at=minutes(0))
    with transaction.atomic(), pytest.raises(IntegrityError, match="no_overlap_at_station"):
        StationVisit.objects.create(
            unit=UnitFactory(), station=station, arrived_at=minutes(60), left_at=minutes(61)
        )


def test_the_database_refuses_one_unit_at_two_stations_at_once():
    unit = UnitFactory()
    StationVisit.objects.create(
        unit=unit, station=StationFactory(), arrived_at=minutes(0), left_at=minutes(5)
    )
    with transaction.atomic(), pytest.raises(IntegrityError, match="unit_in_one_place"):
        StationVisit.objects.create(
            unit=unit, station=StationFactory(), arrived_at=minutes(2), left_at=minutes(3)
        )


def test_a_visit_must_leave_after_it_arrived():
    with transaction.atomic(), pytest.raises(IntegrityError, match="leaves_after_arriving"):
        StationVisit.objects.create(
            unit=UnitFactory(), station=StationFactory(), arrived_at=minutes(5), left_at=minutes(5)
        )


def test_arriving_moves_the_unit_and_frees_the_station():
    first, second = StationFactory(), StationFactory()
    unit, next_unit = UnitFactory(), UnitFactory()
    services.unit_arrive(unit=unit, station=first, at=minutes(0))
    services.unit_arrive(unit=unit, station=second, at=minutes(1))
    services.unit_arrive(unit=next_unit, station=first, at=minutes(1))
    services.unit_arrive(unit=next_unit, station=second, at=minutes(2))  # pushes `unit` out

    history = list(
        StationVisit.objects.order_by("arrived_at", "station__code").values_list(
            "unit__serial", "station__code", "arrived_at", "left_at"
        )
    )
    assert history == [
        (unit.serial, first.code, minutes(0), minutes(1)),
        (next_unit.serial, first.code, minutes(1), minutes(2)),
        (unit.serial, second.code, minutes(1), minutes(2)),
        (next_unit.serial, second.code, minutes(2), None),
    ]
    unit.refresh_from_db()
    assert unit.status == "in_progress"


def test_a_repeated_arrival_changes_nothing():
    station, unit = StationFactory(), UnitFactory()
    first = services.unit_arrive(unit=unit, station=station, at=minutes(0))
    messages = OutboxMessage.objects.count()
    again = services.unit_arrive(unit=unit, station=station, at=minutes(1))
    assert again.pk == first.pk
    assert StationVisit.objects.count() == 1
    assert OutboxMessage.objects.count() == messages


def test_a_late_arrival_that_contradicts_the_history_is_a_conflict_and_changes_nothing():
    station = StationFactory()
    services.unit_arrive(unit=UnitFactory(), station=station, at=minutes(0))
    services.unit_leave(unit=StationVisit.objects.get().unit, station=station, at=minutes(10))
    before = (
        StationVisit.objects.count(),
        AuditEntry.objects.count(),
        OutboxMessage.objects.count(),
    )
    with pytest.raises(Conflict, match="another unit was at this station"):
        services.unit_arrive(unit=UnitFactory(), station=station, at=minutes(5))
    after = (
        StationVisit.objects.count(),
        AuditEntry.objects.count(),
        OutboxMessage.objects.count(),
    )
    assert after == before


def test_leaving_a_station_the_unit_is_not_at_is_refused():
    with pytest.raises(TransitionRefused, match="is not at station"):
        services.unit_leave(unit=UnitFactory(), station=StationFactory(), at=minutes(0))


def test_each_visit_change_is_audited_and_queued_for_its_station_in_order():
    station, unit = StationFactory(), UnitFactory()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    services.firmware_flash(unit=unit, component="EPS", version="v2.1.4", at=minutes(1))
    services.unit_leave(unit=unit, station=station, at=minutes(2))
    messages = list(OutboxMessage.objects.filter(station_code=station.code).order_by("id"))
    assert [m.kind for m in messages] == ["visit.started", "firmware.flashed", "visit.ended"]
    assert {m.subject for m in messages} == {f"aegis.mes.state.{station.code}"}
    assert messages[0].payload["unit"] == unit.serial
    assert messages[1].payload["version"] == "v2.1.4"
    actions = list(
        AuditEntry.objects.filter(model__in=["mes.stationvisit", "mes.firmwareflash"])
        .order_by("id")
        .values_list("model", "action")
    )
    assert actions == [
        ("mes.stationvisit", "create"),
        ("mes.firmwareflash", "create"),
        ("mes.stationvisit", "update"),
    ]
