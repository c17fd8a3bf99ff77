"""One FilterSet per model: the query parameters of the REST lists (and of any HTML list or
GraphQL field that wants the same filters).

References are filtered by the codes the plant uses (station code, product code, unit serial,
VIN, work order external id); lines and areas, whose codes repeat across the plant, by id.
Time ranges are `<name>_after` / `<name>_before` in ISO 8601 (both inclusive); `at` asks what
was true at one instant.
"""

from __future__ import annotations

import datetime as dt

from django import forms
from django.contrib.auth import get_user_model
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField, RangeField
from django_filters.widgets import DateRangeWidget

from mes import selectors
from mes.models import (
    Area,
    AuditAction,
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
    ScrapReason,
    Severity,
    Shift,
    Site,
    Station,
    StationType,
    StationVisit,
    Unit,
    UnitStatus,
    WorkOrder,
    WorkOrderStatus,
)


class IdFilter(filters.Filter):
    """A whole-number id (django-filter's NumberFilter would accept 1.5 and round it)."""

    field_class = forms.IntegerField


class InstantField(IsoDateTimeField):
    """An ISO 8601 instant, as UTC (without an offset it is UTC). ISO allows offsets up to
    ±23:59; PostgreSQL refuses those beyond ±15:59, so the database only ever sees UTC."""

    def to_python(self, value):
        instant = super().to_python(value)
        if instant is None:
            return None
        try:
            return instant.astimezone(dt.UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before the year 1 in UTC
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None


class InstantRangeField(RangeField):
    widget = DateRangeWidget  # `<name>_after` and `<name>_before`

    def __init__(self, *args, **kwargs):
        super().__init__((InstantField(), InstantField()), *args, **kwargs)


class InstantFilter(filters.IsoDateTimeFilter):
    field_class = InstantField


class InstantRangeFilter(filters.IsoDateTimeFromToRangeFilter):
    field_class = InstantRangeField


class SiteFilterSet(filters.FilterSet):
    code = filters.CharFilter()

    class Meta:
        model = Site
        fields = ["code"]


class AreaFilterSet(filters.FilterSet):
    site = filters.CharFilter(field_name="site__code", help_text="Site code.")
    code = filters.CharFilter()

    class Meta:
        model = Area
        fields = ["site", "code"]


class LineFilterSet(filters.FilterSet):
    site = filters.CharFilter(field_name="area__site__code", help_text="Site code.")
    area = IdFilter(field_name="area_id", help_text="Area id.")
    code = filters.CharFilter()

    class Meta:
        model = Line
        fields = ["site", "area", "code"]


class StationFilterSet(filters.FilterSet):
    line = IdFilter(field_name="line_id", help_text="Line id.")
    code = filters.CharFilter()
    station_type = filters.MultipleChoiceFilter(choices=StationType.choices)

    class Meta:
        model = Station
        fields = ["line", "code", "station_type"]


class ProductFilterSet(filters.FilterSet):
    code = filters.CharFilter()

    class Meta:
        model = Product
        fields = ["code"]


class RouteFilterSet(filters.FilterSet):
    product = filters.CharFilter(field_name="product__code", help_text="Product code.")
    line = IdFilter(field_name="line_id", help_text="Line id.")

    class Meta:
        model = Route
        fields = ["product", "line"]


class WorkOrderFilterSet(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=WorkOrderStatus.choices)
    line = IdFilter(field_name="line_id", help_text="Line id.")
    product = filters.CharFilter(field_name="product__code", help_text="Product code.")
    due = InstantRangeFilter(field_name="due_at")
    created = InstantRangeFilter(field_name="created_at")

    class Meta:
        model = WorkOrder
        fields = ["status", "line", "product", "due", "created"]


class UnitFilterSet(filters.FilterSet):
    serial = filters.CharFilter()
    vin = filters.CharFilter()
    work_order = filters.CharFilter(
        field_name="work_order__external_id", help_text="Work order external id."
    )
    status = filters.MultipleChoiceFilter(choices=UnitStatus.choices)

    class Meta:
        model = Unit
        fields = ["serial", "vin", "work_order", "status"]


class StationVisitFilterSet(filters.FilterSet):
    station = filters.CharFilter(field_name="station__code", help_text="Station code.")
    unit = filters.CharFilter(field_name="unit__serial", help_text="Unit serial.")
    vin = filters.CharFilter(field_name="unit__vin")
    arrived = InstantRangeFilter(field_name="arrived_at")
    open = filters.BooleanFilter(
        field_name="left_at", lookup_expr="isnull", help_text="Only visits still in progress."
    )
    at = InstantFilter(
        method="filter_at", help_text="Only visits in progress at this instant (as-of query)."
    )

    class Meta:
        model = StationVisit
        fields = ["station", "unit", "vin", "arrived", "open", "at"]

    def filter_at(self, queryset, name, value):
        return selectors.visits_covering(queryset, value)


class FirmwareFlashFilterSet(filters.FilterSet):
    unit = filters.CharFilter(field_name="unit__serial", help_text="Unit serial.")
    vin = filters.CharFilter(field_name="unit__vin")
    station = filters.CharFilter(field_name="station__code", help_text="Station code.")
    component = filters.CharFilter()
    version = filters.CharFilter()
    flashed = InstantRangeFilter(field_name="flashed_at")

    class Meta:
        model = FirmwareFlash
        fields = ["unit", "vin", "station", "component", "version", "flashed"]


class ShiftFilterSet(filters.FilterSet):
    line = IdFilter(field_name="line_id", help_text="Line id.")
    business_date = filters.DateFromToRangeFilter()
    at = InstantFilter(method="filter_at", help_text="The shift running then.")

    class Meta:
        model = Shift
        fields = ["line", "business_date", "at"]

    def filter_at(self, queryset, name, value):
        return selectors.shifts_covering(queryset, value)


class DowntimeReasonFilterSet(filters.FilterSet):
    parent = filters.CharFilter(field_name="parent__code", help_text="Parent reason code.")
    planned = filters.BooleanFilter()

    class Meta:
        model = DowntimeReason
        fields = ["parent", "planned"]


class DowntimeEventFilterSet(filters.FilterSet):
    station = filters.CharFilter(field_name="station__code", help_text="Station code.")
    reason = filters.CharFilter(field_name="reason__code", help_text="Downtime reason code.")
    planned = filters.BooleanFilter()
    open = filters.BooleanFilter(
        field_name="ended_at", lookup_expr="isnull", help_text="Only downtimes not yet ended."
    )
    started = InstantRangeFilter(field_name="started_at")

    class Meta:
        model = DowntimeEvent
        fields = ["station", "reason", "planned", "open", "started"]


class ScrapReasonFilterSet(filters.FilterSet):
    code = filters.CharFilter()

    class Meta:
        model = ScrapReason
        fields = ["code"]


class ProductionCountFilterSet(filters.FilterSet):
    station = filters.CharFilter(field_name="station__code", help_text="Station code.")
    work_order = filters.CharFilter(
        field_name="work_order__external_id", help_text="Work order external id."
    )
    interval_start = InstantRangeFilter()

    class Meta:
        model = ProductionCount
        fields = ["station", "work_order", "interval_start"]


class DefectCodeFilterSet(filters.FilterSet):
    code = filters.CharFilter()

    class Meta:
        model = DefectCode
        fields = ["code"]


class QualityEventFilterSet(filters.FilterSet):
    defect = filters.CharFilter(field_name="defect__code", help_text="Defect code.")
    severity = filters.MultipleChoiceFilter(choices=Severity.choices)
    source = filters.MultipleChoiceFilter(choices=DetectionSource.choices)
    unit = filters.CharFilter(field_name="unit__serial", help_text="Unit serial.")
    vin = filters.CharFilter(field_name="unit__vin")
    station = filters.CharFilter(field_name="station__code", help_text="Station code.")
    found = InstantRangeFilter(field_name="found_at")

    class Meta:
        model = QualityEvent
        fields = ["defect", "severity", "source", "unit", "vin", "station", "found"]


class AuditEntryFilterSet(filters.FilterSet):
    model = filters.CharFilter(help_text="App label and model, e.g. mes.workorder.")
    object_id = filters.CharFilter()
    actor = filters.CharFilter(field_name="actor_name", help_text="User name or source.")
    source = filters.CharFilter(help_text="api, admin, webhook, system or command.")
    action = filters.ChoiceFilter(choices=AuditAction.choices)
    at = InstantRangeFilter()

    class Meta:
        model = AuditEntry
        fields = ["model", "object_id", "actor", "source", "action", "at"]


class UserFilterSet(filters.FilterSet):
    username = filters.CharFilter()
    is_active = filters.BooleanFilter()
    role = filters.CharFilter(field_name="groups__name", help_text="Role (group) name.")

    class Meta:
        model = get_user_model()
        fields = ["username", "is_active", "role"]
