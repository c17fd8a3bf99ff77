"""URL patterns of the station, VIN trace, work order, OEE and model pages."""

from __future__ import annotations

from django.urls import path

from aegis.ui import models, oee, station, trace, work_orders

urlpatterns = [
    path("stations/<str:code>/", station.station_page, name="ui-station"),
    path("trace/", trace.trace_page, name="ui-trace"),
    path("work-orders/", work_orders.work_order_list_page, name="ui-work-orders"),
    path("work-orders/<str:number>/", work_orders.work_order_page, name="ui-work-order"),
    path("oee/", oee.oee_page, name="ui-oee"),
    path("models/", models.models_page, name="ui-models"),
]
