"""The simulation run: the simulated clock, sampling, pacing, publishing and the rate report.

`Simulation` is the deterministic core, with no I/O: it advances the simulated clock, lets the
plant act, samples every published station at the sampling rate and cuts the samples into
messages. `simulate()` paces it against the wall clock (`speed`), publishes its messages with
async acks, hands the plant's MES actions to a worker thread, and prints a rate report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client

from telemetry.simulator.faults import FaultSettings
from telemetry.simulator.plant import (
    Action,
    MesSink,
    NullSink,
    Plant,
    PlantLayout,
    iso,
)
from telemetry.simulator.publisher import Message, StationStream, TelemetryPublisher
from telemetry.simulator.signals import station_generator

MAX_RATE_HZ = 1000.0
MAX_BATCH = 5000
STEP_MS = 100  # simulated time generated per turn of the loop, at most
MES_BACKLOG_LIMIT = 20_000  # actions waiting for the database before the simulation waits
# Each stops a run cleanly: Ctrl-C, a supervisor (honcho, Docker, systemd), a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class SimulationConfig:
    seed: int | str
    start_ms: int
    stations: tuple[str, ...] | None = None  # codes; None: every station of the plant
    rate_hz: float = 100.0
    batch: int = 100
    duration_s: float | None = None  # simulated seconds; None: forever
    speed: float = 1.0  # simulated seconds per wall second; 0: as fast as possible
    mes: bool = True
    faults: FaultSettings = field(default_factory=FaultSettings)
    report_every_s: float = 5.0
    max_pending: int = 4000  # publishes waiting for their ack
    catch_up_to_now: bool = True  # never run the simulated clock ahead of the wall clock

    @property
    def end_ms(self) -> int | None:
        if self.duration_s is None:
            return None
        return self.start_ms + int(self.duration_s * 1000)


class Simulation:
    """Sampling and batching on the simulated clock: the same config gives the same bytes."""

    def __init__(self, layout: PlantLayout, config: SimulationConfig) -> None:
        if not 0 < config.rate_hz <= MAX_RATE_HZ:
            raise ValueError(f"rate must be above 0 and at most {MAX_RATE_HZ:g} Hz per station")
        if not 1 <= config.batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1 to {MAX_BATCH} samples per message")
        self.config = config
        known = {spec.code: spec for spec in layout.stations}
        wanted = list(known) if config.stations is None else list(config.stations)
        unknown = [code for code in wanted if code not in known]
        if unknown:
            raise ValueError(f"unknown stations: {', '.join(unknown)}")
        selected = set(wanted)
        # A line is simulated when it has a published station; all its stations take part so
        # units move (and faults act) the same whichever of them publish telemetry.
        lines = [
            line
            for line in layout.lines
            if any(op.station.code in selected for op in line.operations)
        ]
        on_lines = {op.station.code for line in lines for op in line.operations}
        self.generators = {
            code: station_generator(spec, seed=config.seed, rate_hz=config.rate_hz)
            for code, spec in known.items()
            if code in selected or code in on_lines
        }
        self.plant = Plant(
            lines,
            generators=self.generators,
            seed=config.seed,
            start_ms=config.start_ms,
            faults=config.faults,
        )
        self.sampled = [
            (self.generators[code], StationStream(code, batch=config.batch))
            for code in known
            if code in selected
        ]
        self.index = 0  # next sample number (the same for every station)
        self.now_ms = config.start_ms  # everything before this instant has been generated
        self.samples = 0

    def ts_of(self, index: int) -> int:
        return self.config.start_ms + int(index * 1000 / self.config.rate_hz)

    def advance(self, until_ms: int) -> list[Message]:
        """Generate every sample before `until_ms`; returns the messages that filled up."""
        messages: list[Message] = []
        plant, sampled = self.plant, self.sampled
        index = self.index
        ts = self.ts_of(index)
        while ts < until_ms:
            plant.run_until(ts)
            for generator, stream in sampled:
                message = stream.add(ts, generator.sample(ts))
                if message is not None:
                    messages.append(message)
            index += 1
            ts = self.ts_of(index)
        self.samples += (index - self.index) * len(sampled)
        self.index = index
        plant.run_until(until_ms - 1)
        self.now_ms = max(self.now_ms, until_ms)
        return messages

    def finish(self) -> list[Message]:
        """The partly filled batches, and the ground truth of the units still on the lines."""
        self.plant.actions.extend(self.plant.in_flight_truth())
        return [m for _, stream in self.sampled if (m := stream.flush()) is not None]


@dataclass
class Summary:
    samples: int = 0
    messages: int = 0
    acked_messages: int = 0
    duplicates: int = 0
    rejected: int = 0
    unacked: int = 0
    seconds: float = 0.0
    simulated_s: float = 0.0
    units_completed: int = 0
    faults_injected: int = 0
    defects: int = 0
    mes: bool = True
    mes_applied: int = 0
    mes_errors: int = 0
    last_errors: list[str] = field(default_factory=list)
    by_fault: dict[str, int] = field(default_factory=dict)


class MesWorker:
    """Applies the plant's actions in one worker thread (Django ORM calls are synchronous) so
    the publishing loop never waits for the database."""

    def __init__(self, sink, *, truth: Callable[[dict], None]) -> None:
        self.sink = sink
        self.truth = truth
        self.queue: deque[Action] = deque()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simulator-mes")
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def backlog(self) -> int:
        return len(self.queue)

    def submit(self, actions: list[Action]) -> None:
        if actions:
            self.queue.extend(actions)
            self._idle.clear()
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                batch = [self.queue.popleft() for _ in range(min(500, len(self.queue)))]
                try:
                    for record in await loop.run_in_executor(self.executor, self.sink.apply, batch):
                        self.truth(record)
                except Exception as error:  # noqa: BLE001 - the worker outlives any one batch
                    self.sink.report.errors += len(batch)
                    self.sink.report.last_errors.append(f"{type(error).__name__}: {error}"[:300])
            self._idle.set()

    async def wait_below(self, limit: int) -> None:
        while len(self.queue) > limit:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self._idle.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.get_running_loop().run_in_executor(self.executor, self.sink.close)
        self.executor.shutdown(wait=True)


def truth_summary(record: dict) -> str:
    """One line per labelled unit: the fault, the unit, the evidence, the defect it caused."""
    unit = record.get("unit") or record.get("sim_unit")
    text = f"{record['fault']} {unit}" + (f" (VIN {record['vin']})" if record.get("vin") else "")
    evidence = record.get("evidence") or {}
    if record["fault"] == "bad_firmware":
        text += f" got {record['component']} {record['version']} at {record['flash_station']}"
        text += f", torque +{evidence.get('drift_pct')} % at {evidence.get('station')}"
    elif record["fault"] in ("tool_wear", "seal_wear"):
        signal = evidence.get("signal")
        text += f" at {record['station']}, wear {record['wear']:.2f}, {signal} "
        value = evidence.get("min_torque", evidence.get("leak_rate"))
        text += f"{value} (limit {evidence.get('limit')})"
    defect = record.get("defect")
    if defect:
        text += f" → {defect['code']} at {defect['station']}"
    if not record.get("complete", True):
        text += " (still on the line)"
    return text


def _rate_line(sim: Simulation, publisher: TelemetryPublisher, mes: MesWorker, last, now):
    seconds = max(1e-9, now - last["at"])
    samples = (publisher.sent_samples - last["samples"]) / seconds
    messages = (publisher.sent_messages - last["messages"]) / seconds
    last.update(at=now, samples=publisher.sent_samples, messages=publisher.sent_messages)
    counters = sim.plant.counters
    line = (
        f"sim {iso(sim.now_ms)}  {samples:,.0f} samples/s  {messages:,.0f} msgs/s  "
        f"acks outstanding {publisher.outstanding}  units completed {counters.units_completed}  "
        f"faults injected {counters.faults_injected}  mes backlog {mes.backlog}"
    )
    errors = mes.sink.report.errors
    if errors or publisher.rejected:
        line += f"  mes errors {errors}  rejected {publisher.rejected}"
    return line


async def _connect_unless_stopped(connect, stop: asyncio.Event, out, state: dict):
    """The NATS client, once connected (the client retries while NATS is not up yet), or None
    when the run is stopped first."""
    connecting = asyncio.ensure_future(connect())
    stopping = asyncio.ensure_future(stop.wait())
    waiting = {connecting, stopping}
    done, _ = await asyncio.wait(waiting, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
    if not done:
        out(f"waiting for NATS ({state['error'] or 'connecting'}); SIGINT, SIGTERM or SIGHUP stops")
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if connecting in done:
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await connecting
    return None


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for signum in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signum)


async def simulate(
    layout: PlantLayout,
    config: SimulationConfig,
    *,
    connect: Callable[..., Awaitable[Client]],
    out: Callable[[str], None],
    truth_file: Path | None = None,
    announce_faults: bool = True,
) -> Summary:
    """Run until the duration is simulated or a stop signal; returns what was done."""
    simulation = Simulation(layout, config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    nats_state = {"error": "", "disconnected": False, "closing": False}

    async def on_error(error: Exception) -> None:
        # nats-py retries by itself; one line per outage instead of a traceback per attempt.
        nats_state["error"] = f"{type(error).__name__}: {error}"

    async def on_disconnected() -> None:
        if not nats_state["disconnected"] and not nats_state["closing"]:
            out(f"NATS disconnected ({nats_state['error'] or 'no reason'}): publishing waits")
        nats_state["disconnected"] = True

    async def on_reconnected() -> None:
        nats_state["disconnected"] = False
        out("NATS reconnected: unacked messages are published again")

    def connect_client():
        return connect(
            error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected
        )

    client = await _connect_unless_stopped(connect_client, stop, out, nats_state)
    if client is None:
        _remove_signal_handlers(loop)
        return Summary(mes=config.mes)
    truth_handle = truth_file.open("w", encoding="utf-8") if truth_file else None

    def truth(record: dict) -> None:
        if truth_handle is not None:
            truth_handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            truth_handle.flush()
        if announce_faults and "unit" in record:
            out(f"truth: {truth_summary(record)}")

    sink = MesSink(layout) if config.mes else NullSink()
    mes = MesWorker(sink, truth=truth)
    publisher = TelemetryPublisher(client, max_pending=config.max_pending, stop=stop)
    await publisher.start()
    end_ms = config.end_ms if config.end_ms is not None else math.inf
    started = time.monotonic()
    wall_start_ms = config.start_ms
    last = {"at": started, "samples": 0, "messages": 0}
    next_report = started + config.report_every_s
    # Below this much simulated time the loop waits instead of generating a sliver.
    min_step_ms = 10 if config.speed else 0
    try:
        while not stop.is_set() and simulation.now_ms < end_ms:
            now = time.monotonic()
            target = end_ms
            if config.speed > 0:
                target = min(target, wall_start_ms + (now - started) * config.speed * 1000)
            if config.catch_up_to_now:
                target = min(target, time.time() * 1000)
            if target - simulation.now_ms < min_step_ms and target < end_ms:
                await asyncio.sleep(0.005)
            else:
                until = int(min(simulation.now_ms + STEP_MS, target))
                if until > simulation.now_ms:
                    for message in simulation.advance(until):
                        await publisher.publish(message)
                mes.submit(simulation.plant.take_actions())
                await publisher.retry_failed()
                if mes.backlog > MES_BACKLOG_LIMIT:
                    await mes.wait_below(MES_BACKLOG_LIMIT // 2)
                await asyncio.sleep(0)
            if now >= next_report:
                out(_rate_line(simulation, publisher, mes, last, now))
                next_report = now + config.report_every_s
        for message in simulation.finish():
            await publisher.publish(message)
        mes.submit(simulation.plant.take_actions())
        drained = await publisher.drain(timeout_s=30.0)
        if not drained:
            out(f"gave up waiting for {publisher.outstanding} acks ({publisher.last_error})")
        await mes.close()
    finally:
        _remove_signal_handlers(loop)
        await publisher.close()
        nats_state["closing"] = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.drain(), timeout=10.0)
        await client.close()
        if truth_handle is not None:
            truth_handle.close()
    counters = simulation.plant.counters
    return Summary(
        samples=publisher.sent_samples,
        messages=publisher.sent_messages,
        acked_messages=publisher.acked_messages,
        duplicates=publisher.duplicates,
        rejected=publisher.rejected,
        unacked=publisher.outstanding + publisher.unsent,
        seconds=time.monotonic() - started,
        simulated_s=(simulation.now_ms - config.start_ms) / 1000,
        units_completed=counters.units_completed,
        faults_injected=counters.faults_injected,
        defects=counters.defects,
        mes=config.mes,
        mes_applied=sink.report.applied,
        mes_errors=sink.report.errors,
        last_errors=list(sink.report.last_errors)
        + ([publisher.last_error] if publisher.rejected else []),
        by_fault=dict(counters.by_fault),
    )
