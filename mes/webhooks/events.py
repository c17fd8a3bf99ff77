"""What a legacy MES may tell Aegis, and how each event becomes a change in the MES.

`parse_event` turns a verified body into a `WebhookEvent` without touching the database:
JSON, event id, type and the type's fields, with every problem reported per field (400).
`receive_event` then applies it exactly once: in one transaction it claims the event id in the
inbox, resolves stations, units and codes (unknown ones are 422), calls the event type's
service and stores the response. When anything refuses, the whole transaction rolls back, so
a refused event leaves no trace and can be sent again once the cause is fixed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import serializers

from mes import services
from mes.audit import audit_context
from mes.errors import InvalidInput, MesError, TransitionRefused, UnknownReference
from mes.models import (
    DefectCode,
    DetectionSource,
    DowntimeEvent,
    DowntimeReason,
    FirmwareFlash,
    Line,
    Product,
    ScrapReason,
    Severity,
    Station,
    StationVisit,
    Unit,
    WebhookInboxEvent,
    WebhookIntegration,
    WorkOrder,
)

logger = structlog.get_logger(__name__)

# The original Aegis station-state payload has neither `type` nor `event_id`.
LEGACY_EVENT_TYPE = "station_state"
DEFAULT_FIRMWARE_COMPONENT = "MAIN"
EVENT_ID_MAX_LENGTH = 128
# Epoch values below this are seconds sent by mistake (it is 1973-03-03 in milliseconds).
EPOCH_MS_MINIMUM = 100_000_000_000
# Senders' clocks may run this far ahead of the server's (as for X-Aegis-Timestamp).
FUTURE_TOLERANCE_SECONDS = 300
# PostgreSQL integer columns (quantity, good, scrap): larger values are refused, not a 500.
MAX_COUNT = 2_147_483_647


# -- payload schemas --------------------------------------------------------------------------


class EventTimestampField(serializers.Field):
    """An instant: ISO 8601 with an offset, or epoch milliseconds. Naive times are refused,
    because a legacy MES's local clock is ambiguous across DST and between sites. A fact the
    shop floor reports cannot lie in the future: more than the clock tolerance ahead is refused
    (a planned instant such as a due date passes `happened=False`)."""

    default_error_messages = {
        "invalid": (
            "expected ISO 8601 with an offset (2026-04-27T09:22:47+02:00) or epoch milliseconds"
        ),
        "naive": "naive timestamp: add an offset such as Z or +02:00",
        "seconds": "epoch milliseconds expected; this looks like seconds",
        "range": "timestamp out of range",
        "future": "lies in the future (the server's clock says {now})",
    }

    def __init__(self, *, happened: bool = True, **options) -> None:
        super().__init__(**options)
        self.happened = happened

    def to_internal_value(self, data: Any) -> dt.datetime:
        instant = self._parse(data)
        try:
            instant.astimezone(dt.UTC)
        except OverflowError:
            self.fail("range")
        now = timezone.now()
        if self.happened and instant - now > dt.timedelta(seconds=FUTURE_TOLERANCE_SECONDS):
            self.fail("future", now=now.isoformat(timespec="seconds"))
        return instant

    def _parse(self, data: Any) -> dt.datetime:
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, int | float):
            if 0 <= data < EPOCH_MS_MINIMUM:
                self.fail("seconds")
            try:
                return dt.datetime.fromtimestamp(data / 1000, tz=dt.UTC)
            except (OverflowError, OSError, ValueError):
                self.fail("range")
        if isinstance(data, str):
            try:
                instant = dt.datetime.fromisoformat(data)
            except ValueError:
                self.fail("invalid")
            if timezone.is_naive(instant):
                self.fail("naive")
            return instant
        self.fail("invalid")

    def to_representation(self, value: dt.datetime) -> str:
        return value.isoformat()


def _code(max_length: int = 64, **options) -> serializers.CharField:
    """A reference to something the MES knows by code (station, work order, reason, …)."""
    return serializers.CharField(max_length=max_length, **options)


def _optional_instant() -> EventTimestampField:
    return EventTimestampField(required=False, allow_null=True)


class UnitEventSchema(serializers.Serializer):
    """Events about one unit name it by VIN or serial (both: they must be the same unit)."""

    vin = _code(17, required=False, allow_null=True)
    serial = _code(64, required=False, allow_null=True)

    def validate(self, attrs: dict) -> dict:
        if not attrs.get("vin") and not attrs.get("serial"):
            raise serializers.ValidationError({"vin": ["give the unit's vin or serial"]})
        return attrs


class StationStateSchema(UnitEventSchema):
    station_id = _code(32)
    firmware = _code(64, required=False, allow_null=True)
    component = _code(64, required=False, default=DEFAULT_FIRMWARE_COMPONENT)
    at = _optional_instant()


class WorkOrderCreatedSchema(serializers.Serializer):
    work_order = _code(64)
    product = _code(32)
    line = _code(32)
    quantity = serializers.IntegerField(min_value=1, max_value=MAX_COUNT)
    due_at = EventTimestampField(required=False, allow_null=True, happened=False)


class WorkOrderStepSchema(serializers.Serializer):
    work_order = _code(64)
    at = _optional_instant()


class WorkOrderCancelledSchema(WorkOrderStepSchema):
    reason = serializers.CharField(max_length=200)


class UnitCreatedSchema(serializers.Serializer):
    work_order = _code(64)
    serial = _code(64)
    vin = _code(17, required=False, allow_null=True)


class UnitMovedSchema(UnitEventSchema):
    station_id = _code(32)
    at = _optional_instant()


class FirmwareFlashedSchema(UnitEventSchema):
    component = _code(64)
    version = _code(64)
    station_id = _code(32, required=False, allow_null=True)
    at = _optional_instant()


class CountsReportedSchema(serializers.Serializer):
    station_id = _code(32)
    interval_start = EventTimestampField()
    interval_end = EventTimestampField()
    good = serializers.IntegerField(min_value=0, max_value=MAX_COUNT)
    scrap = serializers.IntegerField(min_value=0, max_value=MAX_COUNT, default=0)
    scrap_reason = _code(64, required=False, allow_null=True)
    work_order = _code(64, required=False, allow_null=True)

    def validate(self, attrs: dict) -> dict:
        if attrs["interval_end"] <= attrs["interval_start"]:
            raise serializers.ValidationError({"interval_end": ["must be after interval_start"]})
        return attrs


class DowntimeOpenedSchema(serializers.Serializer):
    station_id = _code(32)
    at = _optional_instant()
    reason = _code(64, required=False, allow_null=True)
    planned = serializers.BooleanField(required=False, allow_null=True)
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class DowntimeClosedSchema(serializers.Serializer):
    station_id = _code(32)
    at = _optional_instant()
    reason = _code(64, required=False, allow_null=True)


class QualityRecordedSchema(UnitEventSchema):
    defect = _code(64)
    severity = serializers.ChoiceField(choices=Severity.choices)
    station_id = _code(32, required=False, allow_null=True)
    at = _optional_instant()
    description = serializers.CharField(required=False, allow_blank=True, default="")


# -- references: what the payload names, looked up (unknown → 422) ---------------------------


def _station(code: str, field: str = "station_id") -> Station:
    station = Station.objects.filter(code=code).first()
    if station is None:
        raise UnknownReference(
            f"no station {code!r}", fields={field: [f"unknown station {code!r}"]}
        )
    return station


def _optional_station(code: str | None) -> Station | None:
    return _station(code) if code else None


def _unit(data: dict) -> Unit:
    vin, serial = data.get("vin"), data.get("serial")
    units = Unit.objects.select_related("work_order__product")
    if vin:
        unit = units.filter(vin=vin.upper()).first()
        if unit is None:
            raise UnknownReference(f"no unit with VIN {vin}", fields={"vin": ["unknown VIN"]})
        if serial and unit.serial != serial:
            raise UnknownReference(
                f"VIN {vin} belongs to unit {unit.serial}, not {serial}",
                fields={"serial": [f"VIN {vin} is unit {unit.serial}"]},
            )
        return unit
    unit = units.filter(serial=serial).first()
    if unit is None:
        raise UnknownReference(f"no unit {serial!r}", fields={"serial": ["unknown serial"]})
    return unit


def _work_order(external_id: str, field: str = "work_order") -> WorkOrder:
    found = (
        WorkOrder.objects.select_related("product", "line").filter(external_id=external_id).first()
    )
    if found is None:
        raise UnknownReference(
            f"no work order {external_id!r}",
            fields={field: [f"unknown work order {external_id!r}"]},
        )
    return found


def _optional_work_order(external_id: str | None) -> WorkOrder | None:
    return _work_order(external_id) if external_id else None


def _by_code(model, code: str | None, field: str, what: str):
    """A reason or defect code, or None when the payload gives none."""
    if not code:
        return None
    found = model.objects.filter(code=code).first()
    if found is None:
        raise UnknownReference(f"no {what} {code!r}", fields={field: [f"unknown {what} {code!r}"]})
    return found


def _open_visit(unit: Unit, station: Station) -> StationVisit | None:
    return StationVisit.objects.filter(unit=unit, station=station, left_at__isnull=True).first()


def _firmware_version(unit: Unit, component: str, at: dt.datetime) -> str | None:
    """The version of `component` the unit carried at `at`, as far as the MES knows."""
    return (
        FirmwareFlash.objects.filter(unit=unit, component=component, flashed_at__lte=at)
        .order_by("-flashed_at")
        .values_list("version", flat=True)
        .first()
    )


def _when(instant: dt.datetime | None) -> str | None:
    return instant.isoformat() if instant else None


def _unit_result(unit: Unit) -> dict:
    return {"unit": unit.serial, "vin": unit.vin}


# -- event types: each calls one service (station_state: arrival and firmware) ---------------


def apply_station_state(data: dict, integration: WebhookIntegration) -> dict:
    """The original Aegis payload is a state, not an event: "this unit is now at this station
    with this firmware". Only what differs from the MES's state is recorded, so repeating the
    same state (a retry, a periodic resend) changes nothing."""
    station = _station(data["station_id"])
    unit = _unit(data)
    at = data.get("at") or timezone.now()
    visit = _open_visit(unit, station)
    arrived = visit is None
    if arrived:
        visit = services.unit_arrive(unit=unit, station=station, at=at)
    result = {"station_id": station.code, **_unit_result(unit), "visit": visit.pk}
    result["arrived"] = arrived
    if data.get("firmware"):
        component, version = data["component"], data["firmware"]
        flashed = _firmware_version(unit, component, at) != version
        if flashed:
            services.firmware_flash(
                unit=unit, component=component, version=version, at=at, station=station
            )
        result["firmware"] = {"component": component, "version": version, "flashed": flashed}
    return result


def apply_work_order_created(data: dict, integration: WebhookIntegration) -> dict:
    product = _by_code(Product, data["product"], "product", "product")
    line = _by_code(Line, data["line"], "line", "line")
    work_order = services.work_order_create(
        external_id=data["work_order"],
        product=product,
        line=line,
        quantity=data["quantity"],
        due_at=data.get("due_at"),
    )
    return {"work_order": work_order.external_id, "status": work_order.status}


def _work_order_step(step: Callable[..., WorkOrder]) -> Callable[[dict, WebhookIntegration], dict]:
    def apply(data: dict, integration: WebhookIntegration) -> dict:
        work_order = step(work_order=_work_order(data["work_order"]), at=data.get("at"))
        return {"work_order": work_order.external_id, "status": work_order.status}

    return apply


def apply_work_order_cancelled(data: dict, integration: WebhookIntegration) -> dict:
    work_order = services.work_order_cancel(
        work_order=_work_order(data["work_order"]), reason=data["reason"], at=data.get("at")
    )
    return {"work_order": work_order.external_id, "status": work_order.status}


def apply_unit_created(data: dict, integration: WebhookIntegration) -> dict:
    unit = services.unit_create(
        work_order=_work_order(data["work_order"]),
        serial=data["serial"],
        vin=(data.get("vin") or "").upper() or None,
    )
    return {**_unit_result(unit), "work_order": data["work_order"], "status": unit.status}


def apply_unit_arrived(data: dict, integration: WebhookIntegration) -> dict:
    station, unit = _station(data["station_id"]), _unit(data)
    visit = services.unit_arrive(unit=unit, station=station, at=data.get("at"))
    return {
        "visit": visit.pk,
        "station_id": station.code,
        **_unit_result(unit),
        "arrived_at": _when(visit.arrived_at),
    }


def apply_unit_left(data: dict, integration: WebhookIntegration) -> dict:
    station, unit = _station(data["station_id"]), _unit(data)
    visit = services.unit_leave(unit=unit, station=station, at=data.get("at"))
    return {
        "visit": visit.pk,
        "station_id": station.code,
        **_unit_result(unit),
        "arrived_at": _when(visit.arrived_at),
        "left_at": _when(visit.left_at),
    }


def apply_firmware_flashed(data: dict, integration: WebhookIntegration) -> dict:
    unit = _unit(data)
    flash = services.firmware_flash(
        unit=unit,
        component=data["component"],
        version=data["version"],
        at=data.get("at"),
        station=_optional_station(data.get("station_id")),
    )
    return {
        "flash": flash.pk,
        **_unit_result(unit),
        "component": flash.component,
        "version": flash.version,
        "flashed_at": _when(flash.flashed_at),
    }


def apply_counts_reported(data: dict, integration: WebhookIntegration) -> dict:
    count = services.counts_report(
        station=_station(data["station_id"]),
        interval_start=data["interval_start"],
        interval_end=data["interval_end"],
        good=data["good"],
        scrap=data["scrap"],
        scrap_reason=_by_code(
            ScrapReason, data.get("scrap_reason"), "scrap_reason", "scrap reason"
        ),
        work_order=_optional_work_order(data.get("work_order")),
    )
    return {
        "count": count.pk,
        "station_id": data["station_id"],
        "interval_start": _when(count.interval_start),
        "interval_end": _when(count.interval_end),
        "good": count.good,
        "scrap": count.scrap,
    }


def apply_downtime_opened(data: dict, integration: WebhookIntegration) -> dict:
    downtime = services.downtime_open(
        station=_station(data["station_id"]),
        at=data.get("at"),
        reason=_by_code(DowntimeReason, data.get("reason"), "reason", "downtime reason"),
        planned=data.get("planned"),
        comment=data["comment"],
        user=integration.user,
    )
    return {
        "downtime": downtime.pk,
        "station_id": data["station_id"],
        "started_at": _when(downtime.started_at),
        "reason": downtime.reason.code if downtime.reason else None,
        "planned": downtime.planned,
    }


def apply_downtime_closed(data: dict, integration: WebhookIntegration) -> dict:
    station = _station(data["station_id"])
    reason = _by_code(DowntimeReason, data.get("reason"), "reason", "downtime reason")
    # At most one downtime is open at a station: the database refuses overlapping downtimes.
    open_downtime = DowntimeEvent.objects.filter(station=station, ended_at__isnull=True).first()
    if open_downtime is None:
        raise TransitionRefused(
            f"station {station.code} has no open downtime",
            fields={"station_id": ["no open downtime"]},
        )
    downtime = services.downtime_close(downtime=open_downtime, at=data.get("at"), reason=reason)
    return {
        "downtime": downtime.pk,
        "station_id": station.code,
        "started_at": _when(downtime.started_at),
        "ended_at": _when(downtime.ended_at),
        "reason": downtime.reason.code,
    }


def apply_quality_recorded(data: dict, integration: WebhookIntegration) -> dict:
    unit = _unit(data)
    event = services.quality_event_record(
        unit=unit,
        defect=_by_code(DefectCode, data["defect"], "defect", "defect code"),
        found_at=data.get("at"),
        severity=data["severity"],
        source=DetectionSource.LEGACY_MES,
        station=_optional_station(data.get("station_id")),
        user=integration.user,
        description=data["description"],
    )
    return {
        "quality_event": event.pk,
        **_unit_result(unit),
        "defect": event.defect.code,
        "severity": event.severity,
        "found_at": _when(event.found_at),
    }


@dataclass(frozen=True)
class EventType:
    schema: type[serializers.Serializer]
    apply: Callable[[dict, WebhookIntegration], dict]
    status: int  # 201 when the event records a new fact, 200 when it moves or confirms one


EVENT_TYPES: dict[str, EventType] = {
    "station_state": EventType(StationStateSchema, apply_station_state, 200),
    "work_order.created": EventType(WorkOrderCreatedSchema, apply_work_order_created, 201),
    "work_order.released": EventType(
        WorkOrderStepSchema, _work_order_step(services.work_order_release), 200
    ),
    "work_order.started": EventType(
        WorkOrderStepSchema, _work_order_step(services.work_order_start), 200
    ),
    "work_order.completed": EventType(
        WorkOrderStepSchema, _work_order_step(services.work_order_complete), 200
    ),
    "work_order.cancelled": EventType(WorkOrderCancelledSchema, apply_work_order_cancelled, 200),
    "unit.created": EventType(UnitCreatedSchema, apply_unit_created, 201),
    "unit.arrived": EventType(UnitMovedSchema, apply_unit_arrived, 201),
    "unit.left": EventType(UnitMovedSchema, apply_unit_left, 200),
    "firmware.flashed": EventType(FirmwareFlashedSchema, apply_firmware_flashed, 201),
    "counts.reported": EventType(CountsReportedSchema, apply_counts_reported, 201),
    "downtime.opened": EventType(DowntimeOpenedSchema, apply_downtime_opened, 201),
    "downtime.closed": EventType(DowntimeClosedSchema, apply_downtime_closed, 200),
    "quality.recorded": EventType(QualityRecordedSchema, apply_quality_recorded, 201),
}


# -- parsing (no database) ----------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookEvent:
    event_id: str
    event_type: str
    payload: dict
    data: dict
    event_id_derived: bool = False


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number in JSON")


def _plain_errors(errors: dict) -> dict[str, list[str]]:
    return {
        field: [str(message) for message in messages]
        if isinstance(messages, list)
        else [str(messages)]
        for field, messages in errors.items()
    }


def _event_id_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return "must be a string"
    text = str(value)
    if not text or len(text) > EVENT_ID_MAX_LENGTH:
        return f"must be 1 to {EVENT_ID_MAX_LENGTH} characters"
    if text != text.strip() or not text.isprintable():
        return "must be printable, without leading or trailing spaces"
    return None


def derived_event_id(body: bytes) -> str:
    """The id of an original Aegis payload that came without one: its bytes' digest."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def parse_event(body: bytes, *, event_id_header: str | None = None) -> WebhookEvent:
    """The event in a verified body, or InvalidInput (400) naming every malformed field."""
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise InvalidInput("the body is not UTF-8", fields={"body": ["not UTF-8"]}) from None
    except (ValueError, RecursionError) as error:
        raise InvalidInput("the body is not JSON", fields={"body": [str(error)]}) from None
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object", fields={"body": ["not an object"]})

    legacy = "type" not in payload
    event_type = payload.get("type", LEGACY_EVENT_TYPE)
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise InvalidInput(
            f"unknown event type {event_type!r}",
            fields={"type": [f"one of {', '.join(EVENT_TYPES)}"]},
        )

    errors: dict[str, list[str]] = {}
    event_id, derived = _event_id(payload, event_id_header, body, legacy, errors)
    schema = EVENT_TYPES[event_type].schema(data=payload)
    if not schema.is_valid():
        errors.update(_plain_errors(schema.errors))
    if errors:
        raise InvalidInput(f"malformed {event_type} event", fields=errors)
    return WebhookEvent(
        event_id=event_id,
        event_type=event_type,
        payload=payload,
        data=dict(schema.validated_data),
        event_id_derived=derived,
    )


