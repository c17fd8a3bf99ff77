"""The bridge's HTTP port: `/metrics` for Prometheus and `/healthz` for people and monitors.

A few lines of asyncio instead of a web framework: an edge box runs a minimal install, and
the two answers are computed in the bridge's own event loop from its live state.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _response(status: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def answer(bridge, method: str, target: str) -> bytes:
    path = target.split("?", 1)[0]
    if method != "GET":
        return _response(405, "text/plain", b"GET only\n")
    if path == "/metrics":
        bridge.update_gauges()  # current at every scrape, not up to a second old
        return _response(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
    if path == "/healthz":
        health = bridge.health()
        status = 200 if health["healthy"] else 503
        return _response(status, "application/json", orjson.dumps(health))
    return _response(404, "text/plain", b"/metrics or /healthz\n")


async def serve_http(bridge, bind: str, port: int) -> asyncio.base_events.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing here needs them
            parts = request_line.decode("latin-1").split()
            if len(parts) >= 2:
                writer.write(answer(bridge, parts[0], parts[1]))
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, bind, port)
