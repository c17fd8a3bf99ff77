"""Protocol sources of the edge bridge: OPC UA, MQTT (JSON and Sparkplug B) and Modbus TCP.

Each protocol module exposes `from_config(section, *, path) -> list[Source]`; the loader in
edge/config.py imports them lazily, so a box without, say, pymodbus can still run OPC UA.

This module holds what they share: config checking with errors that name the field, the seq
slots of a station, and the per-source health and `aegis_edge_source_*` metrics.

Seq slots. A stored sample is keyed by (station, ts, seq). Every mapped signal (OPC UA item,
Sparkplug metric) or group (Modbus poll group, MQTT JSON topic) gets a stable slot: its
0-based position among that protocol's mappings for the station, in config order, plus a
fixed per-protocol base so two protocols feeding one station never share a slot. New entries
go at the end of a station's list; inserting one in the middle moves the slots after it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from aegis.backoff import Backoff

logger = structlog.get_logger(__name__)

# Per-protocol bases of the seq slots (room for 100,000 mappings per station and protocol;
# the largest, 399,999, is far below the payload limit of 2,147,483,647).
SLOT_BASE_OPCUA = 0
SLOT_BASE_MODBUS = 100_000
SLOT_BASE_MQTT_JSON = 200_000
SLOT_BASE_SPARKPLUG = 300_000
SLOTS_PER_PROTOCOL = 100_000

STATION_CODE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

SOURCE_SAMPLES = Counter(
    "aegis_edge_source_samples_total",
    "Samples a source handed to the buffer.",
    ["source"],
)
SOURCE_ERRORS = Counter(
    "aegis_edge_source_errors_total",
    "Readings or connections a source could not turn into samples, by reason.",
    ["source", "reason"],
)
SOURCE_CONNECTED = Gauge(
    "aegis_edge_source_connected",
    "1 while the source is connected to its server, broker or device.",
    ["source"],
)


class SourceConfigError(ValueError):
    """A protocol section of edge.yaml is wrong; the message names the field."""


MISSING: Any = object()


def take(
    section: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    *,
    path: str,
    default: Any = MISSING,
) -> Any:
    """`section[key]` checked against `kind`, or `default` when absent (required without)."""
    if key not in section or section[key] is None:
        if default is MISSING:
            raise SourceConfigError(f"{path}.{key}: required")
        return default
    value = section[key]
    # YAML reads 10 as int; a float field accepts it. bool is an int in Python: refuse it.
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in kinds:
        raise SourceConfigError(f"{path}.{key}: expected {_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise SourceConfigError(f"{path}.{key}: expected {_names(kinds)}, got {value!r}")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    words |= {list: "a list", dict: "a mapping"}
    return " or ".join(words.get(kind, kind.__name__) for kind in kinds)


def take_choice(
    section: Mapping[str, Any], key: str, choices: tuple[str, ...], *, path: str, default: Any
) -> str:
    value = take(section, key, str, path=path, default=default)
    if value not in choices:
        raise SourceConfigError(f"{path}.{key}: one of {', '.join(choices)}, got {value!r}")
    return value


def take_positive(
    section: Mapping[str, Any], key: str, *, path: str, default: Any = MISSING, maximum=None
) -> float:
    value = take(section, key, float, path=path, default=default)
    if value <= 0 or (maximum is not None and value > maximum):
        limit = f" and at most {maximum}" if maximum is not None else ""
        raise SourceConfigError(f"{path}.{key}: must be above 0{limit}, got {value!r}")
    return value


def take_port(section: Mapping[str, Any], key: str, *, path: str, default: int) -> int:
    port = take(section, key, int, path=path, default=default)
    if not 1 <= port <= 65535:
        raise SourceConfigError(f"{path}.{key}: a TCP port 1..65535, got {port!r}")
    return port


def take_station(section: Mapping[str, Any], *, path: str) -> str:
    station = take(section, "station", (str, int), path=path)
    station = str(station)
    if not STATION_CODE.match(station):
        raise SourceConfigError(
            f"{path}.station: a station code of 1 to 32 letters, digits, '-' or '_', "
            f"got {station!r}"
        )
    return station


def check_signal_name(name: Any, *, path: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 128 or name == "seq":
        raise SourceConfigError(
            f"{path}: a signal name of 1 to 128 characters (not 'seq'), got {name!r}"
        )
    if any(ord(character) < 32 or ord(character) == 127 for character in name):
        raise SourceConfigError(f"{path}: control characters in signal name {name!r}")
    return name


def take_list(section: Mapping[str, Any], key: str, *, path: str) -> list:
    entries = take(section, key, list, path=path)
    if not entries:
        raise SourceConfigError(f"{path}.{key}: at least one entry")
    return entries


def secret_from_env(section: Mapping[str, Any], key: str, *, path: str) -> str | None:
    """The value of the environment variable named by `section[key]` (e.g. `password_env`).

    Secrets never sit in edge.yaml; a named variable that is unset is a config error, found at
    start rather than at the first connection.
    """
    variable = take(section, key, str, path=path, default=None)
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise SourceConfigError(f"{path}.{key}: environment variable {variable} is not set")
    return value


def refuse_unknown_keys(section: Mapping[str, Any], known: set[str], *, path: str) -> None:
    if not isinstance(section, Mapping):
        raise SourceConfigError(f"{path}: expected a mapping, got {section!r}")
    unknown = sorted(str(key) for key in section if key not in known)
    if unknown:
        raise SourceConfigError(
            f"{path}: unknown key {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )


def sources_from_list(
    section: Any, *, path: str, noun: str, build: Callable[[Any, str], Any]
) -> list:
    """One source per entry of a protocol's list in edge.yaml, built by `build(entry, path)`.

    Source names label metrics and health, so two entries may not share one.
    """
    if not isinstance(section, list):
        raise SourceConfigError(f"{path}: expected a list of {noun}s, got {section!r}")
    sources = [build(entry, f"{path}[{index}]") for index, entry in enumerate(section)]
    names = [source.name for source in sources]
    for name in names:
        if names.count(name) > 1:
            raise SourceConfigError(f"{path}: two {noun}s are named {name!r}; set `name`")
    return sources


class SlotCounter:
    """Hands out the seq slots of one protocol, per station, in config order."""

    def __init__(self, base: int) -> None:
        self.base = base
        self._next: dict[str, int] = {}

    def next(self, station: str, *, path: str) -> int:
        position = self._next.get(station, 0)
        if position >= SLOTS_PER_PROTOCOL:
            raise SourceConfigError(f"{path}: more than {SLOTS_PER_PROTOCOL} mappings of {station}")
        self._next[station] = position + 1
        return self.base + position


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def numeric(value: Any) -> float | None:
    """A reading as the float Aegis stores, or None when it is not a number (bool → 0/1)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
        # NaN and infinities are not valid JSON numbers in the telemetry payload.
        return number if number == number and abs(number) != float("inf") else None
    return None


