"""Reachability of the servers Aegis depends on, checked concurrently with short timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import redis
from django.conf import settings

CHECK_TIMEOUT_S = 3


@dataclass(frozen=True)
class DependencyStatus:
    name: str
    ok: bool
    latency_ms: float
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else "down",
            "latency_ms": round(self.latency_ms, 1),
            "detail": self.detail,
        }


def _postgresql() -> str:
    database = settings.DATABASES["default"]
    options = {**database.get("OPTIONS", {}), "connect_timeout": CHECK_TIMEOUT_S}
    with psycopg.connect(
        host=database["HOST"],
        port=database["PORT"] or 5432,
        dbname=database["NAME"],
        user=database["USER"],
        password=database["PASSWORD"],
        **options,
    ) as connection:
        version = connection.execute("SHOW server_version").fetchone()[0]
        timescale = connection.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
    return f"PostgreSQL {version}" + (f", TimescaleDB {timescale[0]}" if timescale else "")


def _nats() -> str:
    from aegis import jetstream

    async def probe() -> str:
        client = await jetstream.connect(
            "readiness", allow_reconnect=False, connect_timeout=CHECK_TIMEOUT_S
        )
        try:
            account = await client.jetstream().account_info()
            version = client.connected_server_version
            return (
                f"NATS {version.major}.{version.minor}.{version.patch}, "
                f"JetStream streams={account.streams}"
            )
        finally:
            await client.close()

    return asyncio.run(asyncio.wait_for(probe(), CHECK_TIMEOUT_S + 1))


def _redis() -> str:
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=CHECK_TIMEOUT_S,
        socket_timeout=CHECK_TIMEOUT_S,
    )
    try:
        client.ping()
        return f"Redis {client.info('server')['redis_version']}"
    finally:
        client.close()


CHECKS = {"postgresql": _postgresql, "nats": _nats, "redis": _redis}


def _run(name: str) -> DependencyStatus:
    started = time.perf_counter()
    try:
        detail = CHECKS[name]()
        ok = True
    except Exception as error:  # noqa: BLE001 - any failure means "down", and says why
        detail = f"{type(error).__name__}: {error}".strip()
        if isinstance(error, TimeoutError):
            detail = f"no answer within {CHECK_TIMEOUT_S} s"
        ok = False
    return DependencyStatus(name, ok, (time.perf_counter() - started) * 1000, detail)


def check_dependencies() -> dict[str, DependencyStatus]:
    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        return {status.name: status for status in pool.map(_run, CHECKS)}


_cache_lock = threading.Lock()
_cached: tuple[float, tuple, dict[str, DependencyStatus]] | None = None


def check_dependencies_cached(max_age_s: float) -> dict[str, DependencyStatus]:
    """`check_dependencies()`, reusing a result younger than `max_age_s` for the same servers."""
    global _cached
    servers = (settings.DATABASES["default"]["HOST"], settings.NATS_URL, settings.REDIS_URL)
    with _cache_lock:
        if _cached and _cached[1] == servers and time.monotonic() - _cached[0] < max_age_s:
            return _cached[2]
        statuses = check_dependencies()
        _cached = (time.monotonic(), servers, statuses)
        return statuses
