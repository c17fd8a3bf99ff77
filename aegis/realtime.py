"""Pushing events to browsers: a Channels group per audience, fed through the Redis layer.

Any process (web, Celery, stream workers) can broadcast; every daphne replica relays the event
to its connected websockets.
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

PLANT_GROUP = "plant"


def broadcast(event_type: str, payload: dict, *, group: str = PLANT_GROUP) -> None:
    async_to_sync(broadcast_async)(event_type, payload, group=group)


async def broadcast_async(event_type: str, payload: dict, *, group: str = PLANT_GROUP) -> None:
    """`broadcast` from a running event loop (the Foresight scorer): no thread, no event loop
    and Redis connection per call."""
    await get_channel_layer().group_send(
        group, {"type": "plant.event", "event": {"type": event_type, **payload}}
    )


def broadcast_on_commit(event_type: str, payload: dict, *, group: str = PLANT_GROUP) -> None:
    """Broadcast only once the surrounding transaction has committed (never a phantom event).
    Robust: the write has committed, so a Redis outage is logged by Django, never raised into
    the request that made it."""
    transaction.on_commit(lambda: broadcast(event_type, payload, group=group), robust=True)
