"""Django admin for the MES: reference data is edited here, shop-floor records are only read.

Every add, change and delete made through the admin — of any model, inline rows and cascades
included — writes an audit entry (source "admin", the signed-in user, before and after) in the
transaction of the change: `AuditedAdmin` does it once for every ModelAdmin below.

Changes with business rules do not go through admin forms: work-order transitions, new work
orders and units, closing downtimes and generating shifts call `mes.services`, which audit and
publish MES state themselves. Records the shop floor writes (visits, firmware, counts, downtime,
quality events) are read-only here, because editing them would bypass the MES-state messages
the telemetry join depends on.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections.abc import Callable, Iterable

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, Permission
from django.db import IntegrityError, models, router, transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.deletion import Collector
from django.http import HttpResponseRedirect
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from mes import services
from mes.audit import REDACTED_PREFIX, SECRET_FIELDS, audit_context, audit_record, snapshot
from mes.errors import MesError
from mes.models import (
    ApiToken,
    Area,
    AuditAction,
    AuditEntry,
    DefectCode,
    DowntimeEvent,
    DowntimeReason,
    FirmwareFlash,
    Line,
    OutboxMessage,
    Product,
    ProductionCount,
    QualityEvent,
    Route,
    RouteOperation,
    ScrapReason,
    Shift,
    ShiftBreak,
    ShiftPattern,
    ShiftTemplate,
    Site,
    Station,
    StationSignal,
    StationVisit,
    Unit,
    WebhookInboxEvent,
    WebhookIntegration,
    WorkOrder,
    WorkOrderStatus,
)

User = get_user_model()

ADMIN_SOURCE = "admin"

# Shown masked on the audit pages even if some other writer stored them in clear.
SECRET_KEYS = SECRET_FIELDS


def audit_snapshot(instance: models.Model) -> dict:
    """`mes.audit.snapshot` with secrets fingerprinted and many-to-many values (a user's groups,
    a group's permissions) included, since those are what an access review asks about."""
    data = snapshot(instance)  # secrets are fingerprinted there
    if instance.pk is not None:
        for field in instance._meta.many_to_many:
            related = getattr(instance, field.name)
            if field.related_model is Permission:
                values = [
                    f"{app}.{codename}"
                    for app, codename in related.values_list("content_type__app_label", "codename")
                ]
            else:
                values = [str(obj) for obj in related.all()]
            data[field.name] = sorted(values)
    return data


def _stored_snapshots(model: type[models.Model], pks: Iterable) -> dict:
    """Snapshots of the rows as the database holds them, locked until the change commits.
    (A form has already written its input into the in-memory instance.)"""
    pks = [pk for pk in pks if pk is not None]
    if not pks:
        return {}
    rows = model._default_manager.select_for_update(of=("self",)).filter(pk__in=pks)
    return {row.pk: audit_snapshot(row) for row in rows}


def _record(request, *, action: str, instance: models.Model, before=None, after=None) -> None:
    with audit_context(user=request.user, source=ADMIN_SOURCE):
        audit_record(action=action, instance=instance, before=before, after=after)


def _delete_audited(request, objs: list[models.Model]) -> None:
    """Delete `objs` and everything the deletion cascades to, auditing each row removed and
    each reference set to NULL, then delete exactly what was audited."""
    if not objs:
        return
    using = router.db_for_write(type(objs[0]))
    collector = Collector(using=using, origin=objs)
    collector.collect(objs)
    # The trail outlives accounts (AuditEntry.actor has no database constraint): never try to
    # rewrite it, which its append-only trigger would refuse anyway.
    for key in [key for key in collector.field_updates if key[0].model is AuditEntry]:
        del collector.field_updates[key]
    doomed = [obj for instances in collector.data.values() for obj in instances]
    doomed += [obj for queryset in collector.fast_deletes for obj in queryset]
    with transaction.atomic(using=using):
        for (field, value), groups in collector.field_updates.items():
            for group in groups:
                for obj in group:
                    before = audit_snapshot(obj)
                    after = {**before, field.name: value}
                    _record(
                        request, action=AuditAction.UPDATE, instance=obj, before=before, after=after
                    )
        for obj in doomed:
            _record(request, action=AuditAction.DELETE, instance=obj, before=audit_snapshot(obj))
        collector.delete()


def _refusal(error: Exception) -> str:
    if isinstance(error, MesError):
        return error.detail
    constraint = getattr(getattr(error.__cause__, "diag", None), "constraint_name", None)
    return "refused by the database: " + services.CONSTRAINT_MESSAGES.get(
        constraint, constraint or "constraint violated"
    )


class _DryRunRollback(Exception):
    pass


def _check_with_service(form: forms.Form, call: Callable[[], object]) -> None:
    """Run the service in a savepoint that is always rolled back, so its refusal shows on the
    form next to the input instead of after the admin has already accepted it. The service
    stays the only place the rules live; the real call happens in `save_model`."""
    try:
        with transaction.atomic():
            call()
            raise _DryRunRollback
    except _DryRunRollback:
        pass
    except MesError as error:
        form.add_error(None, error.detail)


def _pretty_json(value: object) -> str:
    return json.dumps(_masked(value), indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _masked(value: object) -> object:
    if isinstance(value, dict):
        return {
            key: (
                "•••••• (hidden)"
                if key in SECRET_KEYS and item and not str(item).startswith(REDACTED_PREFIX)
                else _masked(item)
            )
            for key, item in value.items()
        }
    return value


def _still_open_filter(field: str, title: str) -> type[admin.SimpleListFilter]:
    class StillOpen(admin.SimpleListFilter):
        parameter_name = f"{field}_open"

        def lookups(self, request, model_admin):
            return [("yes", "open"), ("no", "ended")]

        def queryset(self, request, queryset):
            if self.value() in ("yes", "no"):
                return queryset.filter(**{f"{field}__isnull": self.value() == "yes"})
            return queryset

    StillOpen.title = title
    return StillOpen


def _duration(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None:
        return "-"
    seconds = int(((end or timezone.now()) - start).total_seconds())
    text = f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return text if end else f"{text} (open)"


# -- the audited base --------------------------------------------------------------------------


class AuditedAdmin(admin.ModelAdmin):
    """Writes an audit entry for every add, change and delete made through this admin,
    including inline rows and what a deletion cascades to, in the change's transaction."""

    def save_model(self, request, obj, form, change):
        before = _stored_snapshots(type(obj), [obj.pk]).get(obj.pk) if change else None
        with audit_context(user=request.user, source=ADMIN_SOURCE):
            super().save_model(request, obj, form, change)
        # Recorded in save_related, once many-to-many values are saved too.
        obj._admin_audit_pending = (change, before)

    def save_related(self, request, form, formsets, change):
        form.save_m2m()
        pending = getattr(form.instance, "_admin_audit_pending", None)
        if pending is not None:
            del form.instance._admin_audit_pending
            was_change, before = pending
            after = audit_snapshot(form.instance)
            if not was_change:
                _record(request, action=AuditAction.CREATE, instance=form.instance, after=after)
            elif after != before:
                _record(
                    request,
                    action=AuditAction.UPDATE,
                    instance=form.instance,
                    before=before,
                    after=after,
                )
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def save_formset(self, request, form, formset, change):
        instances = formset.save(commit=False)
        model = formset.model
        changed = [obj for obj, _fields in formset.changed_objects]
        befores = _stored_snapshots(model, [obj.pk for obj in changed])
        _delete_audited(request, list(formset.deleted_objects))
        with audit_context(user=request.user, source=ADMIN_SOURCE):
            for obj in instances:
                obj.save()
        for obj in formset.new_objects:
            _record(request, action=AuditAction.CREATE, instance=obj, after=audit_snapshot(obj))
        for obj in changed:
            _record(
                request,
                action=AuditAction.UPDATE,
                instance=obj,
                before=befores.get(obj.pk),
                after=audit_snapshot(obj),
            )
        formset.save_m2m()

    def delete_model(self, request, obj):
        _delete_audited(request, [obj])

    def delete_queryset(self, request, queryset):
        # The "delete selected" action is not wrapped in a transaction by Django.
        with transaction.atomic(using=router.db_for_write(self.model)):
            _delete_audited(request, list(queryset))

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # The database has the last word (exclusion constraints, a concurrent transition): its
        # refusal is shown to the user instead of a server error, and nothing was saved.
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except (MesError, IntegrityError) as error:
            self.message_user(request, f"Not saved: {_refusal(error)}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def history_view(self, request, object_id, extra_context=None):
        """'History' opens this object's audit trail, which covers every source, not only
        admin edits."""
        if not request.user.has_perm("mes.view_auditentry"):
            return super().history_view(request, object_id, extra_context)
        query = urlencode({"model": self.opts.label_lower, "object_id": object_id})
        return HttpResponseRedirect(f"{reverse('admin:mes_auditentry_changelist')}?{query}")


class ReadOnlyAdmin(AuditedAdmin):
    """Records written by the API and webhook services: viewable, never edited here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        return self.fields


# -- equipment ---------------------------------------------------------------------------------


@admin.register(Site)
class SiteAdmin(AuditedAdmin):
    list_display = ["code", "name", "timezone"]
    search_fields = ["code", "name"]
    ordering = ["code"]


@admin.register(Area)
class AreaAdmin(AuditedAdmin):
    list_display = ["code", "name", "site"]
    list_select_related = ["site"]
    list_filter = ["site"]
    search_fields = ["code", "name", "site__code"]
    autocomplete_fields = ["site"]
    ordering = ["site__code", "code"]


@admin.register(Line)
class LineAdmin(AuditedAdmin):
    list_display = ["code", "name", "area", "microstop_seconds", "startup_seconds"]
    fieldsets = [
        (None, {"fields": ["area", "code", "name"]}),
        # How OEE judges this line's stops and rejects (docs/oee.md).
        ("OEE", {"fields": ["microstop_seconds", "startup_seconds"]}),
    ]
    list_select_related = ["area__site"]
    # Not "area": its choices' labels read each area's site, one query per area.
    list_filter = ["area__site"]
    search_fields = ["code", "name"]
    autocomplete_fields = ["area"]
    ordering = ["area__site__code", "area__code", "code"]


class StationSignalInline(admin.TabularInline):
    model = StationSignal
    extra = 0
    fields = ["name", "unit", "nominal_min", "nominal_max"]


@admin.register(Station)
class StationAdmin(AuditedAdmin):
    list_display = ["code", "name", "line", "position", "station_type", "count_source"]
    list_select_related = ["line"]
    list_filter = ["line__area__site", "line", "station_type", "count_source"]
    fieldsets = [
        (None, {"fields": ["line", "code", "name", "position", "station_type"]}),
        # Where the station's OEE counts come from, and its own small-stop threshold.
        (
            "OEE",
            {"fields": ["count_source", "count_signal", "reject_signal", "microstop_seconds"]},
        ),
    ]
    search_fields = ["code", "name", "line__code"]
    autocomplete_fields = ["line"]
    ordering = ["line__code", "position"]
    inlines = [StationSignalInline]


@admin.register(StationSignal)
class StationSignalAdmin(AuditedAdmin):
    list_display = ["name", "station", "unit", "nominal_min", "nominal_max"]
    list_select_related = ["station"]
    list_filter = ["station__line", "unit"]
    search_fields = ["name", "station__code", "station__name"]
    autocomplete_fields = ["station"]
    ordering = ["station__code", "name"]


# -- products and routes -------------------------------------------------------------------


@admin.register(Product)
class ProductAdmin(AuditedAdmin):
    list_display = ["code", "name"]
    search_fields = ["code", "name"]
    ordering = ["code"]


class RouteOperationInline(admin.TabularInline):
    model = RouteOperation
    extra = 0
    fields = ["sequence", "name", "station", "ideal_cycle_time_s"]
    autocomplete_fields = ["station"]
    ordering = ["sequence"]


@admin.register(Route)
class RouteAdmin(AuditedAdmin):
    list_display = ["product", "line", "ideal_cycle_time_s", "operation_count"]
    list_select_related = ["product", "line"]
    list_filter = ["line", "product"]
    search_fields = ["product__code", "product__name", "line__code"]
    autocomplete_fields = ["product", "line"]
    inlines = [RouteOperationInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(operation_total=Count("operations"))

    @admin.display(description="operations", ordering="operation_total")
    def operation_count(self, route):
        return route.operation_total


@admin.register(RouteOperation)
class RouteOperationAdmin(AuditedAdmin):
    list_display = ["route", "sequence", "name", "station", "ideal_cycle_time_s"]
    list_select_related = ["route__product", "route__line", "station"]
    list_filter = ["route__line", "route__product"]
    search_fields = ["name", "station__code", "route__product__code"]
    autocomplete_fields = ["route", "station"]
    ordering = ["route__product__code", "sequence"]


# -- work orders and units ---------------------------------------------------------------------


class WorkOrderAddForm(forms.ModelForm):
    class Meta:
        model = WorkOrder
        fields = ["external_id", "product", "line", "quantity", "due_at"]

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            _check_with_service(
                self, lambda: services.work_order_create(**_work_order_input(cleaned))
            )
        return cleaned


def _work_order_input(cleaned: dict) -> dict:
    return {
        "external_id": cleaned["external_id"],
        "product": cleaned["product"],
        "line": cleaned["line"],
        "quantity": cleaned["quantity"],
        "due_at": cleaned.get("due_at"),
    }


class UnitInline(ReadOnlyInline):
    model = Unit
    fields = ["serial", "vin", "status", "created_at"]
    show_change_link = True
    ordering = ["serial"]


WORK_ORDER_TIMESTAMPS = [
    "released_at",
    "started_at",
    "completed_at",
    "cancelled_at",
    "cancel_reason",
    "created_at",
    "updated_at",
]


@admin.register(WorkOrder)
class WorkOrderAdmin(AuditedAdmin):
    list_display = [
        "external_id",
        "product",
        "line",
        "status",
        "quantity",
        "unit_count",
        "due_at",
        "released_at",
        "started_at",
        "completed_at",
    ]
    list_select_related = ["product", "line"]
    list_filter = ["status", "line", "product"]
    search_fields = ["external_id", "product__code"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    autocomplete_fields = ["product", "line"]
    inlines = [UnitInline]
    actions = ["release", "start", "complete", "cancel"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(unit_total=Count("units"))

    @admin.display(description="units", ordering="unit_total")
    def unit_count(self, work_order):
        url = reverse("admin:mes_unit_changelist") + f"?work_order__id__exact={work_order.pk}"
        return format_html('<a href="{}">{}</a>', url, work_order.unit_total)

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []  # a new order has no units yet

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = WorkOrderAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        readonly = ["status", *WORK_ORDER_TIMESTAMPS]
        if obj.status != WorkOrderStatus.PLANNED:
            # What it builds and where is fixed once the floor has been told about it.
            readonly = ["external_id", "product", "line", *readonly]
        return readonly

    def get_fields(self, request, obj=None):
        if obj is None:
            return WorkOrderAddForm._meta.fields
        return [
            "external_id",
            "product",
            "line",
            "quantity",
            "due_at",
            "status",
            *WORK_ORDER_TIMESTAMPS,
        ]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        # New orders go through the service (it checks the route and audits the creation).
        with audit_context(user=request.user, source=ADMIN_SOURCE):
            created = services.work_order_create(**_work_order_input(form.cleaned_data))
        _adopt(obj, created)

    def has_delete_permission(self, request, obj=None):
        # Only a planned order may vanish; once released it is cancelled, never deleted.
        if obj is not None and obj.status != WorkOrderStatus.PLANNED:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # bulk deletion would skip the planned-only rule
        return actions

    def has_release_permission(self, request):
        return request.user.has_perm("mes.release_workorder")

    def has_start_permission(self, request):
        return request.user.has_perm("mes.start_workorder")

    def has_complete_permission(self, request):
        return request.user.has_perm("mes.complete_workorder")

    def has_cancel_permission(self, request):
        return request.user.has_perm("mes.cancel_workorder")

    @admin.action(description="Release selected work orders", permissions=["release"])
    def release(self, request, queryset):
        self._transition(
            request, queryset, "released", lambda wo: services.work_order_release(work_order=wo)
        )

    @admin.action(description="Start selected work orders", permissions=["start"])
    def start(self, request, queryset):
        self._transition(
            request, queryset, "started", lambda wo: services.work_order_start(work_order=wo)
        )

    @admin.action(description="Complete selected work orders", permissions=["complete"])
    def complete(self, request, queryset):
        self._transition(
            request, queryset, "completed", lambda wo: services.work_order_complete(work_order=wo)
        )

    @admin.action(description="Cancel selected work orders", permissions=["cancel"])
    def cancel(self, request, queryset):
        reason = f"cancelled in admin by {request.user.get_username()}"
        self._transition(
            request,
            queryset,
            "cancelled",
            lambda work_order: services.work_order_cancel(work_order=work_order, reason=reason),
        )

    def _transition(self, request, queryset, done: str, step: Callable) -> None:
        """One service call per order, each its own transaction: one refusal does not undo
        the others, and each outcome is reported."""
        succeeded, refused = [], []
        for work_order in queryset.select_related("product", "line").order_by("external_id"):
            try:
                with audit_context(user=request.user, source=ADMIN_SOURCE):
                    step(work_order)
            except MesError as error:
                refused.append(error.detail)
            else:
                succeeded.append(work_order.external_id)
        if succeeded:
            self.message_user(
                request,
                f"{len(succeeded)} work order(s) {done}: {', '.join(succeeded)}",
                messages.SUCCESS,
            )
        if refused:
            self.message_user(
                request, f"{len(refused)} refused: {'; '.join(refused)}", messages.ERROR
            )


def _adopt(target: models.Model, source: models.Model) -> None:
    """Make the admin's unsaved instance the row a service created, so the admin's redirect
    and its log point at it."""
    for field in source._meta.concrete_fields:
        setattr(target, field.attname, getattr(source, field.attname))
    target._state.adding = False
    target._state.db = source._state.db


class UnitAddForm(forms.ModelForm):
    class Meta:
        model = Unit
        fields = ["work_order", "serial", "vin"]

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            _check_with_service(self, lambda: services.unit_create(**_unit_input(cleaned)))
        return cleaned


def _unit_input(cleaned: dict) -> dict:
    return {
        "work_order": cleaned["work_order"],
        "serial": cleaned["serial"],
        "vin": cleaned.get("vin") or None,
    }


class StationVisitInline(ReadOnlyInline):
    model = StationVisit
    fields = ["station", "arrived_at", "left_at"]
    ordering = ["arrived_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("station", "unit")


class FirmwareFlashInline(ReadOnlyInline):
    model = FirmwareFlash
    fields = ["component", "version", "station", "flashed_at"]
    ordering = ["flashed_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("station", "unit")


class QualityEventInline(ReadOnlyInline):
    model = QualityEvent
    fields = ["found_at", "defect", "severity", "source", "station", "detected_by"]
    ordering = ["found_at"]

    def get_queryset(self, request):
        return (
            super().get_queryset(request).select_related("defect", "station", "detected_by", "unit")
        )


@admin.register(Unit)
class UnitAdmin(AuditedAdmin):
    list_display = [
        "serial",
        "vin",
        "work_order",
        "product",
        "status",
        "current_station",
        "created_at",
    ]
    list_select_related = ["work_order__product"]
    list_filter = ["status", "work_order__line", "work_order__product"]
    search_fields = ["serial", "vin", "work_order__external_id"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "serial"]
    autocomplete_fields = ["work_order"]
    inlines = [StationVisitInline, FirmwareFlashInline, QualityEventInline]

    def get_queryset(self, request):
        here = StationVisit.objects.filter(unit=OuterRef("pk"), left_at__isnull=True)
        return (
            super()
            .get_queryset(request)
            .annotate(current_station_code=Subquery(here.values("station__code")[:1]))
        )

    @admin.display(description="product", ordering="work_order__product__code")
    def product(self, unit):
        return unit.work_order.product.code

    @admin.display(description="at station", ordering="current_station_code")
    def current_station(self, unit):
        return unit.current_station_code or "-"

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []  # a new unit has no history yet

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = UnitAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return UnitAddForm._meta.fields
        return ["serial", "vin", "work_order", "status", "created_at", "updated_at"]

    def get_readonly_fields(self, request, obj=None):
        # Where a unit is and what it belongs to come from the floor, through the services.
        return [] if obj is None else ["work_order", "status", "created_at", "updated_at"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        with audit_context(user=request.user, source=ADMIN_SOURCE):
            created = services.unit_create(**_unit_input(form.cleaned_data))
        _adopt(obj, created)


@admin.register(StationVisit)
class StationVisitAdmin(ReadOnlyAdmin):
    list_display = ["unit", "work_order", "station", "arrived_at", "left_at", "duration"]
    list_select_related = ["unit__work_order", "station"]
    list_filter = [
        _still_open_filter("left_at", "still at the station"),
        "station__line",
        "station",
    ]
    search_fields = ["unit__serial", "unit__vin", "station__code"]
    date_hierarchy = "arrived_at"
    ordering = ["-arrived_at"]

    @admin.display(description="work order", ordering="unit__work_order__external_id")
    def work_order(self, visit):
        return visit.unit.work_order.external_id

    @admin.display(description="duration")
    def duration(self, visit):
        return _duration(visit.arrived_at, visit.left_at)


@admin.register(FirmwareFlash)
class FirmwareFlashAdmin(ReadOnlyAdmin):
    list_display = ["unit", "component", "version", "station", "flashed_at"]
    list_select_related = ["unit", "station"]
    list_filter = ["component", "station"]
    search_fields = ["unit__serial", "unit__vin", "component", "version"]
    date_hierarchy = "flashed_at"
    ordering = ["-flashed_at"]


# -- shifts --------------------------------------------------------------------------------


class ShiftTemplateInline(admin.TabularInline):
    model = ShiftTemplate
    extra = 0
    fields = ["name", "starts", "ends", "weekdays", "breaks"]


SHIFT_HORIZON_DAYS = 14


@admin.register(ShiftPattern)
class ShiftPatternAdmin(AuditedAdmin):
    list_display = ["name", "line", "template_count"]
    list_select_related = ["line"]
    list_filter = ["line"]
    search_fields = ["name", "line__code"]
    autocomplete_fields = ["line"]
    inlines = [ShiftTemplateInline]
    actions = ["generate_shifts"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(template_total=Count("templates"))

    @admin.display(description="shifts in the pattern", ordering="template_total")
    def template_count(self, pattern):
        return pattern.template_total

    def has_generate_permission(self, request):
        return request.user.has_perm("mes.add_shift")

    @admin.action(
        description=f"Generate shifts for the next {SHIFT_HORIZON_DAYS} days",
        permissions=["generate"],
    )
    def generate_shifts(self, request, queryset):
        for pattern in queryset.select_related("line__area__site"):
            # "Today" on the site's own calendar, which its shift templates are written in.
            today = timezone.localdate(timezone=zoneinfo.ZoneInfo(pattern.line.area.site.timezone))
            try:
                with audit_context(user=request.user, source=ADMIN_SOURCE):
                    shifts = services.shifts_generate(
                        pattern=pattern,
                        first_day=today,
                        last_day=today + dt.timedelta(days=SHIFT_HORIZON_DAYS - 1),
                    )
            except MesError as error:
                self.message_user(request, f"{pattern}: {error.detail}", messages.ERROR)
            else:
                self.message_user(request, f"{pattern}: {len(shifts)} new shift(s)")


@admin.register(ShiftTemplate)
class ShiftTemplateAdmin(AuditedAdmin):
    list_display = ["name", "pattern", "starts", "ends", "weekdays"]
    list_select_related = ["pattern__line"]
    list_filter = ["pattern__line"]
    search_fields = ["name", "pattern__name"]
    autocomplete_fields = ["pattern"]


class ShiftBreakInline(admin.TabularInline):
    model = ShiftBreak
    extra = 0
    fields = ["name", "starts_at", "ends_at"]


@admin.register(Shift)
class ShiftAdmin(AuditedAdmin):
    list_display = ["business_date", "name", "line", "starts_at", "ends_at", "template"]
    list_select_related = ["line", "template"]
    list_filter = ["line", "name"]
    search_fields = ["name", "line__code"]
    date_hierarchy = "starts_at"
    ordering = ["-starts_at"]
    autocomplete_fields = ["line", "template"]
    inlines = [ShiftBreakInline]


@admin.register(ShiftBreak)
class ShiftBreakAdmin(AuditedAdmin):
    list_display = ["name", "shift", "starts_at", "ends_at"]
    list_select_related = ["shift__line"]
    list_filter = ["shift__line"]
    search_fields = ["name", "shift__name"]
    date_hierarchy = "starts_at"
    ordering = ["-starts_at"]
    autocomplete_fields = ["shift"]


# -- downtime, counts, quality -------------------------------------------------------------


class DowntimeReasonChildInline(admin.TabularInline):
    model = DowntimeReason
    fk_name = "parent"
    extra = 0
    fields = ["code", "name", "planned", "loss_category"]
    verbose_name = "child reason"
    verbose_name_plural = "child reasons"


@admin.register(DowntimeReason)
class DowntimeReasonAdmin(AuditedAdmin):
    list_display = ["code", "name", "parent", "planned", "loss_category"]
    list_select_related = ["parent"]
    list_filter = ["planned", "loss_category", ("parent", admin.EmptyFieldListFilter)]
    search_fields = ["code", "name"]
    autocomplete_fields = ["parent"]
    inlines = [DowntimeReasonChildInline]


@admin.register(DowntimeEvent)
class DowntimeEventAdmin(ReadOnlyAdmin):
    list_display = [
        "station",
        "reason",
        "started_at",
        "ended_at",
        "duration",
        "planned",
        "reported_by",
    ]
    list_select_related = ["station", "reason", "reported_by"]
    list_filter = [
        _still_open_filter("ended_at", "still down"),
        "planned",
        "station__line",
        "station",
        "reason",
    ]
    search_fields = ["station__code", "reason__code", "comment"]
    date_hierarchy = "started_at"
    ordering = ["-started_at"]
    actions = ["close_now"]

    @admin.display(description="duration")
    def duration(self, downtime):
        return _duration(downtime.started_at, downtime.ended_at)

    def has_close_permission(self, request):
        return request.user.has_perm("mes.change_downtimeevent")

    @admin.action(
        description="End selected downtimes now (with their recorded reason)",
        permissions=["close"],
    )
    def close_now(self, request, queryset):
        # The admin gives no reason of its own: a downtime without one is refused by the
        # service and has to be closed where the reason is asked for.
        closed, refused = [], []
        for downtime in queryset.select_related("station"):
            try:
                with audit_context(user=request.user, source=ADMIN_SOURCE):
                    services.downtime_close(downtime=downtime)
            except MesError as error:
                refused.append(f"{downtime}: {error.detail}")
            else:
                closed.append(str(downtime))
        if closed:
            self.message_user(request, f"{len(closed)} downtime(s) ended", messages.SUCCESS)
        if refused:
            self.message_user(
                request, f"{len(refused)} refused: {'; '.join(refused)}", messages.ERROR
            )


@admin.register(ScrapReason)
class ScrapReasonAdmin(AuditedAdmin):
    list_display = ["code", "name"]
    search_fields = ["code", "name"]


@admin.register(ProductionCount)
class ProductionCountAdmin(ReadOnlyAdmin):
    list_display = [
        "station",
        "work_order",
        "interval_start",
        "interval_end",
        "good",
        "scrap",
        "scrap_reason",
    ]
    list_select_related = ["station", "work_order", "scrap_reason"]
    list_filter = ["station__line", "station", "scrap_reason"]
    search_fields = ["station__code", "work_order__external_id"]
    date_hierarchy = "interval_start"
    ordering = ["-interval_start"]


@admin.register(DefectCode)
class DefectCodeAdmin(AuditedAdmin):
    list_display = ["code", "name"]
    search_fields = ["code", "name"]


@admin.register(QualityEvent)
class QualityEventAdmin(ReadOnlyAdmin):
    list_display = ["found_at", "unit", "defect", "severity", "source", "station", "detected_by"]
    list_select_related = ["unit", "defect", "station", "detected_by"]
    list_filter = ["severity", "source", "defect", "station__line"]
    search_fields = ["unit__serial", "unit__vin", "defect__code", "description"]
    date_hierarchy = "found_at"
    ordering = ["-found_at"]


# -- integration: tokens, webhooks, outbox, audit ----------------------------------------------


class RevokedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "active"), ("expired", "expired"), ("revoked", "revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True, expires_at__gt=now)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


API_TOKEN_FIELDS = [
    "prefix",
    "name",
    "user",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
]


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedAdmin):
    """Tokens are issued by `POST /api/v1/auth/token`; here they are listed and revoked. The
    digest is never shown."""

    list_display = [*API_TOKEN_FIELDS, "state"]
    list_select_related = ["user"]
    list_filter = [RevokedFilter, "user"]
    search_fields = ["prefix", "name", "user__username"]
    date_hierarchy = "created_at"
    fields = API_TOKEN_FIELDS
    readonly_fields = API_TOKEN_FIELDS
    actions = ["revoke"]

    @admin.display(description="state")
    def state(self, token):
        if token.revoked_at:
            return "revoked"
        return "expired" if token.expires_at <= timezone.now() else "active"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Revoked tokens stay listed: which token acted when is part of the trail.
        return False

    def has_revoke_permission(self, request):
        # Revoking is the admin role's form of deleting a token (it holds delete_apitoken).
        return request.user.has_perm("mes.delete_apitoken")

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True):
            with transaction.atomic():
                before = audit_snapshot(token)
                # Conditional: a token revoked meanwhile keeps its first revocation time.
                if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
                    revoked_at=timezone.now()
                ):
                    token.refresh_from_db()
                    _record(
                        request,
                        action=AuditAction.UPDATE,
                        instance=token,
                        before=before,
                        after=audit_snapshot(token),
                    )
                    revoked += 1
        self.message_user(request, f"{revoked} token(s) revoked", messages.SUCCESS)


WEBHOOK_ROTATION_HELP = (
    "Write-only: the secret is never shown again. Leave empty to keep the current one. A new "
    "secret becomes current and the old one stays accepted as the previous secret while the "
    "legacy MES switches over (`manage.py webhook_integration rotate <name>` does the same "
    "and prints a generated secret)."
)
MIN_SECRET_LENGTH = 32


class WebhookIntegrationForm(forms.ModelForm):
    new_secret = forms.CharField(
        required=False,
        min_length=MIN_SECRET_LENGTH,
        max_length=128,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=WEBHOOK_ROTATION_HELP,
    )
    forget_previous_secret = forms.BooleanField(
        required=False,
        help_text=(
            "End a rotation: only the current secret is accepted from now on "
            "(as `manage.py webhook_integration retire-previous <name>`)."
        ),
    )

    class Meta:
        model = WebhookIntegration
        fields = ["name", "user", "is_active"]

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is None and not cleaned.get("new_secret"):
            self.add_error(
                "new_secret",
                f"A new integration needs the shared secret (at least {MIN_SECRET_LENGTH} "
                "characters, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`).",
            )
        return cleaned


@admin.register(WebhookIntegration)
class WebhookIntegrationAdmin(AuditedAdmin):
    form = WebhookIntegrationForm
    list_display = ["name", "user", "is_active", "secrets", "created_at"]
    list_select_related = ["user"]
    list_filter = ["is_active"]
    search_fields = ["name", "user__username"]
    autocomplete_fields = ["user"]
    readonly_fields = ["secrets", "created_at"]

    def get_fields(self, request, obj=None):
        fields = ["name", "user", "is_active", "new_secret"]
        if obj is not None:
            fields += ["forget_previous_secret", "secrets", "created_at"]
        return fields

    @admin.display(description="secrets")
    def secrets(self, integration):
        if integration.previous_secret:
            return "2 (rotating: the previous secret is still accepted)"
        return "1"

    def save_model(self, request, obj, form, change):
        new_secret = form.cleaned_data.get("new_secret")
        if new_secret:
            obj.previous_secret = obj.secret if change else ""
            obj.secret = new_secret
        if form.cleaned_data.get("forget_previous_secret"):
            obj.previous_secret = ""
        super().save_model(request, obj, form, change)


@admin.register(WebhookInboxEvent)
class WebhookInboxEventAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "integration", "event_id", "event_type", "response_status"]
    list_select_related = ["integration"]
    list_filter = ["integration", "event_type", "response_status"]
    search_fields = ["event_id", "event_type"]
    date_hierarchy = "received_at"
    show_full_result_count = False
    fields = [
        "integration",
        "event_id",
        "event_type",
        "received_at",
        "response_status",
        "payload_json",
        "response_json",
    ]
    readonly_fields = fields

    @admin.display(description="payload")
    def payload_json(self, event):
        return format_html("<pre>{}</pre>", _pretty_json(event.payload))

    @admin.display(description="response body")
    def response_json(self, event):
        return format_html("<pre>{}</pre>", _pretty_json(event.response_body))


class PublishedFilter(admin.SimpleListFilter):
    title = "published"
    parameter_name = "published"

    def lookups(self, request, model_admin):
        return [("no", "waiting"), ("yes", "published")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(published_at__isnull=self.value() == "no")
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "station_code",
        "kind",
        "created_at",
        "published_at",
        "attempts",
        "short_error",
    ]
    list_filter = [PublishedFilter, "kind", "station_code"]
    search_fields = ["subject", "station_code", "=id"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    show_full_result_count = False
    fields = [
        "subject",
        "station_code",
        "kind",
        "created_at",
        "published_at",
        "attempts",
        "last_error",
        "payload_json",
    ]
    readonly_fields = fields

    @admin.display(description="last error")
    def short_error(self, message):
        return (
            (message.last_error[:80] + "…") if len(message.last_error) > 80 else message.last_error
        )

    @admin.display(description="payload")
    def payload_json(self, message):
        return format_html("<pre>{}</pre>", _pretty_json(message.payload))


CHANGED_ROW_STYLE = "background:#fff3cd;font-weight:bold"


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The trail, read-only for everyone: the database refuses UPDATE and DELETE as well."""

    list_display = [
        "at",
        "actor_name",
        "source",
        "action",
        "model",
        "object_link",
        "request_id",
    ]
    list_filter = ["source", "action", "model"]
    search_fields = ["actor_name", "=object_id", "object_repr", "request_id"]
    date_hierarchy = "at"
    ordering = ["-at", "-id"]
    show_full_result_count = False
    fields = [
        "at",
        "actor_name",
        "actor_id",
        "source",
        "action",
        "model",
        "object_link",
        "request_id",
        "changes",
        "before_json",
        "after_json",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="object", ordering="object_repr")
    def object_link(self, entry):
        label = f"{entry.object_repr} (#{entry.object_id})"
        if entry.action == AuditAction.DELETE:
            return label
        app_label, _, model_name = entry.model.partition(".")
        try:
            url = reverse(f"admin:{app_label}_{model_name}_change", args=[entry.object_id])
        except NoReverseMatch:
            return label
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description="changes")
    def changes(self, entry):
        before, after = _masked(entry.before or {}), _masked(entry.after or {})
        rows = []
        for key in sorted(set(before) | set(after)):
            old, new = before.get(key), after.get(key)
            changed = entry.action == AuditAction.UPDATE and old != new
            rows.append(
                format_html(
                    '<tr class="{}" style="{}"><td>{}</td><td>{}</td><td>{}</td></tr>',
                    "audit-changed" if changed else "",
                    CHANGED_ROW_STYLE if changed else "",
                    key,
                    "" if entry.action == AuditAction.CREATE else _short(old),
                    "" if entry.action == AuditAction.DELETE else _short(new),
                )
            )
        if not rows:
            return "-"
        return format_html(
            '<table class="audit-changes"><thead><tr><th>field</th><th>before</th>'
            "<th>after</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join("", "{}", ((row,) for row in rows)),
        )

    @admin.display(description="before")
    def before_json(self, entry):
        return (
            "-"
            if entry.before is None
            else format_html("<pre>{}</pre>", _pretty_json(entry.before))
        )

    @admin.display(description="after")
    def after_json(self, entry):
        return (
            "-" if entry.after is None else format_html("<pre>{}</pre>", _pretty_json(entry.after))
        )


def _short(value: object) -> str:
    if value is None:
        return "∅"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:200] + "…"


# -- people and roles (audited like everything else) -------------------------------------------


class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    def user_change_password(self, request, id, form_url=""):
        # Django saves the new password outside save_model: audit it here, hash redacted.
        with transaction.atomic(using=router.db_for_write(self.model)):
            user = self.get_object(request, unquote(id))
            before = _stored_snapshots(self.model, [user.pk]).get(user.pk) if user else None
            response = super().user_change_password(request, id, form_url)
            if user is not None and request.method == "POST":
                user.refresh_from_db()
                after = audit_snapshot(user)
                if after != before:
                    _record(
                        request,
                        action=AuditAction.UPDATE,
                        instance=user,
                        before=before,
                        after=after,
                    )
        return response


class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    pass


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)
if admin.site.is_registered(Group):
    admin.site.unregister(Group)
admin.site.register(Group, AuditedGroupAdmin)
