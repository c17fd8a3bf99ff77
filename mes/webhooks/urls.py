"""Included under `api/v1/webhooks/` by the project's URLconf."""

from django.urls import path

from mes.webhooks import views

urlpatterns = [
    path("mes", views.mes_webhook, name="webhook-mes"),
]
