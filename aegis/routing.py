from django.urls import path

from aegis.consumers import PlantEventsConsumer
from aegis.graphql.consumers import GraphQLSubscriptionConsumer
from aegis.graphql.schema import schema

websocket_urlpatterns = [
    path("ws/events/", PlantEventsConsumer.as_asgi(), name="ws-events"),
    # GraphQL subscriptions (docs/graphql.md); queries go to the same path over HTTP.
    path("graphql", GraphQLSubscriptionConsumer.as_asgi(schema=schema), name="ws-graphql"),
]
