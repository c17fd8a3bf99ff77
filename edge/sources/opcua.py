"""OPC UA source: a subscription per server, one sample per data-change notification.

One `OpcUaServer` source per configured endpoint. Each session creates a subscription with a
monitored item per mapped node (a node mapped to several stations is monitored once and fans
out). Every notification becomes one sample: `seq` = the signal's slot, `ts` = the value's
SourceTimestamp (when the PLC sampled it), else its ServerTimestamp; a value with neither is
counted (`no_timestamp`) and stamped with the time it arrived.

The server queues up to `queue_size` values per item between publishes, so changes faster
than the publishing interval are delivered, in order. Values whose status is not Good (Bad or
Uncertain) are counted and not forwarded. A lost connection ends the session; the next one
re-creates the subscription. Changes while disconnected are not recovered (OPC UA data-change
subscriptions keep no history across sessions).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from aegis.backoff import Backoff
from edge.samples import EdgeSample, SampleSink
from edge.sources import (
    SLOT_BASE_OPCUA,
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
    take_list,
    take_positive,
    take_station,
)

logger = structlog.get_logger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)
SECURITY_MODES = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


@dataclass(frozen=True, slots=True)
class OpcUaSignal:
    node: str  # a NodeId string, e.g. ns=2;s=Press1.Torque
    station: str
    signal: str
    seq: int
    sampling_interval_ms: float
    queue_size: int


@dataclass(frozen=True, slots=True)
class OpcUaSecurity:
    policy: str  # Basic256Sha256
    mode: str  # Sign | SignAndEncrypt
    certificate: str
    private_key: str
    server_certificate: str | None


@dataclass(frozen=True, slots=True)
class OpcUaServerConfig:
    name: str
    endpoint: str
    security: OpcUaSecurity | None
    username: str | None
    password: str | None
    publishing_interval_ms: float
    timeout_s: float
    liveness_check_s: float
    max_pending: int
    signals: tuple[OpcUaSignal, ...]


def timestamp_ms(moment: datetime) -> int:
    """Epoch milliseconds of an OPC UA DateTime (naive ones are UTC), exact, rounded down."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MILLISECOND


class _Notifications:
    """asyncua's subscription handler: queues each notification, in arrival order, for the
    source's loop (asyncua calls it in a task per notification; this one never awaits, so
    the tasks run in the order the publish responses listed the values)."""

    def __init__(self, pending: deque, wake: asyncio.Event, overflow) -> None:
        self.pending = pending
        self.wake = wake
        self.overflow = overflow

    def datachange_notification(self, node, value, data) -> None:
        if len(self.pending) == self.pending.maxlen:
            self.overflow()
        self.pending.append((node.nodeid, data.monitored_item.Value, now_ms()))
        self.wake.set()

    def status_change_notification(self, status) -> None:
        logger.warning("edge.opcua.subscription_status", status=str(status))


