"""`/graphql` over a websocket: subscriptions (graphql-transport-ws or graphql-ws), signed in by
the browser's session like /ws/events/ (Channels' AuthMiddlewareStack, allowed origins only).

An anonymous socket is accepted and closed at once with 4401, the code graphql-ws clients read
as "unauthorized". The user's permissions are read once when the socket opens.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from strawberry.channels import GraphQLWSConsumer

from aegis.consumers import CLOSE_UNAUTHENTICATED
from aegis.graphql.context import AegisContext, permissions_of


class GraphQLSubscriptionConsumer(GraphQLWSConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            subprotocol = await self.pick_websocket_subprotocol(self)
            await self.accept(subprotocol=subprotocol)
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.permissions = await database_sync_to_async(permissions_of)(user)
        await super().connect()

    async def disconnect(self, code: int) -> None:
        if self.run_task is not None:  # never started for a refused socket
            await super().disconnect(code)

    async def get_context(self, request, response) -> AegisContext:
        return AegisContext(
            request=request,
            response=response,
            user=self.scope.get("user"),
            permissions=self.permissions,
            ws=self,
        )
