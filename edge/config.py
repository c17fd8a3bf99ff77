"""edge.yaml: read, checked with errors that name the field, turned into sources.

The top-level keys are checked here; each protocol section (`opcua`, `mqtt`, `modbus`) is
handed to its module in edge/sources/, imported only when the section is present, so an edge
box without, say, pymodbus can still run OPC UA.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge.samples import Source

PROTOCOLS = ("opcua", "mqtt", "modbus")
POLICIES = ("block", "shed_oldest")
EDGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class EdgeConfigError(ValueError):
    """edge.yaml is wrong; the message names the field."""


@dataclass(frozen=True)
class NatsConfig:
    url: str = "nats://127.0.0.1:4222"
    connect_timeout_s: float = 2.0
    # Read from the environment variables that username_env / password_env name, so the file
    # holds no secret; kept out of repr so they never reach a log line.
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BufferConfig:
    path: Path = Path("/var/lib/aegis-edge/buffer")
    max_bytes: int = 1 << 30
    policy: str = "block"
    fsync_every_ms: int = 50
    fsync_every_messages: int = 500
    segment_bytes: int = 16 << 20


@dataclass(frozen=True)
class PublishConfig:
    batch_max_samples: int = 500
    batch_max_ms: int = 100


@dataclass(frozen=True)
class HttpConfig:
    bind: str = "0.0.0.0"  # noqa: S104 - scraped by Prometheus from another host
    port: int = 9108


@dataclass(frozen=True)
class EdgeConfig:
    edge_id: str
    nats: NatsConfig = field(default_factory=NatsConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    # The protocol sections as written, for edge.sources.<protocol>.from_config.
    sections: dict[str, Any] = field(default_factory=dict)


def _section(document: Mapping, key: str) -> Mapping:
    value = document.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise EdgeConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _refuse_unknown(section: Mapping, known: set[str], path: str) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        raise EdgeConfigError(
            f"{path}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})"
        )


def _number(section: Mapping, key: str, default: Any, path: str, *, kind: type = int) -> Any:
    value = section.get(key, default)
    accepted = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise EdgeConfigError(f"{path}.{key}: expected a number, got {value!r}")
    if value <= 0:
        raise EdgeConfigError(f"{path}.{key}: must be positive, got {value!r}")
    return kind(value)


def _text(section: Mapping, key: str, default: str, path: str) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or not value:
        raise EdgeConfigError(f"{path}.{key}: expected a non-empty string, got {value!r}")
    return value


def _from_environment(section: Mapping, key: str, path: str) -> str | None:
    """The value of the environment variable that `section[key]` names, if the key is set."""
    if section.get(key) is None:
        return None
    name = _text(section, key, "", path)
    value = os.environ.get(name)
    if not value:
        raise EdgeConfigError(f"{path}.{key}: environment variable {name} is not set")
    return value


def parse(document: Any) -> EdgeConfig:
    """Check the top-level keys of a loaded edge.yaml (the protocol sections are checked when
    their sources are built)."""
    if not isinstance(document, Mapping):
        raise EdgeConfigError("the file must hold a mapping of top-level keys (edge_id, nats, …)")
    _refuse_unknown(document, {"edge_id", "nats", "buffer", "publish", "http", *PROTOCOLS}, "")
    edge_id = document.get("edge_id")
    if not isinstance(edge_id, str) or not EDGE_ID.match(edge_id):
        raise EdgeConfigError(
            f"edge_id: expected 1 to 64 letters, digits, '-' or '_', got {edge_id!r}"
        )

    nats_section = _section(document, "nats")
    known = {"url", "connect_timeout_s", "username_env", "password_env"}
    _refuse_unknown(nats_section, known, "nats")
    nats = NatsConfig(
        url=_text(nats_section, "url", NatsConfig.url, "nats"),
        connect_timeout_s=_number(nats_section, "connect_timeout_s", 2.0, "nats", kind=float),
        user=_from_environment(nats_section, "username_env", "nats"),
        password=_from_environment(nats_section, "password_env", "nats"),
    )
    if not nats.url.startswith(("nats://", "tls://")):
        raise EdgeConfigError(f"nats.url: expected nats://host:port or tls://…, got {nats.url!r}")

    buffer_section = _section(document, "buffer")
    known = {"path", "max_bytes", "policy", "fsync_every_ms", "fsync_every_messages"}
    _refuse_unknown(buffer_section, known | {"segment_bytes"}, "buffer")
    buffer = BufferConfig(
        path=Path(_text(buffer_section, "path", str(BufferConfig.path), "buffer")),
        max_bytes=_number(buffer_section, "max_bytes", BufferConfig.max_bytes, "buffer"),
        policy=_text(buffer_section, "policy", "block", "buffer"),
        fsync_every_ms=_number(buffer_section, "fsync_every_ms", 50, "buffer"),
        fsync_every_messages=_number(buffer_section, "fsync_every_messages", 500, "buffer"),
        segment_bytes=_number(
            buffer_section, "segment_bytes", BufferConfig.segment_bytes, "buffer"
        ),
    )
    if buffer.policy not in POLICIES:
        raise EdgeConfigError(
            f"buffer.policy: expected one of {', '.join(POLICIES)}, got {buffer.policy!r}"
        )
    if buffer.max_bytes < 2 * buffer.segment_bytes:
        raise EdgeConfigError(
            f"buffer.max_bytes: must be at least twice buffer.segment_bytes "
            f"({2 * buffer.segment_bytes}), got {buffer.max_bytes}"
        )

    publish_section = _section(document, "publish")
    _refuse_unknown(publish_section, {"batch_max_samples", "batch_max_ms"}, "publish")
    publish = PublishConfig(
        batch_max_samples=_number(publish_section, "batch_max_samples", 500, "publish"),
        batch_max_ms=_number(publish_section, "batch_max_ms", 100, "publish"),
    )
    if publish.batch_max_samples > 10_000:
        raise EdgeConfigError(
            "publish.batch_max_samples: at most 10000 (the ingest limit per message), "
            f"got {publish.batch_max_samples}"
        )

    http_section = _section(document, "http")
    _refuse_unknown(http_section, {"bind", "port"}, "http")
    http = HttpConfig(
        bind=_text(http_section, "bind", HttpConfig.bind, "http"),
        port=_number(http_section, "port", 9108, "http"),
    )
    if http.port > 65535:
        raise EdgeConfigError(f"http.port: expected 1 to 65535, got {http.port}")

    sections = {key: document[key] for key in PROTOCOLS if document.get(key) is not None}
    return EdgeConfig(edge_id, nats, buffer, publish, http, sections)


def load(path: Path | str) -> EdgeConfig:
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise EdgeConfigError(f"{path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise EdgeConfigError(f"{path}: not valid YAML: {error}") from error
    return parse(document)


def build_sources(config: EdgeConfig) -> list[Source]:
    """The sources of every protocol section present, by its module's `from_config`."""
    sources: list[Source] = []
    for protocol, section in config.sections.items():
        try:
            module = importlib.import_module(f"edge.sources.{protocol}")
        except ImportError as error:
            raise EdgeConfigError(
                f"{protocol}: this install cannot run it ({error}); see requirements-edge.txt"
            ) from error
        try:
            sources.extend(module.from_config(section, path=protocol))
        except ValueError as error:  # SourceConfigError and friends name the field
            raise EdgeConfigError(str(error)) from error
    return sources
