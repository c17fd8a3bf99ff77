"""/api/v1/foresight/: every path also answers without its trailing slash (as under /api/v1/)."""

from __future__ import annotations

from django.urls import re_path
from rest_framework.routers import SimpleRouter

from foresight.api import views

app_name = "foresight-api"

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("models", views.ModelVersionViewSet, basename="model-version")
router.register("alerts", views.DefectAlertViewSet, basename="defect-alert")

MODEL = r"^models/(?P<version>[^/]+)"
STATION = r"^stations/(?P<code>[^/]+)"
ALERT = r"^alerts/(?P<pk>[^/.]+)"

urlpatterns = [
    re_path(rf"{MODEL}/promote/?$", views.ModelPromoteView.as_view(), name="model-promote"),
    re_path(rf"{MODEL}/archive/?$", views.ModelArchiveView.as_view(), name="model-archive"),
    re_path(
        rf"{STATION}/rollback/?$", views.StationRollbackView.as_view(), name="station-rollback"
    ),
    re_path(rf"{STATION}/scores/?$", views.ScoreChartView.as_view(), name="station-scores"),
    re_path(
        rf"{ALERT}/acknowledge/?$",
        views.AlertAcknowledgeView.as_view(),
        name="alert-acknowledge",
    ),
    re_path(rf"{ALERT}/resolve/?$", views.AlertResolveView.as_view(), name="alert-resolve"),
    *router.urls,
]
