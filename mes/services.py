"""Writes of the MES. Each is one transaction: the change, its audit entry and its outbox
message commit together. Entry points (API, webhook, admin actions, commands) call these."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from mes.audit import audit_record, snapshot
from mes.errors import Conflict, InvalidInput, TransitionRefused
from mes.models import (
    AuditAction,
    DefectCode,
    DowntimeEvent,
    DowntimeReason,
    FirmwareFlash,
    Line,
    Product,
    ProductionCount,
    QualityEvent,
    ScrapReason,
    Shift,
    ShiftBreak,
    ShiftPattern,
    Station,
    StationVisit,
    Unit,
    UnitStatus,
    WorkOrder,
    WorkOrderStatus,
    validate_vin,
)
from mes.outbox import outbox_enqueue

# -- helpers --------------------------------------------------------------------------------


@contextmanager
def _constraints_as_conflicts(what: str) -> Iterator[None]:
    """Database constraints are the last word: a violation becomes a Conflict saying why."""
    try:
        with transaction.atomic():
            yield
    except IntegrityError as error:
        constraint = getattr(getattr(error.__cause__, "diag", None), "constraint_name", None)
        raise Conflict(
            f"{what}: {CONSTRAINT_MESSAGES.get(constraint, 'refused by the database')}",
            fields={"constraint": [constraint or "unknown"]},
        ) from error


CONSTRAINT_MESSAGES = {
    "mes_visit_no_overlap_at_station": "another unit was at this station during that time",
    "mes_visit_unit_in_one_place": "the unit was at another station during that time",
    "mes_visit_leaves_after_arriving": "a unit must leave after it arrived",
    "mes_shift_no_overlap_on_line": "it overlaps another shift on this line",
    "mes_downtime_no_overlap_at_station": "it overlaps another downtime at this station",
    "mes_count_no_overlap_at_station": "counts for this station already cover that interval",
    "mes_count_scrap_has_reason": "scrap needs a scrap reason",
    "mes_flash_unique_instant": "this component was already flashed at that instant",
    "mes_workorder_external_id_key": "a work order with this external id exists",
    "mes_unit_serial_key": "a unit with this serial exists",
    "mes_unit_vin_key": "a unit with this VIN exists",
    "mes_wo_started_after_release": "a work order cannot start before it was released",
    "mes_wo_completed_after_start": "a work order cannot complete before it started",
    "mes_downtime_ends_after_start": "a downtime must end after it started",
}


def _now(at: dt.datetime | None) -> dt.datetime:
    if at is None:
        return timezone.now()
    if timezone.is_naive(at):
        raise InvalidInput("timestamps must carry a time zone", fields={"at": ["naive datetime"]})
    return at


def _state_for(unit: Unit) -> dict:
    work_order = unit.work_order
    return {
        "unit": unit.serial,
        "unit_id": unit.pk,
        "vin": unit.vin,
        "work_order": work_order.external_id,
        "work_order_id": work_order.pk,
        "work_order_status": work_order.status,
        "product": work_order.product.code,
        "product_id": work_order.product_id,
    }


# -- work orders ----------------------------------------------------------------------------


@transaction.atomic
def work_order_create(
    *,
    external_id: str,
    product: Product,
    line: Line,
    quantity: int,
    due_at: dt.datetime | None = None,
) -> WorkOrder:
    if quantity < 1:
        raise InvalidInput("quantity must be at least 1", fields={"quantity": ["must be ≥ 1"]})
    if not product.routes.filter(line=line).exists():
        raise InvalidInput(
            f"product {product.code} has no route on line {line.code}",
            fields={"line": [f"no route for {product.code}"]},
        )
    with _constraints_as_conflicts("work order not created"):
        work_order = WorkOrder.objects.create(
            external_id=external_id, product=product, line=line, quantity=quantity, due_at=due_at
        )
    audit_record(action=AuditAction.CREATE, instance=work_order)
    return work_order


# status → (statuses it may be reached from, timestamp field it sets)
WORK_ORDER_TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    WorkOrderStatus.RELEASED: ((WorkOrderStatus.PLANNED,), "released_at"),
    WorkOrderStatus.IN_PROGRESS: ((WorkOrderStatus.RELEASED,), "started_at"),
    WorkOrderStatus.COMPLETED: ((WorkOrderStatus.IN_PROGRESS,), "completed_at"),
    WorkOrderStatus.CANCELLED: (
        (WorkOrderStatus.PLANNED, WorkOrderStatus.RELEASED, WorkOrderStatus.IN_PROGRESS),
        "cancelled_at",
    ),
}


def _work_order_transition(
    work_order: WorkOrder, target: str, at: dt.datetime | None, **extra
) -> WorkOrder:
    allowed_from, stamp = WORK_ORDER_TRANSITIONS[target]
    at = _now(at)
    with transaction.atomic():
        before = snapshot(work_order)
        # Conditional update: of two concurrent transitions exactly one wins.
        with _constraints_as_conflicts(f"work order {work_order.external_id} not {target}"):
            changed = WorkOrder.objects.filter(pk=work_order.pk, status__in=allowed_from).update(
                status=target, updated_at=timezone.now(), **{stamp: at}, **extra
            )
        work_order.refresh_from_db()
        if not changed:
            raise TransitionRefused(
                f"work order {work_order.external_id} is {work_order.status}; "
                f"it can become {target} only from {' or '.join(allowed_from)}",
                fields={"status": [work_order.status]},
            )
        audit_record(action=AuditAction.UPDATE, instance=work_order, before=before)
        for station in work_order.line.stations.all():
            outbox_enqueue(
                station=station,
                kind="work_order.status",
                payload={
                    "work_order": work_order.external_id,
                    "product": work_order.product.code,
                    "status": target,
                    "at": at.isoformat(),
                },
            )
    return work_order


def work_order_release(*, work_order: WorkOrder, at: dt.datetime | None = None) -> WorkOrder:
    return _work_order_transition(work_order, WorkOrderStatus.RELEASED, at)


def work_order_start(*, work_order: WorkOrder, at: dt.datetime | None = None) -> WorkOrder:
    return _work_order_transition(work_order, WorkOrderStatus.IN_PROGRESS, at)


def work_order_complete(*, work_order: WorkOrder, at: dt.datetime | None = None) -> WorkOrder:
    return _work_order_transition(work_order, WorkOrderStatus.COMPLETED, at)


def work_order_cancel(
    *, work_order: WorkOrder, reason: str, at: dt.datetime | None = None
) -> WorkOrder:
    if not reason.strip():
        raise InvalidInput("say why the work order is cancelled", fields={"reason": ["required"]})
    return _work_order_transition(
        work_order, WorkOrderStatus.CANCELLED, at, cancel_reason=reason.strip()[:200]
    )


# -- units and where they are -----------------------------------------------------------------


@transaction.atomic
def unit_create(*, work_order: WorkOrder, serial: str, vin: str | None = None) -> Unit:
    if vin:
        try:
            validate_vin(vin)
        except ValidationError as error:
            raise InvalidInput(error.messages[0], fields={"vin": error.messages}) from None
    if work_order.status in (WorkOrderStatus.COMPLETED, WorkOrderStatus.CANCELLED):
        raise TransitionRefused(
            f"work order {work_order.external_id} is {work_order.status}: no new units",
            fields={"work_order": [work_order.status]},
        )
    with _constraints_as_conflicts("unit not created"):
        unit = Unit.objects.create(work_order=work_order, serial=serial, vin=vin or None)
    audit_record(action=AuditAction.CREATE, instance=unit)
    return unit


def _close_visit(visit: StationVisit, at: dt.datetime) -> StationVisit:
    before = snapshot(visit)
    visit.left_at = at
    with _constraints_as_conflicts(f"{visit.unit} cannot leave {visit.station.code} then"):
        visit.save(update_fields=["left_at"])
    audit_record(action=AuditAction.UPDATE, instance=visit, before=before)
    outbox_enqueue(
        station=visit.station,
        kind="visit.ended",
        payload={**_state_for(visit.unit), "visit": visit.pk, "at": at.isoformat()},
    )
    return visit


@transaction.atomic
def unit_arrive(*, unit: Unit, station: Station, at: dt.datetime | None = None) -> StationVisit:
    """The unit is at the station from `at`. Whatever it and the station were doing before
    ends then: the unit's open visit elsewhere, and another unit's open visit here."""
    at = _now(at)
    # Read under the unit's row lock: an arrival racing `unit_complete` sees its outcome.
    unit.status = Unit.objects.select_for_update().values_list("status", flat=True).get(pk=unit.pk)
    if unit.status in (UnitStatus.COMPLETED, UnitStatus.SCRAPPED):
        raise TransitionRefused(f"unit {unit} is {unit.status}", fields={"unit": [unit.status]})
    # Two equality lookups, not one OR with joins: each reaches its index whatever the
    # statistics say (with a table analysed while empty, the joined OR was planned as full
    # scans, about a second per arrival on a day of visits).
    open_visits = StationVisit.objects.select_for_update().filter(
        left_at__isnull=True, arrived_at__lt=at
    )
    ended = [*open_visits.filter(unit=unit), *open_visits.filter(station=station)]
    for visit in {visit.pk: visit for visit in ended}.values():
        if visit.unit_id == unit.pk and visit.station_id == station.pk:
            return visit  # already here: a repeated arrival changes nothing
        _close_visit(visit, at)
    with _constraints_as_conflicts(f"{unit} cannot arrive at {station.code} then"):
        visit = StationVisit.objects.create(unit=unit, station=station, arrived_at=at)
    audit_record(action=AuditAction.CREATE, instance=visit)
    if unit.status == UnitStatus.PLANNED:
        Unit.objects.filter(pk=unit.pk).update(status=UnitStatus.IN_PROGRESS)
        unit.status = UnitStatus.IN_PROGRESS
    outbox_enqueue(
        station=station,
        kind="visit.started",
        payload={**_state_for(unit), "visit": visit.pk, "at": at.isoformat()},
    )
    return visit


@transaction.atomic
def unit_leave(*, unit: Unit, station: Station, at: dt.datetime | None = None) -> StationVisit:
    at = _now(at)
    visit = (
        StationVisit.objects.select_for_update()
        .select_related("unit__work_order__product", "station")
        .filter(unit=unit, station=station, left_at__isnull=True)
        .first()
    )
    if visit is None:
        raise TransitionRefused(
            f"unit {unit} is not at station {station.code}", fields={"station": ["no open visit"]}
        )
    return _close_visit(visit, at)


@transaction.atomic
def unit_complete(*, unit: Unit, at: dt.datetime | None = None) -> Unit:
    """The unit is finished: it left the last station of its route at or before `at`.

    Only a unit in progress completes (a planned one was never at a station), never while it is
    at a station (it leaves first), and not before it left the station it was at last. A
    completed unit arrives nowhere any more (`unit_arrive` refuses it)."""
    at = _now(at)
    # Locked: of two concurrent completions exactly one wins, the other is refused.
    current = Unit.objects.select_for_update().select_related("work_order__product").get(pk=unit.pk)
    if current.status != UnitStatus.IN_PROGRESS:
        state = {
            UnitStatus.PLANNED: "planned: it has not been at any station",
            UnitStatus.COMPLETED: "completed already",
        }.get(current.status, current.status)
        raise TransitionRefused(
            f"unit {current} is {state}; only a unit in progress completes",
            fields={"status": [current.status]},
        )
    last_visit = (
        StationVisit.objects.filter(unit=current)
        .select_related("station")
        .order_by("-arrived_at")
        .first()
    )
    if last_visit is not None and last_visit.left_at is None:
        raise TransitionRefused(
            f"unit {current} is at station {last_visit.station.code}: it leaves it first",
            fields={"station": [f"open visit at {last_visit.station.code}"]},
        )
    if last_visit is not None and last_visit.left_at > at:
        raise Conflict(
            f"unit {current} left station {last_visit.station.code} at "
            f"{last_visit.left_at.isoformat()}, after {at.isoformat()}",
            fields={"at": [f"before the unit left {last_visit.station.code}"]},
        )
    before = snapshot(current)
    current.status = UnitStatus.COMPLETED
    current.save(update_fields=["status", "updated_at"])
    unit.status, unit.updated_at = current.status, current.updated_at
    audit_record(action=AuditAction.UPDATE, instance=current, before=before)
    # The station it left last saw it finish. Without any recorded visit (its status was set
    # outside these services) the whole line is told, as for a flash at no station.
    if last_visit is not None:
        targets = [last_visit.station]
    else:
        targets = list(current.work_order.line.stations.all())
    for station in targets:
        outbox_enqueue(
            station=station,
            kind="unit.completed",
            payload={**_state_for(current), "status": current.status, "at": at.isoformat()},
        )
    return current


@transaction.atomic
def firmware_flash(
    *,
    unit: Unit,
    component: str,
    version: str,
    at: dt.datetime | None = None,
    station: Station | None = None,
) -> FirmwareFlash:
    at = _now(at)
    if not component.strip() or not version.strip():
        raise InvalidInput(
            "component and version are required",
            fields={
                k: ["required"]
                for k, v in (("component", component), ("version", version))
                if not v.strip()
            },
        )
    with _constraints_as_conflicts("firmware flash not recorded"):
        flash = FirmwareFlash.objects.create(
            unit=unit,
            station=station,
            component=component.strip(),
            version=version.strip(),
            flashed_at=at,
        )
    audit_record(action=AuditAction.CREATE, instance=flash)
    where = station or _station_of(unit, at)
    # A unit at no station still carries this firmware to its next station: tell the line.
    targets = [where] if where is not None else list(unit.work_order.line.stations.all())
    for target in targets:
        outbox_enqueue(
            station=target,
            kind="firmware.flashed",
            payload={
                **_state_for(unit),
                "component": flash.component,
                "version": flash.version,
                "at": at.isoformat(),
            },
        )
    return flash


def _station_of(unit: Unit, at: dt.datetime) -> Station | None:
    visit = (
        StationVisit.objects.filter(unit=unit, arrived_at__lte=at)
        .filter(Q(left_at__isnull=True) | Q(left_at__gt=at))
        .select_related("station")
        .first()
    )
    return visit.station if visit else None


# -- counts, downtime, quality ----------------------------------------------------------------


@transaction.atomic
def counts_report(
    *,
    station: Station,
    interval_start: dt.datetime,
    interval_end: dt.datetime,
    good: int,
    scrap: int = 0,
    scrap_reason: ScrapReason | None = None,
    work_order: WorkOrder | None = None,
) -> ProductionCount:
    errors = {}
    if interval_end <= interval_start:
        errors["interval_end"] = ["must be after interval_start"]
    if good < 0:
        errors["good"] = ["must be ≥ 0"]
    if scrap < 0:
        errors["scrap"] = ["must be ≥ 0"]
    if scrap and scrap_reason is None:
        errors["scrap_reason"] = ["required when scrap > 0"]
    if errors:
        raise InvalidInput("counts refused", fields=errors)
    with _constraints_as_conflicts("counts not recorded"):
        count = ProductionCount.objects.create(
            station=station,
            work_order=work_order,
            interval_start=_now(interval_start),
            interval_end=_now(interval_end),
            good=good,
            scrap=scrap,
            scrap_reason=scrap_reason,
        )
    audit_record(action=AuditAction.CREATE, instance=count)
    return count


@transaction.atomic
def downtime_open(
    *,
    station: Station,
    at: dt.datetime | None = None,
    reason: DowntimeReason | None = None,
    planned: bool | None = None,
    comment: str = "",
    user=None,
) -> DowntimeEvent:
    at = _now(at)
    if planned is None:
        planned = bool(reason and reason.planned)
    with _constraints_as_conflicts(f"downtime at {station.code} not opened"):
        downtime = DowntimeEvent.objects.create(
            station=station,
            started_at=at,
            reason=reason,
            planned=planned,
            comment=comment,
            reported_by=user if getattr(user, "is_authenticated", False) else None,
        )
    audit_record(action=AuditAction.CREATE, instance=downtime)
    outbox_enqueue(
        station=station,
        kind="downtime.started",
        payload={
            "downtime": downtime.pk,
            "reason": reason.code if reason else None,
            "planned": planned,
            "at": at.isoformat(),
        },
    )
    return downtime


@transaction.atomic
def downtime_close(
    *,
    downtime: DowntimeEvent,
    at: dt.datetime | None = None,
    reason: DowntimeReason | None = None,
) -> DowntimeEvent:
    at = _now(at)
    downtime = DowntimeEvent.objects.select_for_update().get(pk=downtime.pk)
    if downtime.ended_at is not None:
        raise TransitionRefused(
            f"downtime {downtime.pk} already ended at {downtime.ended_at.isoformat()}",
            fields={"ended_at": ["already set"]},
        )
    reason = reason or downtime.reason
    if reason is None:
        raise InvalidInput(
            "a downtime is closed with a reason", fields={"reason": ["required to close"]}
        )
    before = snapshot(downtime)
    downtime.ended_at = at
    downtime.reason = reason
    if before["reason"] is None:
        downtime.planned = reason.planned
    with _constraints_as_conflicts(f"downtime {downtime.pk} not closed"):
        downtime.save(update_fields=["ended_at", "reason", "planned", "updated_at"])
    audit_record(action=AuditAction.UPDATE, instance=downtime, before=before)
    outbox_enqueue(
        station=downtime.station,
        kind="downtime.ended",
        payload={"downtime": downtime.pk, "reason": reason.code, "at": at.isoformat()},
    )
    return downtime


@transaction.atomic
def quality_event_record(
    *,
    unit: Unit,
    defect: DefectCode,
    found_at: dt.datetime | None = None,
    severity: str,
    source: str,
    station: Station | None = None,
    user=None,
    description: str = "",
) -> QualityEvent:
    event = QualityEvent.objects.create(
        unit=unit,
        defect=defect,
        station=station,
        found_at=_now(found_at),
        severity=severity,
        source=source,
        detected_by=user if getattr(user, "is_authenticated", False) else None,
        description=description,
    )
    audit_record(action=AuditAction.CREATE, instance=event)
    return event


# -- shifts ---------------------------------------------------------------------------------


def _local(date: dt.date, time: dt.time, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """A local wall-clock time as an absolute instant. In the hour the clocks skip, the time
    does not exist and moves forward; in the hour they repeat, the first one counts."""
    naive = dt.datetime.combine(date, time)
    instant = naive.replace(tzinfo=zone, fold=0)
    round_trip = instant.astimezone(dt.UTC).astimezone(zone)
    if round_trip.replace(tzinfo=None) != naive:  # a skipped wall-clock time
        instant = naive.replace(tzinfo=zone, fold=1)
    return instant.astimezone(dt.UTC)


@transaction.atomic
def shifts_generate(*, pattern: ShiftPattern, first_day: dt.date, last_day: dt.date) -> list[Shift]:
    """The pattern's shifts for each local day in [first_day, last_day], idempotently.

    Start and end are local wall-clock times converted per day, so a night shift across the
    spring DST change lasts 7 hours and across the autumn change 9 hours, as it does on the
    floor. Breaks become ShiftBreak rows (planned stops).
    """
    if last_day < first_day:
        raise InvalidInput("last_day is before first_day", fields={"last_day": ["too early"]})
    zone = zoneinfo.ZoneInfo(pattern.line.area.site.timezone)
    created = []
    day = first_day
    while day <= last_day:
        for template in pattern.templates.all():
            if str(day.isoweekday()) not in template.weekdays:
                continue
            end_day = day + dt.timedelta(days=1) if template.ends <= template.starts else day
            starts_at = _local(day, template.starts, zone)
            ends_at = _local(end_day, template.ends, zone)
            if Shift.objects.filter(
                line=pattern.line, template=template, business_date=day
            ).exists():
                continue
            with _constraints_as_conflicts(f"shift {template.name} on {day} not created"):
                shift = Shift.objects.create(
                    line=pattern.line,
                    template=template,
                    name=template.name,
                    business_date=day,
                    starts_at=starts_at,
                    ends_at=ends_at,
                )
            for planned_stop in template.breaks:
                start_time = dt.time.fromisoformat(planned_stop["starts"])
                break_day = day if start_time >= template.starts else end_day
                break_start = _local(break_day, start_time, zone)
                ShiftBreak.objects.create(
                    shift=shift,
                    name=planned_stop.get("name", "Break"),
                    starts_at=break_start,
                    ends_at=break_start + dt.timedelta(minutes=int(planned_stop["minutes"])),
                )
            audit_record(action=AuditAction.CREATE, instance=shift)
            for station in pattern.line.stations.all():
                outbox_enqueue(
                    station=station,
                    kind="shift.scheduled",
                    payload={
                        "shift": shift.pk,
                        "name": shift.name,
                        "business_date": day.isoformat(),
                        "starts_at": starts_at.isoformat(),
                        "ends_at": ends_at.isoformat(),
                    },
                )
            created.append(shift)
        day += dt.timedelta(days=1)
    return created
