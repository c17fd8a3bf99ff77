from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from aegis import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]

admin.site.site_header = "Aegis administration"
admin.site.site_title = "Aegis"
