from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from aegis.realtime import PLANT_GROUP

# Close codes in the 4000 range are the application's; these mirror HTTP 401 and 403.
CLOSE_UNAUTHENTICATED = 4401


class PlantEventsConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/events/`: live plant events for signed-in users (session cookie; CSRF-safe origin)."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accept, then close with a code the page can read (a refused handshake has none).
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.channel_layer.group_add(PLANT_GROUP, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "user": user.get_username()})

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(PLANT_GROUP, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        # The stream is one-way; a client message is answered with an error, never processed.
        await self.send_json({"type": "error", "detail": "this socket is read-only"})

    async def plant_event(self, message: dict) -> None:
        await self.send_json(message["event"])