class OpcUaServer:
    """Subscribes to one OPC UA server's mapped nodes."""

    def __init__(self, config: OpcUaServerConfig) -> None:
        self.config = config
        self.name = config.name
        self._health = SourceHealth(self.name)
        self._by_node: dict[str, list[OpcUaSignal]] = {}
        for signal in config.signals:
            self._by_node.setdefault(signal.node, []).append(signal)
        self.notifications = 0

    def health(self) -> dict:
        return self._health.as_dict(
            kind="opcua",
            endpoint=self.config.endpoint,
            notifications=self.notifications,
        )

    async def run(self, sink: SampleSink) -> None:
        await reconnecting(self._health, lambda backoff: self._session(sink, backoff))

    async def _client(self) -> Client:
        client = Client(self.config.endpoint, timeout=self.config.timeout_s)
        security = self.config.security
        if security is not None:
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                security.certificate,
                security.private_key,
                server_certificate=security.server_certificate,
                mode=SECURITY_MODES[security.mode],
            )
        if self.config.username is not None:
            client.set_user(self.config.username)
        if self.config.password is not None:
            client.set_password(self.config.password)
        return client

    async def _session(self, sink: SampleSink, backoff: Backoff) -> None:
        client = await self._client()
        pending: deque = deque(maxlen=self.config.max_pending)
        wake = asyncio.Event()
        handler = _Notifications(pending, wake, lambda: self._health.error("queue_overflow"))
        try:
            await client.connect()
            subscription = await client.create_subscription(
                self.config.publishing_interval_ms, handler
            )
            nodes = {node_id: client.get_node(node_id) for node_id in self._by_node}
            by_node_id: dict[Any, list[OpcUaSignal]] = {}
            for node_id, node in nodes.items():
                signals = self._by_node[node_id]
                result = await subscription.subscribe_data_change(
                    [node],
                    queuesize=max(signal.queue_size for signal in signals),
                    sampling_interval=min(signal.sampling_interval_ms for signal in signals),
                )
                if isinstance(result, list) and isinstance(result[0], ua.StatusCode):
                    self._health.error("bad_node", f"{node_id}: {result[0]}")
                    continue
                by_node_id[node.nodeid] = signals
            self._health.set_connected(True)
            backoff.reset()
            logger.info("edge.source.connected", source=self.name, items=len(by_node_id))
            liveness = asyncio.create_task(self._check_liveness(client))
            try:
                await self._forward(pending, wake, by_node_id, sink, liveness)
            finally:
                liveness.cancel()
                await asyncio.gather(liveness, return_exceptions=True)
        finally:
            self._health.set_connected(False)
            try:
                await asyncio.wait_for(client.disconnect(), self.config.timeout_s)
            except Exception:  # noqa: BLE001 - the connection is already gone
                logger.debug("edge.opcua.disconnect_failed", source=self.name)

    async def _check_liveness(self, client: Client) -> None:
        """Read the server's state now and then: a server that died or a cable pulled ends the
        session here even when no values change."""
        state_node = client.get_node(ua.ObjectIds.Server_ServerStatus_State)
        while True:
            await asyncio.sleep(self.config.liveness_check_s)
            await asyncio.wait_for(state_node.read_value(), self.config.timeout_s)

    async def _forward(self, pending: deque, wake: asyncio.Event, by_node_id, sink, liveness):
        while True:
            if not pending:
                wake.clear()
                waiter = asyncio.create_task(wake.wait())
                done, _ = await asyncio.wait(
                    {waiter, liveness}, return_when=asyncio.FIRST_COMPLETED
                )
                if liveness in done:
                    waiter.cancel()
                    liveness.result()  # raises why the connection is gone
                    return
                continue
            node_id, data_value, received_ms = pending.popleft()
            self.notifications += 1
            for signal in by_node_id.get(node_id, ()):
                sample = self._sample(signal, data_value, received_ms)
                if sample is not None:
                    await sink.put(sample)
                    self._health.sampled(sample.ts_ms)

    def _sample(self, signal: OpcUaSignal, data_value, received_ms: int) -> EdgeSample | None:
        status = data_value.StatusCode
        if status is not None and not status.is_good():
            reason = "bad_status" if status.is_bad() else "uncertain_status"
            self._health.error(reason, f"{signal.node}: {status}")
            return None
        variant = data_value.Value
        value = numeric(variant.Value if variant is not None else None)
        if value is None:
            self._health.error("not_a_number", signal.node)
            return None
        moment = data_value.SourceTimestamp or data_value.ServerTimestamp
        if moment is None:
            self._health.error("no_timestamp", signal.node)
            logger.warning("edge.opcua.no_timestamp", source=self.name, node=signal.node)
            ts_ms = received_ms
        else:
            ts_ms = timestamp_ms(moment)
        return EdgeSample(signal.station, ts_ms, signal.seq, {signal.signal: value})


# -- config ----------------------------------------------------------------------------------


def from_config(section: list, *, path: str) -> list[OpcUaServer]:
    """The `opcua:` list of edge.yaml: one source per server."""
    slots = SlotCounter(SLOT_BASE_OPCUA)
    return sources_from_list(
        section,
        path=path,
        noun="server",
        build=lambda entry, at: OpcUaServer(server_config(entry, path=at, slots=slots)),
    )


