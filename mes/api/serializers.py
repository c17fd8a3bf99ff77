"""Shapes of the API: read-only representations, and one small input per operation.

Input serializers only check the shape of a request. References (station codes, serials, …)
are resolved after every field is valid, so a malformed body is a 400 and a well-formed body
naming something unknown is a 422. The rules of the MES stay in mes/services.py.
"""

from __future__ import annotations

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
