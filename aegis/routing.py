from django.urls import path

from aegis.consumers import PlantEventsConsumer

websocket_urlpatterns = [
    path("ws/events/", PlantEventsConsumer.as_asgi(), name="ws-events"),
]