def server_config(entry: Mapping[str, Any], *, path: str, slots: SlotCounter) -> OpcUaServerConfig:
    known = {
        "name",
        "endpoint",
        "security",
        "username_env",
        "password_env",
        "publishing_interval_ms",
        "timeout_s",
        "liveness_check_s",
        "max_pending",
        "signals",
    }
    refuse_unknown_keys(entry, known, path=path)
    endpoint = take(entry, "endpoint", str, path=path)
    if not endpoint.startswith("opc.tcp://"):
        raise SourceConfigError(f"{path}.endpoint: an opc.tcp:// URL, got {endpoint!r}")
    max_pending = take(entry, "max_pending", int, path=path, default=100_000)
    if max_pending < 1:
        raise SourceConfigError(f"{path}.max_pending: at least 1, got {max_pending}")
    signals = tuple(
        signal_config(item, path=f"{path}.signals[{index}]", slots=slots)
        for index, item in enumerate(take_list(entry, "signals", path=path))
    )
    seen: set[tuple[str, str]] = set()
    for signal in signals:
        if (signal.station, signal.signal) in seen:
            raise SourceConfigError(
                f"{path}.signals: {signal.station} {signal.signal!r} is mapped twice"
            )
        seen.add((signal.station, signal.signal))
    return OpcUaServerConfig(
        name=take(
            entry, "name", str, path=path, default=f"opcua:{endpoint.removeprefix('opc.tcp://')}"
        ),
        endpoint=endpoint,
        security=security_config(entry, path=path),
        username=secret_from_env(entry, "username_env", path=path),
        password=secret_from_env(entry, "password_env", path=path),
        publishing_interval_ms=take_positive(
            entry, "publishing_interval_ms", path=path, default=100
        ),
        timeout_s=take_positive(entry, "timeout_s", path=path, default=4.0),
        liveness_check_s=take_positive(entry, "liveness_check_s", path=path, default=2.0),
        max_pending=max_pending,
        signals=signals,
    )


def security_config(entry: Mapping[str, Any], *, path: str) -> OpcUaSecurity | None:
    security = take(entry, "security", (dict, str), path=path, default=None)
    if security is None or security == "None":
        return None
    if isinstance(security, str):
        raise SourceConfigError(f"{path}.security: None, or a mapping with policy Basic256Sha256")
    where = f"{path}.security"
    known = {"policy", "mode", "certificate", "private_key", "server_certificate"}
    refuse_unknown_keys(security, known, path=where)
    return OpcUaSecurity(
        policy=take_choice(
            security, "policy", ("Basic256Sha256",), path=where, default="Basic256Sha256"
        ),
        mode=take_choice(
            security, "mode", tuple(SECURITY_MODES), path=where, default="SignAndEncrypt"
        ),
        certificate=take(security, "certificate", str, path=where),
        private_key=take(security, "private_key", str, path=where),
        server_certificate=take(security, "server_certificate", str, path=where, default=None),
    )


def signal_config(entry: Mapping[str, Any], *, path: str, slots: SlotCounter) -> OpcUaSignal:
    known = {"node", "station", "signal", "sampling_interval_ms", "queue_size"}
    refuse_unknown_keys(entry, known, path=path)
    node = take(entry, "node", str, path=path)
    try:
        ua.NodeId.from_string(node)
    except (ValueError, ua.UaStringParsingError) as error:
        raise SourceConfigError(f"{path}.node: not a NodeId ({error}), got {node!r}") from None
    station = take_station(entry, path=path)
    queue_size = take(entry, "queue_size", int, path=path, default=100)
    if not 1 <= queue_size <= 100_000:
        raise SourceConfigError(f"{path}.queue_size: 1..100000, got {queue_size}")
    sampling_interval_ms = take(entry, "sampling_interval_ms", float, path=path, default=0.0)
    if sampling_interval_ms < 0:
        raise SourceConfigError(f"{path}.sampling_interval_ms: 0 (fastest) or more")
    return OpcUaSignal(
        node=node,
        station=station,
        signal=check_signal_name(take(entry, "signal", str, path=path), path=f"{path}.signal"),
        seq=slots.next(station, path=path),
        sampling_interval_ms=sampling_interval_ms,
        queue_size=queue_size,
    )