def _event_id(
    payload: dict, header: str | None, body: bytes, legacy: bool, errors: dict
) -> tuple[str, bool]:
    """From the body, else the X-Aegis-Event-Id header, else (original payload only) derived."""
    in_body = payload.get("event_id")
    if in_body is not None:
        if problem := _event_id_problem(in_body):
            errors["event_id"] = [problem]
            return "", False
        if header and header != str(in_body):
            errors["event_id"] = ["differs from the X-Aegis-Event-Id header"]
        return str(in_body), False
    if header:
        if problem := _event_id_problem(header):
            errors["event_id"] = [f"X-Aegis-Event-Id header {problem}"]
        return header, False
    if legacy:
        return derived_event_id(body), True
    errors["event_id"] = ["required (or send the X-Aegis-Event-Id header)"]
    return "", False


# -- receiving (one transaction) --------------------------------------------------------------


@dataclass(frozen=True)
class WebhookOutcome:
    status: int
    body: dict
    replayed: bool = False


class _Replay(Exception):
    def __init__(self, stored: WebhookInboxEvent) -> None:
        self.stored = stored


def receive_event(*, integration: WebhookIntegration, event: WebhookEvent) -> WebhookOutcome:
    """Apply `event` once. A repeated event id answers what the first delivery answered; a
    refused event (MesError) rolls back with its inbox row, so nothing of it remains."""
    try:
        with transaction.atomic():
            inbox = _claim(integration, event)
            with audit_context(user=integration.user, source="webhook"):
                result = EVENT_TYPES[event.event_type].apply(event.data, integration)
            inbox.response_status = EVENT_TYPES[event.event_type].status
            inbox.response_body = {
                "event_id": event.event_id,
                "type": event.event_type,
                "result": result,
            }
            inbox.save(update_fields=["response_status", "response_body"])
    except _Replay as replay:
        stored = replay.stored
        if stored.payload != event.payload:
            logger.warning(
                "webhook_event_id_reused",
                integration=integration.name,
                event_id=event.event_id,
                detail="same event id, different payload: the first delivery's result stands",
            )
        return WebhookOutcome(stored.response_status, stored.response_body, replayed=True)
    except MesError as error:
        return WebhookOutcome(error.status, error.as_dict())
    return WebhookOutcome(inbox.response_status, inbox.response_body)


def _claim(integration: WebhookIntegration, event: WebhookEvent) -> WebhookInboxEvent:
    """Insert the inbox row first: a concurrent delivery of the same id waits on the unique
    index until this transaction ends, then finds the stored response (or, after a rollback,
    claims the id itself)."""
    try:
        with transaction.atomic():
            return WebhookInboxEvent.objects.create(
                integration=integration,
                event_id=event.event_id,
                event_type=event.event_type,
                payload=event.payload,
                response_status=0,  # set before commit; nobody sees this value
                response_body={},
            )
    except IntegrityError:
        stored = WebhookInboxEvent.objects.get(integration=integration, event_id=event.event_id)
    raise _Replay(stored)