class SourceHealth:
    """What a source reports through `health()` and its `aegis_edge_source_*` metrics."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = False
        self.last_sample_ts_ms: int | None = None
        self.samples = 0
        self.errors = 0
        self.errors_by_reason: dict[str, int] = {}
        self.last_error: str | None = None
        self._samples_metric = SOURCE_SAMPLES.labels(source=name)
        self._connected_metric = SOURCE_CONNECTED.labels(source=name)
        self._connected_metric.set(0)

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._connected_metric.set(1 if connected else 0)

    def sampled(self, ts_ms: int) -> None:
        self.samples += 1
        self.last_sample_ts_ms = ts_ms
        self._samples_metric.inc()

    def error(self, reason: str, detail: str | None = None, count: int = 1) -> None:
        self.errors += count
        self.errors_by_reason[reason] = self.errors_by_reason.get(reason, 0) + count
        if detail is not None:
            self.last_error = f"{reason}: {detail}"
        SOURCE_ERRORS.labels(source=self.name, reason=reason).inc(count)

    def as_dict(self, **extra: Any) -> dict:
        return {
            "connected": self.connected,
            "last_sample_ts_ms": self.last_sample_ts_ms,
            "samples": self.samples,
            "errors": self.errors,
            "errors_by_reason": dict(self.errors_by_reason),
            "last_error": self.last_error,
            **extra,
        }


async def reconnecting(
    health: SourceHealth,
    session: Callable[[Backoff], Awaitable[None]],
    *,
    backoff: Backoff | None = None,
) -> None:
    """Run `session` again and again, waiting `backoff` between attempts; never returns.

    A session returns or raises when its connection is lost; it calls `backoff.reset()` once
    connected, so a long-lived connection that drops is retried quickly. Any exception but
    cancellation is counted and retried: a PLC network fails in more ways than the client
    libraries name, and the bridge must keep capturing the other sources.
    """
    backoff = backoff or Backoff(initial_s=0.2, cap_s=10.0)
    while True:
        try:
            await session(backoff)
            health.error("disconnected")
        except asyncio.CancelledError:
            health.set_connected(False)
            raise
        except Exception as error:  # noqa: BLE001 - see the docstring
            health.error("connection", f"{type(error).__name__}: {error}")
            logger.warning(
                "edge.source.connection_failed",
                source=health.name,
                error=f"{type(error).__name__}: {error}",
            )
        health.set_connected(False)
        await asyncio.sleep(backoff.next())
