"""MQTT source: plain JSON topics and Sparkplug B edge nodes on one broker connection.

One `MqttBroker` source per configured broker. It subscribes with QoS 1 in a persistent
session (clean session off, a stable client id), so the broker keeps what is published while
the bridge is away and delivers it on reconnect, and it handles messages one at a time, in
the order the broker delivers them.

- JSON topics: one sample per message holding all the mapped fields; `seq` = the topic
  entry's slot; `ts` = the configured timestamp field, else the time the message arrived.
- Sparkplug B: one sample per mapped metric reading; `seq` = the metric's slot; `ts` = the
  metric's timestamp, else the payload's, else the arrival time. Births give the aliases and
  datatypes; data before a birth, or a gap in the node's 0-255 sequence, asks the edge node
  for a rebirth (NCMD `Node Control/Rebirth`), at most once per `rebirth_interval_s`.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import orjson
import structlog
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from aegis.backoff import Backoff
from edge.samples import EdgeSample, SampleSink
from edge.sources import (
    SLOT_BASE_MQTT_JSON,
    SLOT_BASE_SPARKPLUG,
    SlotCounter,
    SourceConfigError,
    SourceHealth,
    check_signal_name,
    now_ms,
    numeric,
    reconnecting,
    refuse_unknown_keys,
    secret_from_env,
    sources_from_list,
    take,
    take_choice,
    take_port,
    take_positive,
    take_station,
)
from edge.sources import sparkplug as spb

logger = structlog.get_logger(__name__)

REBIRTH_REQUESTS = Counter(
    "aegis_edge_source_sparkplug_rebirth_requests_total",
    "Rebirth requests (NCMD Node Control/Rebirth) sent to Sparkplug edge nodes, by reason.",
    ["source", "reason"],
)

TIMESTAMP_UNITS = ("ms", "s", "iso")


@dataclass(frozen=True, slots=True)
class JsonTopic:
    topic: str  # a subscription filter; + and # allowed
    station: str
    seq: int
    timestamp_field: str | None
    timestamp_unit: str
    signals: tuple[tuple[str, str], ...]  # (signal, field path in the JSON object)


@dataclass(frozen=True, slots=True)
class MetricTarget:
    station: str
    signal: str
    seq: int


@dataclass(frozen=True, slots=True)
class SparkplugDevice:
    group: str
    edge_node: str
    device: str | None  # None: the node's own metrics (NBIRTH/NDATA)
    station: str
    metrics: tuple[tuple[str, MetricTarget], ...]  # (metric name, where it goes)


@dataclass(frozen=True, slots=True)
class MqttBrokerConfig:
    name: str
    host: str
    port: int
    client_id: str
    username: str | None
    password: str | None
    tls: Mapping[str, Any] | None
    keepalive_s: int
    rebirth_interval_s: float
    topics: tuple[JsonTopic, ...]
    sparkplug: tuple[SparkplugDevice, ...]


@dataclass
class NodeState:
    """What the bridge knows of one Sparkplug edge node since its last birth."""

    born: bool = False
    bd_seq: int | None = None
    last_seq: int | None = None
    devices_born: set[str] = field(default_factory=set)
    # alias → metric name and (device, metric name) → datatype, per the births
    aliases: dict[tuple[str | None, int], str] = field(default_factory=dict)
    datatypes: dict[tuple[str | None, str], int] = field(default_factory=dict)
    rebirth_requested_at: float | None = None

    def as_dict(self) -> dict:
        return {
            "born": self.born,
            "bd_seq": self.bd_seq,
            "last_seq": self.last_seq,
            "devices_born": sorted(self.devices_born),
        }


class MqttBroker:
    """Subscribes to one broker's mapped JSON topics and Sparkplug nodes."""

    def __init__(self, config: MqttBrokerConfig) -> None:
        self.config = config
        self.name = config.name
        self._health = SourceHealth(self.name)
        self.nodes: dict[tuple[str, str], NodeState] = {}
        self._targets: dict[tuple[str, str, str | None], dict[str, list[MetricTarget]]] = {}
        for device in config.sparkplug:
            self.nodes.setdefault((device.group, device.edge_node), NodeState())
            targets = self._targets.setdefault((device.group, device.edge_node, device.device), {})
            for metric, target in device.metrics:
                targets.setdefault(metric, []).append(target)
        self.rebirths_requested = 0

    def health(self) -> dict:
        return self._health.as_dict(
            kind="mqtt",
            endpoint=f"{self.config.host}:{self.config.port}",
            rebirths_requested=self.rebirths_requested,
            sparkplug_nodes={
                f"{group}/{node}": state.as_dict() for (group, node), state in self.nodes.items()
            },
        )

    async def run(self, sink: SampleSink) -> None:
        await reconnecting(self._health, lambda backoff: self._session(sink, backoff))

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            identifier=self.config.client_id,
            # A persistent session: the broker queues QoS 1 messages while we are away.
            clean_session=False,
            username=self.config.username,
            password=self.config.password,
            keepalive=self.config.keepalive_s,
            tls_context=tls_context(self.config.tls) if self.config.tls is not None else None,
            timeout=10,
        )

    async def _session(self, sink: SampleSink, backoff: Backoff) -> None:
        async with self._client() as client:
            for entry in self.config.topics:
                await client.subscribe(entry.topic, qos=1)
            for group, node in self.nodes:
                # The whole node, not just the mapped devices: its seq counts every message.
                await client.subscribe(f"{spb.NAMESPACE}/{group}/+/{node}/#", qos=1)
            self._health.set_connected(True)
            backoff.reset()
            logger.info("edge.source.connected", source=self.name)
            for (group, node), state in self.nodes.items():
                if not state.born:
                    await self._request_rebirth(client, group, node, state, "no_birth_yet")
            async for message in client.messages:
                await self._handle(client, message, sink)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message, sink) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else b""
        received_ms = now_ms()
        if topic.startswith(spb.NAMESPACE + "/"):
            await self._handle_sparkplug(client, topic, payload, received_ms, sink)
            return
        for entry in self.config.topics:
            if message.topic.matches(entry.topic):
                await self._handle_json(entry, payload, received_ms, sink)
                return

    # -- JSON ------------------------------------------------------------------------------

    async def _handle_json(self, entry: JsonTopic, payload: bytes, received_ms: int, sink):
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._health.error("not_json", entry.topic)
            return
        if not isinstance(document, dict):
            self._health.error("not_json", f"{entry.topic}: not an object")
            return
        ts_ms = received_ms
        if entry.timestamp_field is not None:
            ts_ms = json_timestamp(lookup(document, entry.timestamp_field), entry.timestamp_unit)
            if ts_ms is None:
                self._health.error("bad_timestamp", entry.topic)
                return
        signals: dict[str, float] = {}
        for signal, path in entry.signals:
            raw = lookup(document, path)
            if raw is None:
                self._health.error("missing_field", path)
                continue
            value = numeric(raw)
            if value is None:
                self._health.error("not_a_number", path)
                continue
            signals[signal] = value
        if signals:
            await sink.put(EdgeSample(entry.station, ts_ms, entry.seq, signals))
            self._health.sampled(ts_ms)

    # -- Sparkplug B -----------------------------------------------------------------------

    async def _handle_sparkplug(self, client, topic: str, payload: bytes, received_ms: int, sink):
        parsed = spb.parse_topic(topic)
        if parsed is None:
            return
        state = self.nodes.get((parsed.group, parsed.edge_node))
        kind = parsed.message_type
        if state is None or kind not in ("NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"):
            return  # commands (ours included), STATE, other nodes
        try:
            decoded = spb.decode_payload(payload)
        except DecodeError:
            self._health.error("not_sparkplug", topic)
            return
        if kind == "NDEATH":
            self._node_died(state, decoded)
            return
        if kind == "NBIRTH":
            state.born = True
            state.devices_born.clear()
            state.aliases.clear()
            state.datatypes.clear()
            state.last_seq = decoded.seq
            state.rebirth_requested_at = None
            for metric in decoded.metrics:
                if metric.name == spb.BDSEQ_METRIC and isinstance(metric.value, int):
                    state.bd_seq = metric.value
        elif not state.born:
            self._health.error("data_before_birth", topic)
            await self._request_rebirth(client, parsed.group, parsed.edge_node, state, "no_birth")
            return
        elif self._seq_gap(parsed, state, decoded.seq):
            await self._request_rebirth(client, parsed.group, parsed.edge_node, state, "seq_gap")
        device = parsed.device
        if kind == "DBIRTH" and device is not None:
            state.devices_born.add(device)
            for key in [key for key in state.aliases if key[0] == device]:
                del state.aliases[key]
        if kind == "DDEATH":
            state.devices_born.discard(device or "")
            return
        if kind == "DDATA" and device not in state.devices_born:
            self._health.error("data_before_birth", topic)
            await self._request_rebirth(client, parsed.group, parsed.edge_node, state, "no_birth")
            return
        if kind in ("NBIRTH", "DBIRTH"):
            for metric in decoded.metrics:
                if metric.name is None:
                    continue
                if metric.alias is not None:
                    state.aliases[(device, metric.alias)] = metric.name
                if metric.datatype is not None:
                    state.datatypes[(device, metric.name)] = metric.datatype
        await self._forward_metrics(parsed, state, decoded, received_ms, sink)

    def _seq_gap(self, parsed: spb.Topic, state: NodeState, seq: int | None) -> bool:
        """Whether `seq` skips one (0..255, wrapping): a message of the node was missed."""
        expected = None if state.last_seq is None else (state.last_seq + 1) % 256
        state.last_seq = seq
        if seq is not None and (expected is None or seq == expected):
            return False
        self._health.error("seq_gap", f"{parsed.group}/{parsed.edge_node}: {expected}→{seq}")
        return True

    def _node_died(self, state: NodeState, decoded: spb.SparkplugPayload) -> None:
        bd_seq = next(
            (m.value for m in decoded.metrics if m.name == spb.BDSEQ_METRIC),
            None,
        )
        # An NDEATH with another bdSeq is the will of an older session: the node is alive.
        if state.bd_seq is not None and bd_seq is not None and bd_seq != state.bd_seq:
            return
        state.born = False
        state.devices_born.clear()
        state.last_seq = None

    async def _forward_metrics(self, parsed, state: NodeState, decoded, received_ms: int, sink):
        targets = self._targets.get((parsed.group, parsed.edge_node, parsed.device))
        if not targets:
            return
        for metric in decoded.metrics:
            name = metric.name
            if name is None and metric.alias is not None:
                name = state.aliases.get((parsed.device, metric.alias))
            if name is None:
                self._health.error("unknown_alias", f"{parsed.device}: {metric.alias}")
                continue
            mapped = targets.get(name)
            if not mapped:
                continue
            if metric.is_null:
                continue  # no reading: nothing to store
            datatype = metric.datatype or state.datatypes.get((parsed.device, name))
            value = spb.metric_number(metric.value, datatype)
            if value is None:
                self._health.error("unsupported_type", f"{name}: datatype {datatype}")
                continue
            ts_ms = metric.timestamp_ms or decoded.timestamp_ms or received_ms
            for target in mapped:
                await sink.put(
                    EdgeSample(target.station, ts_ms, target.seq, {target.signal: value})
                )
                self._health.sampled(ts_ms)

    async def _request_rebirth(self, client, group: str, node: str, state: NodeState, reason: str):
        now = time.monotonic()
        last = state.rebirth_requested_at
        if last is not None and now - last < self.config.rebirth_interval_s:
            return
        state.rebirth_requested_at = now
        self.rebirths_requested += 1
        REBIRTH_REQUESTS.labels(source=self.name, reason=reason).inc()
        logger.info("edge.sparkplug.rebirth_requested", source=self.name, node=node, reason=reason)
        await client.publish(
            f"{spb.NAMESPACE}/{group}/NCMD/{node}",
            spb.rebirth_request(timestamp_ms=now_ms()),
            qos=0,
        )


