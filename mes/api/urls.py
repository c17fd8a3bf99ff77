"""/api/v1/: every path also answers without its trailing slash (the schema shows one form)."""

from __future__ import annotations

from django.urls import re_path
from rest_framework.routers import SimpleRouter

from mes.api import oee, views

app_name = "api"

router = SimpleRouter()
router.trailing_slash = "/?"
for prefix, viewset, basename in [
    ("sites", views.SiteViewSet, "site"),
    ("areas", views.AreaViewSet, "area"),
    ("lines", views.LineViewSet, "line"),
    ("stations", views.StationViewSet, "station"),
    ("products", views.ProductViewSet, "product"),
    ("routes", views.RouteViewSet, "route"),
    ("work-orders", views.WorkOrderViewSet, "work-order"),
    ("units", views.UnitViewSet, "unit"),
    ("station-visits", views.StationVisitViewSet, "station-visit"),
    ("firmware-flashes", views.FirmwareFlashViewSet, "firmware-flash"),
    ("shifts", views.ShiftViewSet, "shift"),
    ("downtime-reasons", views.DowntimeReasonViewSet, "downtime-reason"),
    ("downtime-events", views.DowntimeEventViewSet, "downtime-event"),
    ("scrap-reasons", views.ScrapReasonViewSet, "scrap-reason"),
    ("production-counts", views.ProductionCountViewSet, "production-count"),
    ("defect-codes", views.DefectCodeViewSet, "defect-code"),
    ("quality-events", views.QualityEventViewSet, "quality-event"),
    ("audit-entries", views.AuditEntryViewSet, "audit-entry"),
    ("users", views.UserViewSet, "user"),
]:
    router.register(prefix, viewset, basename=basename)

WORK_ORDER = r"^work-orders/(?P<external_id>[^/]+)"
UNIT = r"^units/(?P<serial>[^/]+)"

urlpatterns = [
    re_path(r"^auth/token/?$", views.TokenView.as_view(), name="auth-token"),
    re_path(r"^auth/tokens/?$", views.TokenListView.as_view(), name="auth-token-list"),
    re_path(
        r"^auth/tokens/(?P<pk>[^/.]+)/?$", views.TokenRevokeView.as_view(), name="auth-token-revoke"
    ),
    re_path(
        rf"{WORK_ORDER}/release/?$", views.WorkOrderReleaseView.as_view(), name="work-order-release"
    ),
    re_path(rf"{WORK_ORDER}/start/?$", views.WorkOrderStartView.as_view(), name="work-order-start"),
    re_path(
        rf"{WORK_ORDER}/complete/?$",
        views.WorkOrderCompleteView.as_view(),
        name="work-order-complete",
    ),
    re_path(
        rf"{WORK_ORDER}/cancel/?$", views.WorkOrderCancelView.as_view(), name="work-order-cancel"
    ),
    re_path(rf"{UNIT}/arrive/?$", views.UnitArriveView.as_view(), name="unit-arrive"),
    re_path(rf"{UNIT}/leave/?$", views.UnitLeaveView.as_view(), name="unit-leave"),
    re_path(rf"{UNIT}/complete/?$", views.UnitCompleteView.as_view(), name="unit-complete"),
    re_path(rf"{UNIT}/firmware/?$", views.UnitFirmwareView.as_view(), name="unit-firmware"),
    re_path(r"^counts/?$", views.CountsReportView.as_view(), name="counts-report"),
    re_path(
        r"^downtime-events/(?P<pk>[^/.]+)/close/?$",
        views.DowntimeCloseView.as_view(),
        name="downtime-event-close",
    ),
    # OEE and downtime reports (docs/oee.md): GET only, permission mes.view_oee.
    re_path(r"^oee/?$", oee.OeeOverPeriodView.as_view(), name="oee-over-period"),
    re_path(r"^oee/shifts/?$", oee.OeePerShiftView.as_view(), name="oee-per-shift"),
    re_path(r"^oee/days/?$", oee.OeePerDayView.as_view(), name="oee-per-day"),
    re_path(r"^downtime/pareto/?$", oee.DowntimeParetoView.as_view(), name="downtime-pareto"),
    re_path(
        r"^downtime/reliability/?$", oee.ReliabilityView.as_view(), name="downtime-reliability"
    ),
    re_path(r"^downtime/stops/?$", oee.DowntimeStopsView.as_view(), name="downtime-stops"),
    *router.urls,
]
