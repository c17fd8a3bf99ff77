"""The pages of the supervisor UI: the board and alerts here, the other pages in
`aegis.ui.pages_urls`. Names are unnamespaced (`home` is where sign-in and sign-out lead)."""

from django.urls import include, path

from aegis.ui import alerts, board

urlpatterns = [
    path("", board.plant_board, name="home"),
    path("alerts/", alerts.alerts_page, name="alerts"),
    path("", include("aegis.ui.pages_urls")),
]
