from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from aegis import views

urlpatterns = [
    path("", include("aegis.ui.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # The OpenAPI schema and its offline viewers (signed-in users and tokens only).
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    path("api/v1/webhooks/", include("mes.webhooks.urls")),
    path("api/v1/foresight/", include("foresight.api.urls")),
    path("api/v1/telemetry/", include("telemetry.api.urls")),
    path("api/v1/", include("mes.api.urls")),
    path("", include("aegis.graphql.urls")),  # /graphql and GraphiQL (docs/graphql.md)
]

admin.site.site_header = "Aegis administration"
admin.site.site_title = "Aegis"
