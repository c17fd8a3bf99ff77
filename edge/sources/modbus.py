"""Modbus TCP source: polls registers at fixed rates and maps each poll to one sample.

One `ModbusDevice` source per configured device (one TCP connection); each poll group runs on
its own fixed-rate clock and becomes one sample per poll, `seq` = the group's slot, `ts` = the
moment the last response of the poll arrived (Modbus carries no timestamps).

A poll reads the group's registers in as few requests as the protocol allows: registers of one
kind that are contiguous or overlapping are read together, up to 125 registers or 2,000 bits
per request. Gaps are not bridged, since an address the device does not have fails the whole
request.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin

from aegis.backoff import Backoff
from edge.samples import EdgeSample, SampleSink
from edge.sources import (
    SLOT_BASE_MODBUS,
    SlotCounter,
    SourceConfigError,
    SourceHealth,
    check_signal_name,
    now_ms,
    reconnecting,
    refuse_unknown_keys,
    sources_from_list,
    take,
    take_choice,
    take_list,
    take_port,
    take_positive,
    take_station,
)

logger = structlog.get_logger(__name__)

POLL_OVERRUNS = Counter(
    "aegis_edge_source_modbus_poll_overruns_total",
    "Poll periods skipped because a poll took longer than its period (never caught up).",
    ["source"],
)
POLL_LATENESS = Histogram(
    "aegis_edge_source_modbus_poll_lateness_seconds",
    "How long after its tick on the fixed-rate clock a poll was sent (scheduling jitter).",
    ["source"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
POLL_SECONDS = Histogram(
    "aegis_edge_source_modbus_poll_seconds",
    "From sending a poll's first request to its last response.",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

REGISTER_KINDS = ("holding", "input")
BIT_KINDS = ("coil", "discrete")
WORDS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
DATATYPES = {
    "int16": ModbusClientMixin.DATATYPE.INT16,
    "uint16": ModbusClientMixin.DATATYPE.UINT16,
    "int32": ModbusClientMixin.DATATYPE.INT32,
    "uint32": ModbusClientMixin.DATATYPE.UINT32,
    "float32": ModbusClientMixin.DATATYPE.FLOAT32,
    "float64": ModbusClientMixin.DATATYPE.FLOAT64,
}
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000
MAX_RATE_HZ = 1000.0


@dataclass(frozen=True, slots=True)
class Register:
    signal: str
    kind: str  # holding | input | coil | discrete
    address: int
    type: str  # int16 ... float64; "bit" for coils and discrete inputs
    word_order: str  # big: the first register holds the most significant word
    scale: float
    offset: float

    @property
    def width(self) -> int:
        return 1 if self.kind in BIT_KINDS else WORDS[self.type]


@dataclass(frozen=True, slots=True)
class ReadRange:
    kind: str
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class PollGroup:
    station: str
    seq: int
    rate_hz: float
    registers: tuple[Register, ...]

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass(frozen=True, slots=True)
class ModbusDeviceConfig:
    name: str
    host: str
    port: int
    unit_id: int
    timeout_s: float
    poll_groups: tuple[PollGroup, ...]


def plan_reads(registers: tuple[Register, ...]) -> list[ReadRange]:
    """The fewest requests that read `registers`: contiguous or overlapping runs of one kind,
    split at the protocol's per-request limit."""
    reads: list[ReadRange] = []
    for kind in (*REGISTER_KINDS, *BIT_KINDS):
        limit = MAX_BITS_PER_READ if kind in BIT_KINDS else MAX_REGISTERS_PER_READ
        spans = sorted((r.address, r.address + r.width) for r in registers if r.kind == kind)
        start = end = None
        for span_start, span_end in spans:
            if start is not None and span_start <= end and span_end - start <= limit:
                end = max(end, span_end)
                continue
            if start is not None:
                reads.append(ReadRange(kind, start, end - start))
            start, end = span_start, span_end
        if start is not None:
            reads.append(ReadRange(kind, start, end - start))
    return reads


def decode(register: Register, words: list[int] | list[bool]) -> float:
    """One register's reading from the words (or bits) read at its address, scaled."""
    if register.kind in BIT_KINDS:
        raw = 1.0 if words[0] else 0.0
    else:
        raw = float(
            ModbusClientMixin.convert_from_registers(
                list(words),
                DATATYPES[register.type],
                word_order=register.word_order,  # type: ignore[arg-type]
            )
        )
    return raw * register.scale + register.offset


