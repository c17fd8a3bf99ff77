"""Shapes of the API: read-only representations, and one small input per operation.

Input serializers only check the shape of a request. References (station codes, serials, …)
are resolved after every field is valid, so a malformed body is a 400 and a well-formed body
naming something unknown is a 422. The rules of the MES stay in mes/services.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from django.contrib.auth import get_user_model
from django.core.validators import RegexValidator
from rest_framework import serializers

from mes import selectors
from mes.models import (
    ApiToken,
    Area,
    AuditEntry,
    DefectCode,
    DetectionSource,
    DowntimeEvent,
    DowntimeReason,
    FirmwareFlash,
    Line,
    Product,
    ProductionCount,
    QualityEvent,
    Route,
    RouteOperation,
    ScrapReason,
    Severity,
    Shift,
    ShiftBreak,
    Site,
    Station,
    StationSignal,
    StationVisit,
    Unit,
    WorkOrder,
)

POSTGRES_INT_MAX = 2**31 - 1
# External ids and serials become path segments (/work-orders/{external_id}/release).
path_segment = RegexValidator(r"^[^/\s]+$", "No '/' and no spaces: this value is part of URLs.")


def _code(field: str = "code", **kwargs) -> serializers.SlugRelatedField:
    return serializers.SlugRelatedField(slug_field=field, read_only=True, **kwargs)


# -- errors -----------------------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable: invalid, unknown_reference, …")
    detail = serializers.CharField(help_text="What went wrong, for a person.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Problems per input field.",
    )


# -- reads ------------------------------------------------------------------------------------


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["id", "code", "name", "timezone"]


class AreaSerializer(serializers.ModelSerializer):
    site = _code(help_text="Site code.")

    class Meta:
        model = Area
        fields = ["id", "site", "code", "name"]


class LineSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="area.site.code", read_only=True, help_text="Site code.")

    class Meta:
        model = Line
        fields = ["id", "site", "area", "code", "name"]


class StationSignalSerializer(serializers.ModelSerializer):
    class Meta:
        model = StationSignal
        fields = ["name", "unit", "nominal_min", "nominal_max"]


class StationSerializer(serializers.ModelSerializer):
    signals = StationSignalSerializer(many=True, read_only=True)

    class Meta:
        model = Station
        fields = ["id", "code", "name", "line", "position", "station_type", "signals"]


class ProductSerializer(serializers.ModelSerializer):
    class Meta:
        model = Product
        fields = ["id", "code", "name", "description"]


class RouteOperationSerializer(serializers.ModelSerializer):
    station = _code(help_text="Station code.")

    class Meta:
        model = RouteOperation
        fields = ["sequence", "station", "name", "ideal_cycle_time_s"]


class RouteSerializer(serializers.ModelSerializer):
    product = _code(help_text="Product code.")
    operations = RouteOperationSerializer(many=True, read_only=True)

    class Meta:
        model = Route
        fields = ["id", "product", "line", "ideal_cycle_time_s", "operations"]


class WorkOrderSerializer(serializers.ModelSerializer):
    product = _code(help_text="Product code.")

    class Meta:
        model = WorkOrder
        fields = [
            "id",
            "external_id",
            "product",
            "line",
            "quantity",
            "due_at",
            "status",
            "released_at",
            "started_at",
            "completed_at",
            "cancelled_at",
            "cancel_reason",
            "created_at",
            "updated_at",
        ]


class UnitSerializer(serializers.ModelSerializer):
    work_order = _code("external_id", help_text="Work order external id.")

    class Meta:
        model = Unit
        fields = ["id", "serial", "vin", "work_order", "status", "created_at", "updated_at"]


class StationVisitSerializer(serializers.ModelSerializer):
    unit = _code("serial", help_text="Unit serial.")
    vin = serializers.CharField(source="unit.vin", read_only=True, allow_null=True)
    station = _code(help_text="Station code.")

    class Meta:
        model = StationVisit
        fields = ["id", "unit", "vin", "station", "arrived_at", "left_at"]


class FirmwareFlashSerializer(serializers.ModelSerializer):
    unit = _code("serial", help_text="Unit serial.")
    vin = serializers.CharField(source="unit.vin", read_only=True, allow_null=True)
    station = _code(help_text="Station code.", allow_null=True)

    class Meta:
        model = FirmwareFlash
        fields = ["id", "unit", "vin", "station", "component", "version", "flashed_at"]


class ShiftBreakSerializer(serializers.ModelSerializer):
    class Meta:
        model = ShiftBreak
        fields = ["name", "starts_at", "ends_at"]


class ShiftSerializer(serializers.ModelSerializer):
    breaks = ShiftBreakSerializer(many=True, read_only=True)

    class Meta:
        model = Shift
        fields = ["id", "line", "name", "business_date", "starts_at", "ends_at", "breaks"]


class DowntimeReasonSerializer(serializers.ModelSerializer):
    parent = _code(help_text="Parent reason code.", allow_null=True)

    class Meta:
        model = DowntimeReason
        fields = ["id", "code", "name", "parent", "planned"]


class DowntimeEventSerializer(serializers.ModelSerializer):
    station = _code(help_text="Station code.")
    reason = _code(help_text="Downtime reason code.", allow_null=True)
    reported_by = _code("username", allow_null=True)

    class Meta:
        model = DowntimeEvent
        fields = [
            "id",
            "station",
            "reason",
            "started_at",
            "ended_at",
            "planned",
            "comment",
            "reported_by",
        ]


class ScrapReasonSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScrapReason
        fields = ["id", "code", "name"]


class ProductionCountSerializer(serializers.ModelSerializer):
    station = _code(help_text="Station code.")
    work_order = _code("external_id", help_text="Work order external id.", allow_null=True)
    scrap_reason = _code(help_text="Scrap reason code.", allow_null=True)

    class Meta:
        model = ProductionCount
        fields = [
            "id",
            "station",
            "work_order",
            "interval_start",
            "interval_end",
            "good",
            "scrap",
            "scrap_reason",
        ]


class DefectCodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = DefectCode
        fields = ["id", "code", "name"]


class QualityEventSerializer(serializers.ModelSerializer):
    unit = _code("serial", help_text="Unit serial.")
    vin = serializers.CharField(source="unit.vin", read_only=True, allow_null=True)
    defect = _code(help_text="Defect code.")
    station = _code(help_text="Station code.", allow_null=True)
    detected_by = _code("username", allow_null=True)

    class Meta:
        model = QualityEvent
        fields = [
            "id",
            "unit",
            "vin",
            "defect",
            "station",
            "found_at",
            "severity",
            "source",
            "detected_by",
            "description",
        ]


class AuditEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "at",
            "actor",
            "actor_name",
            "source",
            "action",
            "model",
            "object_id",
            "object_repr",
            "before",
            "after",
            "request_id",
        ]


class UserSerializer(serializers.ModelSerializer):
    roles = serializers.SlugRelatedField(
        source="groups", slug_field="name", many=True, read_only=True
    )

    class Meta:
        model = get_user_model()
        fields = [
            "id",
            "username",
            "first_name",
            "last_name",
            "email",
            "is_active",
            "roles",
            "last_login",
        ]


class ApiTokenSerializer(serializers.ModelSerializer):
    """A token as listed: never its secret."""

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]


# -- inputs -----------------------------------------------------------------------------------


class InstantField(serializers.DateTimeField):
    """An ISO 8601 instant with its offset: a wall-clock time alone is ambiguous on a plant
    floor in another time zone, or twice a year on the same one."""

    default_error_messages = {
        "naive": "Give the time zone, e.g. 2024-05-02T09:22:47Z or 2024-05-02T11:22:47+02:00."
    }

    def enforce_timezone(self, value):
        if value.tzinfo is None or value.utcoffset() is None:
            self.fail("naive")
        return super().enforce_timezone(value)


class InputSerializer(serializers.Serializer):
    """Validates shape; then `references` turn codes into MES objects (or UnknownReference)."""

    references: dict[str, Callable] = {}

    def validate(self, attrs: dict) -> dict:
        for field, resolve in self.references.items():
            if attrs.get(field) is not None:
                attrs[field] = resolve(attrs[field], field=field)
        return attrs


def _station_code(**kwargs) -> serializers.CharField:
    return serializers.CharField(max_length=32, help_text="Station code.", **kwargs)


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False)
    name = serializers.CharField(
        max_length=100, required=False, default="", help_text="What the token is for."
    )
    lifetime_hours = serializers.IntegerField(
        min_value=1,
        max_value=90 * 24,
        default=30 * 24,
        help_text="Hours until the token expires: 1 to 2160 (90 days); 720 (30 days) by default.",
    )


class TokenIssuedSerializer(serializers.ModelSerializer):
    token = serializers.CharField(
        help_text="The secret: send it as `Authorization: Bearer <token>`. Shown only once."
    )

    class Meta:
        model = ApiToken
        fields = ["id", "token", "name", "prefix", "created_at", "expires_at"]


class StepInputSerializer(InputSerializer):
    at = InstantField(required=False, help_text="When it happened; now when left out.")


class WorkOrderCancelInputSerializer(StepInputSerializer):
    reason = serializers.CharField(max_length=200, help_text="Why the work order is cancelled.")


class WorkOrderCreateInputSerializer(InputSerializer):
    external_id = serializers.CharField(max_length=64, validators=[path_segment])
    product = serializers.CharField(max_length=32, help_text="Product code.")
    line = serializers.IntegerField(min_value=1, help_text="Line id.")
    quantity = serializers.IntegerField(min_value=1, max_value=POSTGRES_INT_MAX)
    due_at = InstantField(required=False, allow_null=True)

    references = {"product": selectors.product_by_code, "line": selectors.line_by_id}


class UnitCreateInputSerializer(InputSerializer):
    work_order = serializers.CharField(max_length=64, help_text="Work order external id.")
    serial = serializers.CharField(max_length=64, validators=[path_segment])
    vin = serializers.CharField(max_length=17, required=False, allow_null=True, allow_blank=True)

    references = {"work_order": selectors.work_order_by_external_id}


class StationMoveInputSerializer(StepInputSerializer):
    station = _station_code()

    references = {"station": selectors.station_by_code}


class FirmwareFlashInputSerializer(StepInputSerializer):
    component = serializers.CharField(max_length=64, help_text="ECU or component, e.g. EPS.")
    version = serializers.CharField(max_length=64)
    station = _station_code(required=False, allow_null=True)

    references = {"station": selectors.station_by_code}


class CountsReportInputSerializer(InputSerializer):
    station = _station_code()
    interval_start = InstantField()
    interval_end = InstantField()
    good = serializers.IntegerField(min_value=0, max_value=POSTGRES_INT_MAX)
    scrap = serializers.IntegerField(min_value=0, max_value=POSTGRES_INT_MAX, default=0)
    scrap_reason = serializers.CharField(
        max_length=64, required=False, allow_null=True, help_text="Scrap reason code."
    )
    work_order = serializers.CharField(
        max_length=64, required=False, allow_null=True, help_text="Work order external id."
    )

    references = {
        "station": selectors.station_by_code,
        "scrap_reason": selectors.scrap_reason_by_code,
        "work_order": selectors.work_order_by_external_id,
    }


class DowntimeOpenInputSerializer(StepInputSerializer):
    station = _station_code()
    reason = serializers.CharField(
        max_length=64, required=False, allow_null=True, help_text="Downtime reason code."
    )
    planned = serializers.BooleanField(
        required=False, allow_null=True, help_text="Planned stop; the reason's flag by default."
    )
    comment = serializers.CharField(max_length=2000, required=False, default="", allow_blank=True)

    references = {
        "station": selectors.station_by_code,
        "reason": selectors.downtime_reason_by_code,
    }


class DowntimeCloseInputSerializer(StepInputSerializer):
    reason = serializers.CharField(
        max_length=64,
        required=False,
        allow_null=True,
        help_text="Downtime reason code; required when the downtime was opened without one.",
    )

    references = {"reason": selectors.downtime_reason_by_code}


class QualityEventInputSerializer(InputSerializer):
    unit = serializers.CharField(
        max_length=64, required=False, help_text="Unit serial (or give `vin`)."
    )
    vin = serializers.CharField(max_length=17, required=False, help_text="VIN (or give `unit`).")
    defect = serializers.CharField(max_length=64, help_text="Defect code.")
    severity = serializers.ChoiceField(choices=Severity.choices)
    source = serializers.ChoiceField(choices=DetectionSource.choices)
    found_at = InstantField(required=False, help_text="When it was found; now when left out.")
    station = _station_code(required=False, allow_null=True)
    description = serializers.CharField(
        max_length=4000, required=False, default="", allow_blank=True
    )

    references = {
        "unit": selectors.unit_by_serial,
        "vin": selectors.unit_by_vin,
        "defect": selectors.defect_code_by_code,
        "station": selectors.station_by_code,
    }

    def validate(self, attrs: dict) -> dict:
        if ("unit" in attrs) == ("vin" in attrs):
            raise serializers.ValidationError({"unit": ["give either unit (serial) or vin"]})
        attrs = super().validate(attrs)
        attrs["unit"] = attrs.pop("unit", None) or attrs.pop("vin")
        return attrs


# -- OEE and downtime (mes/oee.py, docs/oee.md) -------------------------------------------------


def _seconds(help_text: str, **kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=14, decimal_places=3, read_only=True, help_text=help_text, **kwargs
    )


def _ratio(help_text: str) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=16, decimal_places=6, read_only=True, allow_null=True, help_text=help_text
    )


def _units(help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(read_only=True, help_text=help_text)


class OeeSerializer(serializers.Serializer):
    """One row of reporting.oee_report: a station or line over a shift, a day or a period.
    Ratios are fractions (0.888095 is 88.81 %); times are seconds."""

    site = serializers.CharField(read_only=True, help_text="Site code.")
    line = serializers.CharField(read_only=True, help_text="Line code.")
    station = serializers.CharField(
        read_only=True, allow_null=True, help_text="Station code; null on line rows."
    )
    shift_name = serializers.CharField(
        read_only=True, allow_null=True, help_text="Shift name; null unless per shift."
    )
    shift_start = serializers.DateTimeField(read_only=True, allow_null=True)
    shift_end = serializers.DateTimeField(read_only=True, allow_null=True)
    business_date = serializers.DateField(
        read_only=True, allow_null=True, help_text="Local date the shifts belong to."
    )
    period_start = serializers.DateTimeField(read_only=True, help_text="First instant reported.")
    period_end = serializers.DateTimeField(
        read_only=True, help_text="Last instant reported (now for a running shift)."
    )
    stations = _units("Stations summed in this row.")
    calendar_seconds = _seconds("All time, the basis of TEEP.", allow_null=True)
    planned_seconds = _seconds("Planned production time: shift time minus planned stops.")
    run_seconds = _seconds("Planned production time minus downtime.")
    downtime_seconds = _seconds("Unplanned stops at or above the micro-stop threshold.")
    total_count = _units("Units made, good and scrap.")
    good_count = _units("Good units.")
    scrap_count = _units("Rejected units.")
    ideal_cycle_seconds = serializers.DecimalField(
        max_digits=12,
        decimal_places=4,
        read_only=True,
        allow_null=True,
        help_text="Mean ideal cycle time of the units made (weighted by count).",
    )
    availability = _ratio("run / planned.")
    performance = _ratio("ideal cycle time * total count / run.")
    quality = _ratio("good / total.")
    oee = _ratio("availability * performance * quality.")
    teep = _ratio("OEE * planned / calendar time.")
    breakdown_seconds = _seconds("Downtime of breakdown reasons (and stops without reason).")
    setup_seconds = _seconds("Downtime of setup and adjustment reasons.")
    small_stop_seconds = _seconds("Unplanned stops shorter than the micro-stop threshold.")
    small_stop_count = _units("Small stops that started here.")
    reduced_speed_seconds = _seconds("Performance loss the small stops do not explain.")
    startup_reject_count = _units("Scrap made while production (re)started.")
    production_reject_count = _units("The other scrap.")
    startup_reject_seconds = _seconds("Ideal time spent on startup rejects.")
    production_reject_seconds = _seconds("Ideal time spent on production rejects.")
    ideal_seconds = _seconds("Ideal cycle time * total count.")
    fully_productive_seconds = _seconds("Ideal cycle time * good count.")
    unrated_count = _units("Units with no ideal cycle time (the station is on no route).")
    stop_count = _units("Downtime stops that started here.")
    failure_count = _units("Breakdown stops that started here.")
    mtbf_seconds = _seconds("Mean time between failures: run / failures.", allow_null=True)
    mttr_seconds = _seconds("Mean time to repair: failures' duration / failures.", allow_null=True)
    defect_count = _units("Quality events found at the station here.")


class ReliabilitySerializer(serializers.Serializer):
    site = serializers.CharField(read_only=True, help_text="Site code.")
    line = serializers.CharField(read_only=True, help_text="Line code.")
    station = serializers.CharField(
        read_only=True, allow_null=True, help_text="Station code; null on line rows."
    )
    period_start = serializers.DateTimeField(read_only=True)
    period_end = serializers.DateTimeField(read_only=True)
    run_seconds = _seconds("Planned production time minus downtime.")
    downtime_seconds = _seconds("Unplanned stops at or above the micro-stop threshold.")
    stop_count = _units("Downtime stops that started in the period.")
    failure_count = _units("Breakdown stops that started in the period.")
    mtbf_seconds = _seconds("Mean time between failures: run / failures.", allow_null=True)
    mttr_seconds = _seconds("Mean time to repair: failures' duration / failures.", allow_null=True)


class DowntimeParetoSerializer(serializers.Serializer):
    pareto_rank = _units("1 cost the most time.")
    key = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="Reason code, station code or shift name; null for stops without a reason.",
    )
    name = serializers.CharField(read_only=True)
    stop_count = _units("Downtime stops that started in the period.")
    small_stop_count = _units("Small stops that started in the period.")
    downtime_seconds = _seconds("Time lost to downtime (availability).")
    small_stop_seconds = _seconds("Time lost to small stops (performance).")
    lost_seconds = _seconds("Both.")
    share = _ratio("This row's part of all lost time.")
    cumulative_share = _ratio("This row's and the rows ranked above it.")


class DowntimeStopSerializer(serializers.Serializer):
    site = serializers.CharField(read_only=True)
    line = serializers.CharField(read_only=True)
    station = serializers.CharField(read_only=True)
    shift_name = serializers.CharField(read_only=True)
    shift_start = serializers.DateTimeField(read_only=True)
    business_date = serializers.DateField(read_only=True)
    reason_code = serializers.CharField(read_only=True, allow_null=True)
    reason_name = serializers.CharField(read_only=True)
    root_reason_code = serializers.CharField(read_only=True, allow_null=True)
    reason_path = serializers.CharField(read_only=True, allow_null=True)
    loss_category = serializers.CharField(read_only=True, help_text="breakdown or setup.")
    loss = serializers.CharField(read_only=True, help_text="downtime or small_stop.")
    started_at = serializers.DateTimeField(read_only=True)
    ended_at = serializers.DateTimeField(read_only=True, help_text="Now while it lasts.")
    duration_seconds = _seconds("The whole stop.")
    lost_seconds = _seconds("Planned production time it cost in this shift.")
    stop_count = _units("1 in the shift where the stop started, else 0.")


class OeeScopeQuerySerializer(InputSerializer):
    line = serializers.IntegerField(
        min_value=1, max_value=POSTGRES_INT_MAX, required=False, help_text="Only this line (id)."
    )
    station = serializers.CharField(
        max_length=32, required=False, help_text="Only this station (code)."
    )

    references = {"line": selectors.line_by_id, "station": selectors.station_by_code}

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        line, station = attrs.get("line"), attrs.get("station")
        if line is not None and station is not None and station.line_id != line.pk:
            raise serializers.ValidationError({"station": [f"not on line {line.pk}"]})
        return attrs


class OeePeriodQuerySerializer(OeeScopeQuerySerializer):
    start = InstantField(help_text="From this instant (inclusive), with its time zone.")
    end = InstantField(help_text="Until this instant (exclusive); at most 366 days later.")

    def validate(self, attrs: dict) -> dict:
        if attrs["end"] <= attrs["start"]:
            raise serializers.ValidationError({"end": ["must be after start"]})
        if attrs["end"] - attrs["start"] > dt.timedelta(days=366):
            raise serializers.ValidationError({"end": ["at most 366 days after start"]})
        return super().validate(attrs)


class OeeOverPeriodQuerySerializer(OeePeriodQuerySerializer):
    per = serializers.ChoiceField(
        choices=["station", "line"], default="station", help_text="One row per station or line."
    )


class OeeDaysQuerySerializer(OeeScopeQuerySerializer):
    first_day = serializers.DateField(help_text="First business date (the shifts' local date).")
    last_day = serializers.DateField(help_text="Last business date, at most 365 days later.")


class OeePerShiftQuerySerializer(OeeDaysQuerySerializer):
    per = serializers.ChoiceField(
        choices=["station", "line"], default="station", help_text="One row per station or line."
    )


class OeePerDayQuerySerializer(OeeDaysQuerySerializer):
    per = serializers.ChoiceField(
        choices=["station", "line"], default="line", help_text="One row per station or line."
    )


class DowntimeParetoQuerySerializer(OeePeriodQuerySerializer):
    by = serializers.ChoiceField(
        choices=["reason", "station", "shift"],
        default="reason",
        help_text="Group stops by reason, station or shift name.",
    )
    depth = serializers.IntegerField(
        min_value=1,
        max_value=32,
        required=False,
        help_text="By reason: roll the reason tree up to this depth (1: root reasons).",
    )
