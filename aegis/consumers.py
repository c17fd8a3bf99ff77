from __future__ import annotations

import re
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from aegis.realtime import PLANT_GROUP

# Close codes in the 4000 range are the application's; these mirror HTTP 401, 403 and 404.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
# Station codes as mes.models.code_validator allows them.
_STATION_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class PlantEventsConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/events/`: live plant events for signed-in users (session cookie; CSRF-safe origin).

    Without a query the socket joins the plant group (every event). `?station=<code>` joins
    that station's group and `?line=<id>` that line's instead (defect alerts are pushed to the
    station, its line and the plant); both need permission to view stations."""

    async def connect(self) -> None:
        self.groups_joined: list[str] = []
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accept, then close with a code the page can read (a refused handshake has none).
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode(errors="replace"))
        groups, refusal = await self._groups(user, query)
        await self.accept()
        if refusal is not None:
            await self.close(code=refusal)
            return
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = groups
        await self.send_json({"type": "hello", "user": user.get_username(), "groups": groups})

    @database_sync_to_async
    def _groups(self, user, query: dict[str, list[str]]) -> tuple[list[str], int | None]:
        from mes.models import Line, Station

        stations, lines = query.get("station", []), query.get("line", [])
        if not stations and not lines:
            return [PLANT_GROUP], None
        if not user.has_perm("mes.view_station"):
            return [], CLOSE_FORBIDDEN
        groups = []
        for code in stations:
            if not _STATION_CODE.match(code) or not Station.objects.filter(code=code).exists():
                return [], CLOSE_NOT_FOUND
            groups.append(f"station.{code}")
        for line in lines:
            if not line.isdigit() or not Line.objects.filter(pk=int(line)).exists():
                return [], CLOSE_NOT_FOUND
            groups.append(f"line.{int(line)}")
        return groups, None

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        # The stream is one-way; a client message is answered with an error, never processed.
        await self.send_json({"type": "error", "detail": "this socket is read-only"})

    async def plant_event(self, message: dict) -> None:
        await self.send_json(message["event"])
