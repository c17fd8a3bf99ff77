"""The webhook under its public path, independent of the project's URLconf."""

from django.urls import include, path

urlpatterns = [path("api/v1/webhooks/", include("mes.webhooks.urls"))]