class ModbusDevice:
    """Polls one Modbus TCP device; one sample per poll group and poll."""

    def __init__(self, config: ModbusDeviceConfig) -> None:
        self.config = config
        self.name = config.name
        self._health = SourceHealth(self.name)
        self._plans = [plan_reads(group.registers) for group in config.poll_groups]
        self.overruns = 0
        self.polls = 0
        self._overrun_metric = POLL_OVERRUNS.labels(source=self.name)
        self._poll_seconds = POLL_SECONDS.labels(source=self.name)
        self._poll_lateness = POLL_LATENESS.labels(source=self.name)
        self.recent_lateness_s: deque[float] = deque(maxlen=10_000)

    def health(self) -> dict:
        return self._health.as_dict(
            kind="modbus",
            endpoint=f"{self.config.host}:{self.config.port}",
            polls=self.polls,
            overruns=self.overruns,
        )

    async def run(self, sink: SampleSink) -> None:
        await reconnecting(self._health, lambda backoff: self._session(sink, backoff))

    async def _session(self, sink: SampleSink, backoff: Backoff) -> None:
        client = AsyncModbusTcpClient(
            self.config.host,
            port=self.config.port,
            timeout=self.config.timeout_s,
            retries=0,
            # aegis.backoff does the reconnecting, with the source's health and metrics.
            reconnect_delay=0,
        )
        try:
            if not await client.connect():
                raise ConnectionError(f"cannot connect to {self.config.host}:{self.config.port}")
            self._health.set_connected(True)
            backoff.reset()
            lock = asyncio.Lock()  # one request in flight per connection
            pollers = [
                asyncio.create_task(self._poll_forever(client, lock, group, plan, sink))
                for group, plan in zip(self.config.poll_groups, self._plans, strict=True)
            ]
            try:
                # The first poller that loses the connection ends the session for all.
                done, _ = await asyncio.wait(pollers, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            finally:
                for task in pollers:
                    task.cancel()
                await asyncio.gather(*pollers, return_exceptions=True)
        finally:
            self._health.set_connected(False)
            client.close()

    async def _poll_forever(
        self,
        client: AsyncModbusTcpClient,
        lock: asyncio.Lock,
        group: PollGroup,
        plan: list[ReadRange],
        sink: SampleSink,
    ) -> None:
        """Poll on a fixed-rate clock: tick k is due at start + k * period, whatever the polls
        before it took, so the rate never drifts. A poll that runs past later ticks skips them
        (counted as overruns) instead of bursting to catch up."""
        loop = asyncio.get_running_loop()
        period = group.period_s
        started = loop.time()
        tick = 0
        last_ts_ms = 0
        while True:
            lateness = loop.time() - (started + tick * period)
            self.recent_lateness_s.append(lateness)
            self._poll_lateness.observe(lateness)
            signals = await self._poll(client, lock, group, plan)
            if signals is not None:
                # Two polls within one millisecond (a clock step, or rates near 1 kHz) would
                # share a key and one would be dropped as a repeat: keep keys increasing.
                ts_ms = last_ts_ms = max(now_ms(), last_ts_ms + 1)
                await sink.put(EdgeSample(group.station, ts_ms, group.seq, signals))
                self._health.sampled(ts_ms)
            tick += 1
            now = loop.time()
            due = started + tick * period
            if now >= due:
                late_ticks = math.floor((now - due) / period) + 1
                self.overruns += late_ticks
                self._overrun_metric.inc(late_ticks)
                tick += late_ticks
                due = started + tick * period
            await asyncio.sleep(due - now)

    async def _poll(
        self,
        client: AsyncModbusTcpClient,
        lock: asyncio.Lock,
        group: PollGroup,
        plan: list[ReadRange],
    ) -> dict[str, float] | None:
        """The group's signals, or None when the device answered a request with an exception
        (counted). A lost connection raises and ends the session."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        words: dict[tuple[str, int], int | bool] = {}
        async with lock:
            for read in plan:
                response = await self._read(client, read)
                if response.isError():
                    self._health.error("exception_response", f"{read}: {response}")
                    return None
                values = response.bits if read.kind in BIT_KINDS else response.registers
                for index in range(read.count):
                    words[(read.kind, read.address + index)] = values[index]
        self.polls += 1
        self._poll_seconds.observe(loop.time() - started)
        signals: dict[str, float] = {}
        for register in group.registers:
            raw = [words[(register.kind, register.address + i)] for i in range(register.width)]
            value = decode(register, raw)
            if value != value or math.isinf(value):
                self._health.error("not_a_number", register.signal)
                continue
            signals[register.signal] = value
        return signals or None

    async def _read(self, client: AsyncModbusTcpClient, read: ReadRange):
        unit = self.config.unit_id
        if read.kind == "holding":
            return await client.read_holding_registers(
                read.address, count=read.count, device_id=unit
            )
        if read.kind == "input":
            return await client.read_input_registers(read.address, count=read.count, device_id=unit)
        if read.kind == "coil":
            return await client.read_coils(read.address, count=read.count, device_id=unit)
        return await client.read_discrete_inputs(read.address, count=read.count, device_id=unit)


# -- config ----------------------------------------------------------------------------------


def from_config(section: list, *, path: str) -> list[ModbusDevice]:
    """The `modbus:` list of edge.yaml: one source per device."""
    slots = SlotCounter(SLOT_BASE_MODBUS)
    return sources_from_list(
        section,
        path=path,
        noun="device",
        build=lambda entry, at: ModbusDevice(device_config(entry, path=at, slots=slots)),
    )


def device_config(entry: Mapping[str, Any], *, path: str, slots: SlotCounter) -> ModbusDeviceConfig:
    known = {"name", "host", "port", "unit_id", "timeout_s", "poll_groups"}
    refuse_unknown_keys(entry, known, path=path)
    host = take(entry, "host", str, path=path)
    port = take_port(entry, "port", path=path, default=502)
    unit_id = take(entry, "unit_id", int, path=path, default=1)
    if not 0 <= unit_id <= 255:
        raise SourceConfigError(f"{path}.unit_id: 0..255, got {unit_id!r}")
    groups = take_list(entry, "poll_groups", path=path)
    return ModbusDeviceConfig(
        name=take(entry, "name", str, path=path, default=f"modbus:{host}:{port}/{unit_id}"),
        host=host,
        port=port,
        unit_id=unit_id,
        timeout_s=take_positive(entry, "timeout_s", path=path, default=1.0),
        poll_groups=tuple(
            poll_group(group, path=f"{path}.poll_groups[{index}]", slots=slots)
            for index, group in enumerate(groups)
        ),
    )


def poll_group(entry: Mapping[str, Any], *, path: str, slots: SlotCounter) -> PollGroup:
    refuse_unknown_keys(entry, {"station", "rate_hz", "registers"}, path=path)
    station = take_station(entry, path=path)
    rate_hz = take_positive(entry, "rate_hz", path=path, maximum=MAX_RATE_HZ)
    registers = tuple(
        register(item, path=f"{path}.registers[{index}]")
        for index, item in enumerate(take_list(entry, "registers", path=path))
    )
    signals = [item.signal for item in registers]
    for signal in signals:
        if signals.count(signal) > 1:
            raise SourceConfigError(f"{path}.registers: signal {signal!r} appears twice")
    return PollGroup(station, slots.next(station, path=path), rate_hz, registers)


def register(entry: Mapping[str, Any], *, path: str) -> Register:
    known = {"signal", "kind", "address", "type", "word_order", "scale", "offset"}
    refuse_unknown_keys(entry, known, path=path)
    kind = take_choice(entry, "kind", (*REGISTER_KINDS, *BIT_KINDS), path=path, default="holding")
    address = take(entry, "address", int, path=path)
    if not 0 <= address <= 65535:
        raise SourceConfigError(f"{path}.address: 0..65535, got {address!r}")
    if kind in BIT_KINDS:
        if "type" in entry or "word_order" in entry:
            raise SourceConfigError(f"{path}: a {kind} is one bit; it takes no type or word_order")
        type_ = "bit"
    else:
        type_ = take_choice(entry, "type", tuple(WORDS), path=path, default="uint16")
        if address + WORDS[type_] > 65536:
            raise SourceConfigError(f"{path}.address: {type_} at {address} runs past 65535")
    return Register(
        signal=check_signal_name(take(entry, "signal", str, path=path), path=f"{path}.signal"),
        kind=kind,
        address=address,
        type=type_,
        word_order=take_choice(entry, "word_order", ("big", "little"), path=path, default="big"),
        scale=take(entry, "scale", float, path=path, default=1.0),
        offset=take(entry, "offset", float, path=path, default=0.0),
    )
