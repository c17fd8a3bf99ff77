"""/api/v1/telemetry/: chart data. Every path also answers without its trailing slash."""

from __future__ import annotations

from django.urls import re_path

from telemetry.api import views

app_name = "telemetry-api"

urlpatterns = [
    re_path(
        r"^stations/(?P<code>[^/]+)/series/?$",
        views.StationSeriesView.as_view(),
        name="station-series",
    ),
    re_path(r"^trace/?$", views.VinTraceView.as_view(), name="vin-trace"),
]
