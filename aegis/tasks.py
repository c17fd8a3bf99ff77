"""Operational Celery tasks of the project itself."""

from __future__ import annotations

import json
import os
import socket
import time

import redis
from celery import shared_task
from django.conf import settings

HEARTBEAT_KEY = "aegis:celery:heartbeat"


@shared_task(name="aegis.heartbeat")
def heartbeat() -> dict:
    """Record that a worker ran a task just now; /readyz reports its age (beat → worker → Redis)."""
    beat = {"worker": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.set(HEARTBEAT_KEY, json.dumps(beat), ex=3600)
    finally:
        client.close()
    return beat


def last_heartbeat() -> dict | None:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    try:
        raw = client.get(HEARTBEAT_KEY)
    finally:
        client.close()
    return json.loads(raw) if raw else None