def lookup(document: Mapping[str, Any], path: str) -> Any:
    """`document[path]`, or nested objects for a dotted path (`axis.torque`); None if absent."""
    if path in document:
        return document[path]
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def json_timestamp(raw: Any, unit: str) -> int | None:
    """Epoch milliseconds from a JSON timestamp in `unit` (ms, s or ISO 8601), or None."""
    if unit == "iso":
        if not isinstance(raw, str):
            return None
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # a PLC without a zone means UTC; documented
        return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // _MILLISECOND
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return int(raw) if unit == "ms" else round(raw * 1000)


_MILLISECOND = datetime.resolution * 1000


def tls_context(tls: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.get("ca_file"))
    if tls.get("cert_file"):
        context.load_cert_chain(tls["cert_file"], tls.get("key_file"))
    if tls.get("insecure"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# -- config ----------------------------------------------------------------------------------


def from_config(section: list, *, path: str) -> list[MqttBroker]:
    """The `mqtt:` list of edge.yaml: one source per broker."""
    json_slots = SlotCounter(SLOT_BASE_MQTT_JSON)
    sparkplug_slots = SlotCounter(SLOT_BASE_SPARKPLUG)
    return sources_from_list(
        section,
        path=path,
        noun="broker",
        build=lambda entry, at: MqttBroker(
            broker_config(entry, path=at, json_slots=json_slots, sparkplug_slots=sparkplug_slots)
        ),
    )


def broker_config(
    entry: Mapping[str, Any], *, path: str, json_slots: SlotCounter, sparkplug_slots: SlotCounter
) -> MqttBrokerConfig:
    known = {
        "name",
        "host",
        "port",
        "client_id",
        "username_env",
        "password_env",
        "tls",
        "keepalive_s",
        "rebirth_interval_s",
        "topics",
        "sparkplug",
    }
    refuse_unknown_keys(entry, known, path=path)
    host = take(entry, "host", str, path=path)
    tls = take(entry, "tls", (dict, bool), path=path, default=None)
    if tls is True:
        tls = {}
    elif tls is False:
        tls = None
    if tls is not None:
        refuse_unknown_keys(
            tls, {"ca_file", "cert_file", "key_file", "insecure"}, path=f"{path}.tls"
        )
        for key in ("ca_file", "cert_file", "key_file"):
            file = take(tls, key, str, path=f"{path}.tls", default=None)
            if file is not None and not os.path.isfile(file):
                raise SourceConfigError(f"{path}.tls.{key}: no file {file}")
    port = take_port(entry, "port", path=path, default=8883 if tls is not None else 1883)
    topics = take(entry, "topics", list, path=path, default=[])
    devices = take(entry, "sparkplug", list, path=path, default=[])
    if not topics and not devices:
        raise SourceConfigError(f"{path}: needs `topics`, `sparkplug` or both")
    client_id = take(entry, "client_id", str, path=path)
    if not client_id:
        raise SourceConfigError(f"{path}.client_id: a stable, non-empty id (the session's key)")
    return MqttBrokerConfig(
        name=take(entry, "name", str, path=path, default=f"mqtt:{host}:{port}"),
        host=host,
        port=port,
        client_id=client_id,
        username=secret_from_env(entry, "username_env", path=path),
        password=secret_from_env(entry, "password_env", path=path),
        tls=tls,
        keepalive_s=int(take_positive(entry, "keepalive_s", path=path, default=30)),
        rebirth_interval_s=take_positive(entry, "rebirth_interval_s", path=path, default=5.0),
        topics=tuple(
            json_topic(item, path=f"{path}.topics[{index}]", slots=json_slots)
            for index, item in enumerate(topics)
        ),
        sparkplug=tuple(
            sparkplug_device(item, path=f"{path}.sparkplug[{index}]", slots=sparkplug_slots)
            for index, item in enumerate(devices)
        ),
    )


def json_topic(entry: Mapping[str, Any], *, path: str, slots: SlotCounter) -> JsonTopic:
    known = {"topic", "station", "format", "timestamp_field", "timestamp_unit", "signals"}
    refuse_unknown_keys(entry, known, path=path)
    topic = take(entry, "topic", str, path=path)
    if not topic or topic.startswith(spb.NAMESPACE + "/"):
        raise SourceConfigError(f"{path}.topic: a topic filter outside {spb.NAMESPACE}/")
    take_choice(entry, "format", ("json",), path=path, default="json")
    station = take_station(entry, path=path)
    mapping = take(entry, "signals", dict, path=path)
    if not mapping:
        raise SourceConfigError(f"{path}.signals: at least one signal")
    signals = []
    for signal, field_path in mapping.items():
        check_signal_name(signal, path=f"{path}.signals")
        if not isinstance(field_path, str) or not field_path:
            raise SourceConfigError(f"{path}.signals.{signal}: the JSON field name, a string")
        signals.append((signal, field_path))
    return JsonTopic(
        topic=topic,
        station=station,
        seq=slots.next(station, path=path),
        timestamp_field=take(entry, "timestamp_field", str, path=path, default=None),
        timestamp_unit=take_choice(
            entry, "timestamp_unit", TIMESTAMP_UNITS, path=path, default="ms"
        ),
        signals=tuple(signals),
    )


def sparkplug_device(entry: Mapping[str, Any], *, path: str, slots: SlotCounter) -> SparkplugDevice:
    refuse_unknown_keys(entry, {"group", "edge_node", "device", "station", "metrics"}, path=path)
    group = take(entry, "group", str, path=path)
    edge_node = take(entry, "edge_node", str, path=path)
    device = take(entry, "device", str, path=path, default=None)
    for key, value in (("group", group), ("edge_node", edge_node), ("device", device)):
        if value is not None and (not value or any(c in value for c in "/+#")):
            raise SourceConfigError(f"{path}.{key}: a Sparkplug id without / + #, got {value!r}")
    station = take_station(entry, path=path)
    metrics = take(entry, "metrics", dict, path=path)
    if not metrics:
        raise SourceConfigError(f"{path}.metrics: at least one metric")
    targets = []
    for metric, signal in metrics.items():
        if not isinstance(metric, str) or not metric:
            raise SourceConfigError(f"{path}.metrics: metric names are strings, got {metric!r}")
        check_signal_name(signal, path=f"{path}.metrics.{metric}")
        targets.append((metric, MetricTarget(station, signal, slots.next(station, path=path))))
    return SparkplugDevice(group, edge_node, device, station, tuple(targets))
