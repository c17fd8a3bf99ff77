"""VINs, firmware, counts, downtime, quality events and the append-only audit trail."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction

from mes import services
from mes.audit import audit_context
from mes.demo import demo_vin
from mes.errors import Conflict, InvalidInput, TransitionRefused
from mes.models import AuditEntry, DowntimeEvent, ProductionCount, ScrapReason, validate_vin
from tests.factories import (
    DefectCodeFactory,
    DowntimeReasonFactory,
    StationFactory,
    UnitFactory,
    UserFactory,
    WorkOrderFactory,
)

pytestmark = pytest.mark.django_db
T0 = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("vin", ["1HGBH41JXMN109186", "11111111111111111", demo_vin("1HG", 7)])
def test_valid_vins_pass(vin):
    validate_vin(vin)


@pytest.mark.parametrize(
    ("vin", "problem"),
    [
        ("1HGBH41JXMN100005", "check digit"),  # the original Aegis example: X is not its digit
        ("1HGBH41J1MN10000", "17 characters"),
        ("1HGBH41JIMN109186", "17 characters"),  # I is not allowed
        ("1hgbh41jxmn109186", "17 characters"),
    ],
)
def test_invalid_vins_are_refused_with_the_reason(vin, problem):
    with pytest.raises(ValidationError, match=problem):
        validate_vin(vin)


def test_a_unit_with_a_bad_vin_is_not_created():
    work_order = WorkOrderFactory()
    with pytest.raises(InvalidInput, match="check digit"):
        services.unit_create(work_order=work_order, serial="S-1", vin="1HGBH41JXMN100005")
    assert not work_order.units.exists()


def test_counts_need_a_reason_for_scrap_and_never_overlap():
    station = StationFactory()
    with pytest.raises(InvalidInput) as refused:
        services.counts_report(
            station=station, interval_start=T0, interval_end=T0, good=-1, scrap=2
        )
    assert set(refused.value.fields) == {"interval_end", "good", "scrap_reason"}
    reason = ScrapReason.objects.create(code="DAMAGED", name="Damaged")
    hour = dt.timedelta(hours=1)
    services.counts_report(
        station=station,
        interval_start=T0,
        interval_end=T0 + hour,
        good=55,
        scrap=1,
        scrap_reason=reason,
    )
    with pytest.raises(Conflict, match="already cover"):
        services.counts_report(
            station=station, interval_start=T0 + hour / 2, interval_end=T0 + 2 * hour, good=50
        )
    assert ProductionCount.objects.count() == 1


def test_downtime_opens_without_a_reason_but_closes_only_with_one():
    station = StationFactory()
    downtime = services.downtime_open(station=station, at=T0)
    with pytest.raises(InvalidInput, match="closed with a reason"):
        services.downtime_close(downtime=downtime, at=T0 + dt.timedelta(minutes=7))
    reason = DowntimeReasonFactory()
    closed = services.downtime_close(
        downtime=downtime, at=T0 + dt.timedelta(minutes=7), reason=reason
    )
    assert (closed.ended_at - closed.started_at) == dt.timedelta(minutes=7)
    assert closed.reason == reason
    assert closed.planned is False
    with pytest.raises(TransitionRefused, match="already ended"):
        services.downtime_close(downtime=closed, at=T0 + dt.timedelta(minutes=9))


def test_two_downtimes_at_one_station_cannot_overlap():
    station = StationFactory()
    services.downtime_open(station=station, at=T0)
    with pytest.raises(Conflict, match="overlaps another downtime"):
        services.downtime_open(station=station, at=T0 + dt.timedelta(minutes=1))
    assert DowntimeEvent.objects.count() == 1


def test_a_quality_event_records_who_found_what_where():
    user = UserFactory(role="quality_engineer")
    unit, station = UnitFactory(), StationFactory()
    with audit_context(user=user, source="api"):
        event = services.quality_event_record(
            unit=unit,
            defect=DefectCodeFactory(),
            found_at=T0,
            severity="major",
            source="inspection",
            station=station,
            user=user,
        )
    assert event.detected_by == user
    entry = AuditEntry.objects.get(model="mes.qualityevent")
    assert (entry.actor, entry.actor_name, entry.source) == (user, user.username, "api")
    assert entry.after["defect"] == event.defect_id


def test_the_audit_trail_is_append_only_in_the_database():
    services.downtime_open(station=StationFactory(), at=T0)
    entry = AuditEntry.objects.get()
    with transaction.atomic(), pytest.raises(DatabaseError, match="append-only"):
        AuditEntry.objects.filter(pk=entry.pk).update(actor_name="someone else")
    with transaction.atomic(), pytest.raises(DatabaseError, match="append-only"):
        AuditEntry.objects.filter(pk=entry.pk).delete()
    assert AuditEntry.objects.get().actor_name == "system"


def test_firmware_flashes_are_unique_per_component_and_instant():
    unit = UnitFactory()
    services.firmware_flash(unit=unit, component="EPS", version="v2.1.4", at=T0)
    with pytest.raises(Conflict, match="already flashed"):
        services.firmware_flash(unit=unit, component="EPS", version="v2.1.5", at=T0)
    with transaction.atomic(), pytest.raises(IntegrityError):
        unit.firmware_flashes.create(component="EPS", version="x", flashed_at=T0)


def test_duplicate_serials_and_vins_are_conflicts():
    work_order = WorkOrderFactory()
    services.unit_create(work_order=work_order, serial="S-1", vin=demo_vin("1HG", 1))
    with pytest.raises(Conflict, match="serial exists"):
        services.unit_create(work_order=work_order, serial="S-1")
    with pytest.raises(Conflict, match="VIN exists"):
        services.unit_create(work_order=work_order, serial="S-2", vin=demo_vin("1HG", 1))


def test_an_account_can_be_deleted_and_its_audit_entries_stay():
    user = UserFactory(role="operator")
    with audit_context(user=user, source="api"):
        services.downtime_open(station=StationFactory(), at=T0)
    user_id = user.pk
    user.delete()
    entry = AuditEntry.objects.get()
    assert entry.actor_name == user.username
    assert entry.actor_id == user_id  # kept as a plain id: rows are never rewritten


def test_secrets_are_fingerprinted_in_audit_snapshots():
    from mes.audit import snapshot
    from mes.models import WebhookIntegration

    integration = WebhookIntegration(
        name="legacy", user=UserFactory(), secret="s3cret-value", previous_secret=""
    )
    data = snapshot(integration)
    assert data["secret"].startswith("redacted:")
    assert "s3cret-value" not in str(data)
    assert data["previous_secret"] == ""
