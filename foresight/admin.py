"""Django admin for Foresight: the model registry and defect alerts, read-only except through
actions that call `foresight.registry` (audited with source "admin", like every MES service).

Model versions are promoted, archived and rolled back here by whoever holds the permission; a
form edit would bypass the registry events the scorers swap models on, so there is none.
Alerts are acknowledged and resolved with feedback by actions; an SPC alert shows the rule,
chart, signal and control limits that fired. Control limits (SPC) are computed by
`manage.py spc_limits` and only stopped here (an action). The score time series has a
composite primary key, which the Django admin cannot list: each model version's page shows a
summary of its recent scores instead (the API serves the series, docs/api.md).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

from django.contrib import admin, messages
from django.db import connection
from django.utils import timezone
from django.utils.html import format_html

from foresight import registry
from foresight.models import AlertFeedback, ControlLimits, DefectAlert, ModelStatus, ModelVersion
from mes.admin import ADMIN_SOURCE, ReadOnlyAdmin
from mes.audit import audit_context
from mes.errors import MesError

RECENT_SCORES = dt.timedelta(hours=24)
RECENT_SCORES_SQL = """
SELECT count(*), max(ts), avg(score), max(score)
FROM foresight_score
WHERE station_id = %s AND model_version_id = %s AND ts >= %s
"""


def _pretty_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _each(model_admin, request, items, done: str, step: Callable, name: Callable = str) -> None:
    """One service call per item, each its own transaction: one refusal does not undo the
    others, and each outcome is reported."""
    succeeded, refused = [], []
    for item in items:
        try:
            with audit_context(user=request.user, source=ADMIN_SOURCE):
                step(item)
        except MesError as error:
            refused.append(f"{name(item)}: {error.detail}")
        else:
            succeeded.append(name(item))
    if succeeded:
        model_admin.message_user(
            request, f"{len(succeeded)} {done}: {', '.join(succeeded)}", messages.SUCCESS
        )
    if refused:
        model_admin.message_user(
            request, f"{len(refused)} refused: {'; '.join(refused)}", messages.ERROR
        )


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = [
        "version",
        "station",
        "kind",
        "status",
        "threshold",
        "training_start",
        "training_end",
        "created_at",
        "promoted_at",
        "promoted_by",
    ]
    list_select_related = ["station", "promoted_by"]
    list_filter = ["status", "kind", "station__line", "station"]
    search_fields = ["version", "station__code", "sha256"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    actions = ["promote_to_shadow", "promote_to_production", "archive", "roll_back_station"]
    fields = [
        "version",
        "station",
        "kind",
        "status",
        "threshold",
        "training_start",
        "training_end",
        "previous_production",
        "artifact_path",
        "sha256",
        "notes",
        "created_by",
        "created_at",
        "promoted_by",
        "promoted_at",
        "archived_by",
        "archived_at",
        "recent_scores",
        "metrics_json",
        "feature_spec_json",
        "features",
    ]
    readonly_fields = fields

    @admin.display(description=f"scores, last {RECENT_SCORES.total_seconds() / 3600:.0f} h")
    def recent_scores(self, model):
        since = timezone.now() - RECENT_SCORES
        with connection.cursor() as cursor:
            cursor.execute(RECENT_SCORES_SQL, [model.station_id, model.pk, since])
            count, latest, mean, highest = cursor.fetchone()
        if not count:
            return "none"
        return (
            f"{count} samples, latest {latest:%Y-%m-%d %H:%M:%S} UTC, mean {mean:.3f}, "
            f"highest {highest:.3f} (threshold {model.threshold:.3f})"
        )

    @admin.display(description="metrics")
    def metrics_json(self, model):
        return format_html("<pre>{}</pre>", _pretty_json(model.metrics))

    @admin.display(description="feature spec")
    def feature_spec_json(self, model):
        return format_html("<pre>{}</pre>", _pretty_json(model.feature_spec))

    @admin.display(description="features (training mean ± std)")
    def features(self, model):
        rows = zip(model.feature_names, model.feature_mean, model.feature_std, strict=False)
        lines = [f"{name}: {mean} ± {std}" for name, mean, std in rows]
        return format_html("<pre>{}</pre>", "\n".join(lines))

    def has_promote_permission(self, request):
        return request.user.has_perm("foresight.promote_modelversion")

    def has_rollback_permission(self, request):
        return request.user.has_perm("foresight.rollback_modelversion")

    @admin.action(description="Promote selected models to shadow", permissions=["promote"])
    def promote_to_shadow(self, request, queryset):
        self._promote(request, queryset, ModelStatus.SHADOW)

    @admin.action(
        description="Promote selected model to production (archives the current one)",
        permissions=["promote"],
    )
    def promote_to_production(self, request, queryset):
        self._promote(request, queryset, ModelStatus.PRODUCTION)

    def _promote(self, request, queryset, to: str) -> None:
        _each(
            self,
            request,
            list(queryset.order_by("created_at")),
            f"promoted to {to}",
            lambda model: registry.promote(version=model, to=to, user=request.user),
        )

    @admin.action(description="Archive selected models", permissions=["promote"])
    def archive(self, request, queryset):
        _each(
            self,
            request,
            list(queryset.order_by("created_at")),
            "archived",
            lambda model: registry.archive(version=model, user=request.user),
        )

    @admin.action(
        description="Roll back the stations of the selected models to their previous "
        "production model",
        permissions=["rollback"],
    )
    def roll_back_station(self, request, queryset):
        stations = {model.station_id: model.station for model in queryset.select_related("station")}
        _each(
            self,
            request,
            [stations[key] for key in sorted(stations)],
            "station(s) rolled back",
            lambda station: registry.rollback(station=station, user=request.user),
            name=lambda station: station.code,
        )


@admin.register(DefectAlert)
class DefectAlertAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "ts",
        "station",
        "vin",
        "work_order",
        "score",
        "threshold",
        "source",
        "model_version",
        "rule",
        "status",
        "feedback",
    ]
    list_select_related = ["station", "work_order", "model_version"]
    list_filter = ["status", "feedback", "source", "rule", "station__line", "station"]
    search_fields = ["vin", "unit__serial", "work_order__external_id", "station__code", "=id"]
    date_hierarchy = "ts"
    ordering = ["-ts"]
    show_full_result_count = False
    actions = ["acknowledge", "resolve_true_defect", "resolve_false_alarm"]
    fields = [
        "station",
        "ts",
        "seq",
        "unit",
        "vin",
        "work_order",
        "firmware_json",
        "score",
        "threshold",
        "source",
        "model_version",
        "rule",
        "chart",
        "signal",
        "control_limits",
        "triggering_json",
        "explanation_table",
        "status",
        "feedback",
        "note",
        "acknowledged_by",
        "acknowledged_at",
        "resolved_by",
        "resolved_at",
        "created_at",
    ]
    readonly_fields = fields

    @admin.display(description="firmware")
    def firmware_json(self, alert):
        return format_html("<pre>{}</pre>", _pretty_json(alert.firmware))

    @admin.display(description="triggering sample")
    def triggering_json(self, alert):
        return format_html("<pre>{}</pre>", _pretty_json(alert.triggering))

    @admin.display(description="explanation")
    def explanation_table(self, alert):
        lines = [
            f"{row.get('feature')}: value {row.get('value')}, z {row.get('z')}, "
            f"share {row.get('share')}"
            for row in alert.explanation or []
            if isinstance(row, dict)
        ]
        return format_html("<pre>{}</pre>", "\n".join(lines) or "-")

    def has_acknowledge_permission(self, request):
        return request.user.has_perm("foresight.acknowledge_defectalert")

    def has_resolve_permission(self, request):
        return request.user.has_perm("foresight.resolve_defectalert")

    @admin.action(description="Acknowledge selected alerts", permissions=["acknowledge"])
    def acknowledge(self, request, queryset):
        _each(
            self,
            request,
            list(queryset.order_by("ts")),
            "alert(s) acknowledged",
            lambda alert: registry.acknowledge(alert=alert, user=request.user),
            name=lambda alert: f"#{alert.pk}",
        )

    @admin.action(description="Resolve selected alerts: true defect", permissions=["resolve"])
    def resolve_true_defect(self, request, queryset):
        self._resolve(request, queryset, AlertFeedback.TRUE_DEFECT)

    @admin.action(description="Resolve selected alerts: false alarm", permissions=["resolve"])
    def resolve_false_alarm(self, request, queryset):
        self._resolve(request, queryset, AlertFeedback.FALSE_ALARM)

    def _resolve(self, request, queryset, feedback: str) -> None:
        _each(
            self,
            request,
            list(queryset.order_by("ts")),
            f"alert(s) resolved as {feedback.replace('_', ' ')}",
            lambda alert: registry.resolve(alert=alert, feedback=feedback, user=request.user),
            name=lambda alert: f"#{alert.pk}",
        )


@admin.register(ControlLimits)
class ControlLimitsAdmin(ReadOnlyAdmin):
    """SPC limits: computed by `manage.py spc_limits` from a baseline (a form could not say
    where the numbers came from); stopped by an action that calls the registry."""

    list_display = [
        "id",
        "station",
        "signal",
        "chart",
        "subgroup_size",
        "interval",
        "rules",
        "centre",
        "lcl",
        "ucl",
        "range_ucl",
        "active",
        "baseline_start",
        "baseline_end",
        "computed_at",
    ]
    list_select_related = ["station"]
    list_filter = ["active", "chart", "station__line", "station"]
    search_fields = ["station__code", "signal", "=id"]
    date_hierarchy = "computed_at"
    ordering = ["-computed_at"]
    actions = ["stop_charting"]
    fields = [
        "station",
        "signal",
        "chart",
        "subgroup_size",
        "interval",
        "rules",
        "centre",
        "sigma",
        "ucl",
        "lcl",
        "range_centre",
        "range_ucl",
        "range_lcl",
        "baseline_start",
        "baseline_end",
        "baseline_samples",
        "baseline_points",
        "baseline_points_outside",
        "active",
        "computed_by",
        "computed_at",
        "deactivated_at",
        "alert_count",
    ]
    readonly_fields = fields

    @admin.display(description="alerts raised")
    def alert_count(self, limits):
        return limits.alerts.count()

    def has_stop_permission(self, request):
        return request.user.has_perm("foresight.change_controllimits")

    @admin.action(description="Stop charting the selected limits' signals", permissions=["stop"])
    def stop_charting(self, request, queryset):
        _each(
            self,
            request,
            list(queryset.filter(active=True).select_related("station").order_by("id")),
            "signal(s) no longer charted",
            lambda limits: registry.control_limits_deactivate(
                station=limits.station, signal=limits.signal, user=request.user
            ),
            name=lambda limits: f"{limits.station.code}.{limits.signal}",
        )
