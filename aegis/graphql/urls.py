"""`/graphql` (queries, mutations, GraphiQL) and the vendored GraphiQL files it loads.

Subscriptions use the same path over a websocket (aegis/routing.py)."""

from django.urls import path

from aegis.graphql.views import graphiql_asset, graphql_view

urlpatterns = [
    path("graphql", graphql_view, name="graphql"),
    path("graphql/ide/<path:name>", graphiql_asset, name="graphiql-asset"),
]
