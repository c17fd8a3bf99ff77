"""`manage.py bench_ingest`: what the ingest pipeline moves on this machine, against its floors.

One run measures, for each NATS `sync_interval` asked for (the product's `always` first, then
the server default `2m`), on a nats-server of its own started for the run:

- **raw COPY floor**: the rows of the batched messages, joined and encoded beforehand exactly as
  the worker does, written batch by batch through the worker's own `SampleStore.write` (plain
  COPY, the idempotent path on a repeated key) into a scratch copy of `telemetry_sample`
  (`LIKE … INCLUDING ALL`: the same key, indexes and defaults). Only the database is timed.
- **raw consume**: the same messages pulled with nats-py from a durable consumer of the same
  configuration and acknowledged one by one, nothing else done with them.
- **end to end**: real `manage.py bench_ingest --serve-worker` processes (the `IngestWorker`
  of `manage.py ingest`, pointed at the scratch table) draining the published stream with 1 and
  with 2 workers, for batched messages (100 samples of 4 signals) and single-sample messages
  (one sample of 4 signals). The consumer is paused until every worker has a pull request
  waiting, then resumed; the time runs from the resume to the last acknowledgement (the
  consumer's ack floor reaching the stream's last message, polled every 20 ms).
- **latency**: messages of 20 samples published at a fixed rate (20,000 samples/s by default:
  20 stations at 1 kHz flushing every 20 ms) to one worker; for each message the time from
  just before its publish to the worker's acknowledgement, which follows the commit (the
  bench listens on the consumer's `$JS.ACK` subjects). The worker's resident memory is read
  every second, so `--latency-seconds 600` is the 10-minute memory check.
- **accounting**: after every end-to-end run the scratch table must hold exactly the published
  samples, every key once, each row with the VIN of the unit that was at its station at its
  instant; messages dead-lettered are counted from the DEAD_LETTERS stream.

The plant is a throwaway line of stations with a unit at each station every few seconds (so
the join does real work), created in the database for the run and removed afterwards with the
scratch table and the nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.js.errors
import orjson
import psutil
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from nats.aio.client import Client
from psycopg import sql

from aegis import jetstream
from aegis.embedded.servers import NatsServer, free_port
from mes.models import (
    Area,
    Line,
    Product,
    Site,
    Station,
    StationType,
    StationVisit,
    Unit,
    WorkOrder,
    vin_check_digit,
)
from telemetry.enrichment import StateHistory, default_since
from telemetry.ingest import CONSUMER, TELEMETRY_STREAM, Puller
from telemetry.payloads import Rejection, parse_message, time_window
from telemetry.simulator.publisher import StationStream, TelemetryPublisher
from telemetry.storage import TABLE, CopyRows, SampleStore, database_parameters

SIGNALS = ("torque", "angle", "speed", "current")
VISIT_MS = 5_000  # a unit arrives at each station every 5 s of sample time
WORKER_READY_S = 120.0
DRAIN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BenchSizes:
    stations: int = 20
    batched_samples: int = 400_000
    samples_per_message: int = 100
    single_messages: int = 80_000
    latency_rate: int = 20_000  # samples/s
    latency_samples_per_message: int = 20
    latency_seconds: float = 20.0
    workers: tuple[int, ...] = (1, 2)
    sync_intervals: tuple[str, ...] = ("always", "2m")
    batch_size: int | None = None  # the worker's defaults unless given
    batch_wait_ms: int | None = None


Progress = Callable[[str], None]


# -- the plant ---------------------------------------------------------------------------------


class BenchPlant:
    """A throwaway line of tightening stations; every station has a unit every VISIT_MS from
    `first_ms` on (the last visit stays open, for live samples). Written with the ORM directly
    (no audit, no outbox: nothing of it outlives the run) and removed by `remove`."""

    def __init__(self, *, stations: int, first_ms: int, span_ms: int) -> None:
        self.tag = secrets.token_hex(3)
        self.codes = [f"bench-{self.tag}-{n:02d}" for n in range(1, stations + 1)]
        self.first_ms = first_ms
        self.span_ms = span_ms
        self.site: Site | None = None
        self.station_ids: dict[str, int] = {}

    def create(self) -> None:
        def at(ms: int) -> dt.datetime:
            return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)

        visits_per_station = self.span_ms // VISIT_MS + 1
        with transaction.atomic():
            self.site = Site.objects.create(
                code=f"bench-{self.tag}", name="Ingest benchmark (removed after the run)"
            )
            area = Area.objects.create(site=self.site, code="bench", name="Benchmark")
            line = Line.objects.create(area=area, code="bench", name="Benchmark")
            stations = Station.objects.bulk_create(
                Station(
                    line=line,
                    code=code,
                    name=f"Benchmark station {n}",
                    position=n,
                    station_type=StationType.TIGHTENING,
                )
                for n, code in enumerate(self.codes, start=1)
            )
            self.station_ids = {station.code: station.id for station in stations}
            product = Product.objects.create(code=f"bench-{self.tag}", name="Benchmark product")
            work_order = WorkOrder.objects.create(
                external_id=f"bench-{self.tag}",
                product=product,
                line=line,
                quantity=len(stations) * visits_per_station,
            )
            units = Unit.objects.bulk_create(
                Unit(serial=f"BENCH-{self.tag}-{n:06d}", vin=self._vin(n), work_order=work_order)
                for n in range(len(stations) * visits_per_station)
            )
            visits = []
            for s, station in enumerate(stations):
                for v in range(visits_per_station):
                    arrived = self.first_ms + v * VISIT_MS
                    last = v == visits_per_station - 1
                    visits.append(
                        StationVisit(
                            unit=units[s * visits_per_station + v],
                            station=station,
                            arrived_at=at(arrived),
                            left_at=None if last else at(arrived + VISIT_MS),
                        )
                    )
            StationVisit.objects.bulk_create(visits)

    def _vin(self, number: int) -> str:
        # 17 characters, the check digit in position 9 (the alphabet has no I, O or Q).
        body = f"1BNCH{int(self.tag, 16) % 1000:03d}0{number:08d}"
        return body[:8] + vin_check_digit(body) + body[9:]

    def remove(self) -> None:
        if self.site is None:
            return
        with transaction.atomic():
            stations = Station.objects.filter(line__area__site=self.site)
            StationVisit.objects.filter(station__in=stations).delete()
            work_orders = WorkOrder.objects.filter(line__area__site=self.site)
            Unit.objects.filter(work_order__in=work_orders).delete()
            products = list(work_orders.values_list("product_id", flat=True))
            work_orders.delete()
            Product.objects.filter(id__in=products).delete()
            stations.delete()
            Line.objects.filter(area__site=self.site).delete()
            Area.objects.filter(site=self.site).delete()
            self.site.delete()
        self.site = None

    def subject(self, code: str) -> str:
        return f"aegis.telemetry.raw.{code}"


def signals_at(ts: int, station: int) -> dict[str, float]:
    """Four plausible signal values, varying by sample (cheap, deterministic)."""
    phase = (ts + station * 37) % 1000
    return {
        "torque": round(40.0 + phase * 0.011, 3),
        "angle": round(phase * 0.36, 2),
        "speed": round(1180.0 + phase * 0.05, 1),
        "current": round(7.0 + phase * 0.002, 3),
    }


def backlog(plant: BenchPlant, *, start_ms: int, samples_per_station: int, per_message: int):
    """Messages of the whole plant, stations interleaved as a plant publishes them; each
    station samples every millisecond from `start_ms` on."""
    streams = [StationStream(code, batch=per_message) for code in plant.codes]
    messages = []
    for first in range(0, samples_per_station, per_message):
        for n, stream in enumerate(streams):
            for ts in range(start_ms + first, start_ms + first + per_message):
                message = stream.add(ts, signals_at(ts, n))
                if message is not None:
                    messages.append(message)
    return messages


# -- the scratch table ---------------------------------------------------------------------


class ScratchTable:
    """A copy of telemetry_sample (its key, indexes and defaults; no foreign keys)."""

    def __init__(self, tag: str) -> None:
        self.name = f"bench_sample_{tag}"
        self.identifier = sql.Identifier(self.name)

    def _execute(self, statement: sql.Composable, params=None) -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(statement.as_string(cursor.connection), params)
            return cursor.fetchall() if cursor.description else []

    def create(self) -> None:
        self._execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                self.identifier, sql.Identifier(TABLE)
            )
        )

    def truncate(self) -> None:
        self._execute(sql.SQL("TRUNCATE {}").format(self.identifier))

    def drop(self) -> None:
        self._execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.identifier))

    def account(self) -> tuple[int, int, int]:
        """(rows, repeated keys, rows whose VIN is not the unit at the station at that instant)."""
        rows, repeated = self._execute(
            sql.SQL(
                "SELECT count(*), count(*) - count(DISTINCT (station_id, ts, seq)) FROM {}"
            ).format(self.identifier)
        )[0]
        misattributed = self._execute(
            sql.SQL(
                "SELECT count(*) FROM {} s LEFT JOIN LATERAL ("
                "  SELECT u.vin FROM mes_stationvisit v JOIN mes_unit u ON u.id = v.unit_id"
                "  WHERE v.station_id = s.station_id AND v.arrived_at <= s.ts"
                "    AND (v.left_at IS NULL OR s.ts < v.left_at)) expected ON true"
                " WHERE s.vin IS DISTINCT FROM expected.vin"
            ).format(self.identifier)
        )[0][0]
        return rows, repeated, misattributed


# -- a nats-server of the run's own ----------------------------------------------------------


@contextlib.contextmanager
def private_nats(sync_interval: str) -> Iterator[str]:
    """A nats-server with JetStream in a temporary directory; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="aegis-bench-nats-") as directory:
        server = NatsServer(Path(directory), secrets.token_urlsafe(16), sync_interval)
        running = server.start(free_port())
        try:
            yield running.url
        finally:
            server.stop(running)


async def connect_to(url: str) -> Client:
    return await nats.connect(url, name="aegis-bench", max_reconnect_attempts=0)


def _ingest_consumer() -> jetstream.ConsumerSpec:
    return next(spec for spec in jetstream.consumers() if spec.durable == CONSUMER)


async def _recreate_consumer(js, durable: str = CONSUMER) -> None:
    """The ingest consumer from the start of the stream again (for the next run)."""
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(TELEMETRY_STREAM, durable)
    config = _ingest_consumer().config(replicas=1)
    config.durable_name = durable
    await js.add_consumer(TELEMETRY_STREAM, config)


async def _pause(client: Client, paused: bool) -> None:
    """Pause (or resume) the ingest consumer: workers wait with their pull requests."""
    body = {}
    if paused:
        until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        body["pause_until"] = until.isoformat().replace("+00:00", "Z")
    reply = await client.request(
        f"$JS.API.CONSUMER.PAUSE.{TELEMETRY_STREAM}.{CONSUMER}", orjson.dumps(body), timeout=5
    )
    answer = orjson.loads(reply.data)
    if "error" in answer or answer.get("paused") is not paused:
        raise RuntimeError(f"could not {'pause' if paused else 'resume'} the consumer: {answer}")


async def _publish(url: str, messages: list) -> float:
    """Publish with acks; returns messages per second."""
    client = await connect_to(url)
    publisher = TelemetryPublisher(client, max_pending=2_000)
    await publisher.start()
    started = time.perf_counter()
    for message in messages:
        await publisher.publish(message)
    if not await publisher.drain(120):
        raise RuntimeError(f"publishing did not finish: {publisher.last_error}")
    seconds = time.perf_counter() - started
    await publisher.close()
    await client.close()
    if publisher.rejected or publisher.duplicates or publisher.acked_messages != len(messages):
        raise RuntimeError(
            f"the stream did not take every message once ({publisher.acked_messages} acked, "
            f"{publisher.duplicates} duplicates, {publisher.rejected} refused): "
            f"{publisher.last_error}"
        )
    return len(messages) / seconds


# -- floors ------------------------------------------------------------------------------------


def encode_batches(messages: list, history: StateHistory, batch_size: int) -> list[CopyRows]:
    """The rows the worker would write, batch by batch: parsed, joined and encoded alike."""
    window = time_window(
        now_ms=time.time_ns() // 1_000_000, retention_hours=settings.TELEMETRY_RETENTION_HOURS
    )
    batches = []
    for start in range(0, len(messages), batch_size):
        rows = CopyRows()
        for message in messages[start : start + batch_size]:
            parsed = parse_message(message.payload, subject=message.subject, window=window)
            if type(parsed) is Rejection:
                raise RuntimeError(f"the bench made a bad message: {parsed}")
            station_id = history.station_id(parsed.station)
            starts, values = history.timeline(station_id)
            begin = rows.mark()
            for ts, seq, signals in parsed.samples:
                rows.add(station_id, ts, seq, values[bisect_right(starts, ts) - 1], signals)
            rows.end_message(begin)
        batches.append(rows)
    return batches


async def raw_copy(table: ScratchTable, batches: list[CopyRows]) -> float:
    """Rows per second of the COPYs alone (the worker's writer, one session)."""
    store = SampleStore(database_parameters(), table=table.name)
    await store.open()
    seconds = rows = 0
    try:
        for batch in batches:
            result = await store.write(batch)
            seconds += result.seconds
            rows += result.stored
    finally:
        await store.close()
    return rows / seconds


async def raw_consume(url: str, total: int, batch_size: int) -> float:
    """Messages per second pulled and acknowledged with nats-py, nothing else done."""
    client = await connect_to(url)
    js = client.jetstream()
    durable = "bench-raw"
    await _recreate_consumer(js, durable)
    puller = Puller(client, stream=TELEMETRY_STREAM, consumer=durable)
    await puller.start()
    received, started = 0, None
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while received < total and time.monotonic() < deadline:
        await puller.request(batch_size, 0.25)
        messages = await puller.collect()
        if messages and started is None:
            started = time.perf_counter()
        for msg in messages:
            await msg.ack()
        received += len(messages)
    seconds = time.perf_counter() - (started or time.perf_counter())
    await puller.stop()
    await js.delete_consumer(TELEMETRY_STREAM, durable)
    await client.close()
    if received < total:
        raise RuntimeError(f"raw consume got {received} of {total} messages")
    # The first batch's arrival starts the clock, so it does not count.
    return (received - min(batch_size, total)) / seconds if seconds else 0.0


# -- workers -----------------------------------------------------------------------------------


def _database_url() -> str:
    """The URL of the database this process uses (the test database under pytest)."""
    p = connection.settings_dict
    user, password = p.get("USER") or "", p.get("PASSWORD") or ""
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = p.get("HOST") or "localhost"
    port = f":{p['PORT']}" if p.get("PORT") else ""
    return f"postgresql://{credentials}{host}{port}/{p['NAME']}"


class BenchProcesses:
    """Processes of a run (`manage.py …`, daphne) against the run's nats-server and this
    process's database; each one's output goes to a temporary file."""

    def __init__(self, commands: list[list[str]], *, nats_url: str) -> None:
        environment = dict(os.environ)
        environment.update(
            {
                "AEGIS_NATS_URL": nats_url,
                "AEGIS_DATABASE_URL": _database_url(),
                "AEGIS_LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.logs = [tempfile.TemporaryFile(mode="w+") for _ in commands]  # noqa: SIM115
        self.processes = [
            subprocess.Popen(
                command,
                cwd=settings.BASE_DIR,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for command, log in zip(commands, self.logs, strict=True)
        ]

    def check_alive(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(
                    f"{' '.join(process.args[1:4])} exited with {process.returncode}:\n"
                    f"{log.read()[-4000:]}"
                )

    def rss_bytes(self) -> int:
        return sum(psutil.Process(p.pid).memory_info().rss for p in self.processes)

    def stop(self) -> list[str]:
        """SIGTERM every process, wait for it, and return what each printed."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        outputs = []
        for process, log in zip(self.processes, self.logs, strict=True):
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            log.seek(0)
            outputs.append(log.read())
            log.close()
        return outputs


def manage(*arguments: str) -> list[str]:
    return [sys.executable, "manage.py", *arguments]


class WorkerProcesses(BenchProcesses):
    """`manage.py bench_ingest --serve-worker TABLE` processes: `IngestWorker` as `manage.py
    ingest` runs it, writing into the scratch table."""

    def __init__(self, count: int, *, nats_url: str, table: str, sizes: BenchSizes) -> None:
        arguments = manage("bench_ingest", "--serve-worker", table)
        if sizes.batch_size:
            arguments += ["--batch-size", str(sizes.batch_size)]
        if sizes.batch_wait_ms:
            arguments += ["--batch-wait-ms", str(sizes.batch_wait_ms)]
        super().__init__([arguments] * count, nats_url=nats_url)

    def totals(self) -> list[dict]:
        """Stop the workers; the totals each printed last."""
        totals = []
        for output in self.stop():
            lines = [line for line in output.splitlines() if line.startswith('{"bench_worker"')]
            if not lines:
                raise RuntimeError(f"a worker ended without its totals:\n{output[-4000:]}")
            totals.append(orjson.loads(lines[-1])["bench_worker"])
        return totals


async def _wait_for_waiting_pulls(js, workers: WorkerProcesses, count: int) -> None:
    deadline = time.monotonic() + WORKER_READY_S
    while time.monotonic() < deadline:
        workers.check_alive()
        info = await js.consumer_info(TELEMETRY_STREAM, CONSUMER)
        if (info.num_waiting or 0) >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{count} workers did not start pulling within {WORKER_READY_S:g} s")


@dataclass
class DrainResult:
    samples_per_s: float
    messages_per_s: float
    duplicates_absorbed: int
    dead_lettered: int
    seconds: float


async def drain(
    url: str,
    *,
    workers: int,
    table: ScratchTable,
    messages: int,
    samples_per_message: int,
    sizes: BenchSizes,
) -> DrainResult:
    """Real worker processes drain the stream into the scratch table (emptied before)."""
    client = await connect_to(url)
    js = client.jetstream()
    state = (await js.stream_info(TELEMETRY_STREAM)).state
    if state.messages != messages:
        raise RuntimeError(f"the stream holds {state.messages} messages, not {messages}")
    last = state.last_seq
    dead_before = (await js.stream_info("DEAD_LETTERS")).state.messages
    await _recreate_consumer(js)
    await _pause(client, True)
    processes = WorkerProcesses(workers, nats_url=url, table=table.name, sizes=sizes)
    try:
        await _wait_for_waiting_pulls(js, processes, workers)
        await _pause(client, False)
        started = time.perf_counter()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            acked = (await js.consumer_info(TELEMETRY_STREAM, CONSUMER)).ack_floor.stream_seq
            if acked >= last:
                break
            processes.check_alive()
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError(f"the workers did not drain {messages} messages in time")
        seconds = time.perf_counter() - started
    finally:
        totals = processes.totals()
    dead = (await js.stream_info("DEAD_LETTERS")).state.messages - dead_before
    await client.close()
    return DrainResult(
        samples_per_s=messages * samples_per_message / seconds,
        messages_per_s=messages / seconds,
        duplicates_absorbed=sum(t["duplicates"] for t in totals),
        dead_lettered=dead,
        seconds=seconds,
    )


# -- latency -----------------------------------------------------------------------------------


@dataclass
class LatencyResult:
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    messages: int
    rss_mb: list[float] = field(default_factory=list)


def _ack_sequence(subject: str) -> int | None:
    """The stream sequence in an ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream
    seq>.…` (9 tokens) or with domain and account hash in front (12 tokens)."""
    tokens = subject.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    if len(tokens) >= 12:
        return int(tokens[7])
    return None


async def latency(
    url: str, *, plant: BenchPlant, table: ScratchTable, sizes: BenchSizes, progress: Progress
) -> LatencyResult:
    """Publish live samples at a fixed rate to one worker; publish → acknowledged per message
    (the scratch table is emptied before)."""
    client = await connect_to(url)
    js = client.jetstream()
    await js.purge_stream(TELEMETRY_STREAM)
    await _recreate_consumer(js)
    acked: dict[int, float] = {}

    async def on_ack(msg) -> None:
        sequence = _ack_sequence(msg.subject)
        if sequence is not None:
            acked.setdefault(sequence, time.monotonic())

    await client.subscribe(f"$JS.ACK.{TELEMETRY_STREAM}.{CONSUMER}.>", cb=on_ack)
    processes = WorkerProcesses(1, nats_url=url, table=table.name, sizes=sizes)
    sent: dict[int, float] = {}
    failures: list[str] = []
    rss: list[float] = []
    try:
        await _wait_for_waiting_pulls(js, processes, 1)
        per_message = sizes.latency_samples_per_message
        stations = len(plant.codes)
        interval_s = per_message * stations / sizes.latency_rate  # one message per station
        streams = [StationStream(code, batch=per_message) for code in plant.codes]

        async def publish_one(message) -> None:
            before = time.monotonic()
            try:
                ack = await js.publish(
                    message.subject, message.payload, headers={"Nats-Msg-Id": message.msg_id}
                )
            except Exception as error:  # noqa: BLE001 - reported after the run
                failures.append(f"{type(error).__name__}: {error}")
                return
            sent[ack.seq] = before

        tasks: set[asyncio.Task] = set()
        started = time.monotonic()
        rounds = int(sizes.latency_seconds / interval_s)
        next_rss = started
        for round_number in range(rounds):
            due = started + (round_number + 1) * interval_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            # The samples of the last interval, the newest taken just now.
            last_ms = time.time_ns() // 1_000_000
            for n, stream in enumerate(streams):
                for ts in range(last_ms - per_message + 1, last_ms + 1):
                    message = stream.add(ts, signals_at(ts, n))
                    if message is not None:
                        task = asyncio.ensure_future(publish_one(message))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
            if time.monotonic() >= next_rss:
                processes.check_alive()
                rss.append(processes.rss_bytes() / 2**20)
                next_rss += 1.0
                if len(rss) % 30 == 0:
                    progress(f"    latency: {len(rss)} s, worker RSS {rss[-1]:.0f} MiB")
        seconds = time.monotonic() - started
        if tasks:
            await asyncio.wait(tasks)
        deadline = time.monotonic() + 30
        while len(acked.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        processes.stop()
        await client.close()
    if failures:
        raise RuntimeError(f"{len(failures)} publishes failed, e.g. {failures[0]}")
    latencies = sorted((acked[s] - sent[s]) * 1000 for s in sent if s in acked)
    if len(latencies) < len(sent):
        raise RuntimeError(f"{len(sent) - len(latencies)} messages were never acknowledged")
    cut = statistics.quantiles(latencies, n=100, method="inclusive")
    return LatencyResult(
        rate=len(sent) * sizes.latency_samples_per_message / seconds,
        p50_ms=cut[49],
        p99_ms=cut[98],
        max_ms=latencies[-1],
        messages=len(sent),
        rss_mb=rss,
    )


# -- the whole run -----------------------------------------------------------------------------


def migrate_if_needed(say: Callable[[str], None]) -> None:
    """A fresh clone's database has no tables yet: migrate it as `make run` would."""
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        say(f"applying {len(plan)} migrations first")
        call_command("migrate", verbosity=0)


def machine() -> dict:
    memory = psutil.virtual_memory().total
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": connection.pg_version,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run(sizes: BenchSizes, progress: Progress) -> dict:
    """Every measurement of one run; the keys of the first sync interval are the headline."""
    samples_per_station = sizes.batched_samples // sizes.stations
    single_per_station = sizes.single_messages // sizes.stations
    # The single-sample backlog follows the batched one: other keys, other message ids.
    span_ms = samples_per_station + single_per_station
    first_ms = time.time_ns() // 1_000_000 - span_ms - 3_600_000  # an hour of backlog ago
    plant = BenchPlant(stations=sizes.stations, first_ms=first_ms, span_ms=span_ms)
    table = ScratchTable(plant.tag)
    batch_size = sizes.batch_size or 500
    result: dict = {"machine": machine(), "by_sync_interval": {}}
    progress(f"plant: {sizes.stations} stations; scratch table {table.name}")
    try:
        plant.create()
        table.create()
        batched = backlog(
            plant,
            start_ms=first_ms,
            samples_per_station=samples_per_station,
            per_message=sizes.samples_per_message,
        )
        single = backlog(
            plant,
            start_ms=first_ms + samples_per_station,
            samples_per_station=single_per_station,
            per_message=1,
        )
        batched_samples = len(batched) * sizes.samples_per_message
        history = StateHistory.load(since=default_since())
        progress("raw COPY floor")
        rows = encode_batches(batched, history, batch_size)
        table.truncate()
        raw_copy_rate = asyncio.run(raw_copy(table, rows))
        single_rows = encode_batches(single, history, batch_size)
        table.truncate()
        raw_copy_single_rate = asyncio.run(raw_copy(table, single_rows))
        del rows, single_rows
        progress(
            f"  {raw_copy_rate:,.0f} rows/s in COPYs of {batch_size} messages of "
            f"{sizes.samples_per_message} samples; {raw_copy_single_rate:,.0f} rows/s in "
            f"COPYs of {batch_size} rows"
        )
        for sync_interval in sizes.sync_intervals:
            progress(f"nats-server with sync_interval {sync_interval}")
            with private_nats(sync_interval) as url:
                measured = _measure_on(
                    url,
                    plant=plant,
                    table=table,
                    sizes=sizes,
                    batched=batched,
                    single=single,
                    progress=progress,
                    with_latency=sync_interval == sizes.sync_intervals[0],
                )
            measured["raw_copy_rows_per_s"] = raw_copy_rate
            measured["raw_copy_single_rows_per_s"] = raw_copy_single_rate
            measured["batched_ratio_vs_raw_copy"] = measured["batched_samples_per_s"] / (
                raw_copy_rate
            )
            for count in sizes.workers:  # the floor is one session: 2 workers can pass it
                run_rate = measured["runs"]["batched"][f"workers_{count}"]["samples_per_s"]
                measured[f"batched_{count}_workers_ratio_vs_raw_copy"] = run_rate / raw_copy_rate
            result["by_sync_interval"][sync_interval] = measured
        headline = result["by_sync_interval"][sizes.sync_intervals[0]]
        result.update({k: v for k, v in headline.items() if k != "runs"})
        result["nats_sync_interval"] = sizes.sync_intervals[0]
        result["published_samples_batched"] = batched_samples
        result["published_messages_single"] = len(single)
    finally:
        table.drop()
        plant.remove()
    return result


def _measure_on(
    url: str,
    *,
    plant: BenchPlant,
    table: ScratchTable,
    sizes: BenchSizes,
    batched: list,
    single: list,
    progress: Progress,
    with_latency: bool,
) -> dict:
    async def provision() -> None:
        client = await connect_to(url)
        await jetstream.provision(client.jetstream(), 1)
        await client.close()

    asyncio.run(provision())
    out: dict = {"runs": {}}
    published = stored = repeated = absorbed = dead = misattributed = 0
    for form, messages, per_message in (
        ("batched", batched, sizes.samples_per_message),
        ("single", single, 1),
    ):
        asyncio.run(_purge(url))
        publish_rate = asyncio.run(_publish(url, messages))
        consume_rate = asyncio.run(raw_consume(url, len(messages), sizes.batch_size or 500))
        progress(
            f"  {form}: {len(messages):,} messages published at {publish_rate:,.0f} msgs/s; "
            f"raw consume {consume_rate:,.0f} msgs/s"
        )
        out["runs"][form] = {
            "publish_msgs_per_s": publish_rate,
            "raw_consume_msgs_per_s": consume_rate,
        }
        if form == "batched":
            out["raw_consume_msgs_per_s"] = consume_rate
            out["raw_consume_samples_per_s"] = consume_rate * per_message
        else:
            out["raw_consume_single_msgs_per_s"] = consume_rate
        best = 0.0
        for count in sizes.workers:
            table.truncate()
            drained = asyncio.run(
                drain(
                    url,
                    workers=count,
                    table=table,
                    messages=len(messages),
                    samples_per_message=per_message,
                    sizes=sizes,
                )
            )
            stored_now, repeated_now, wrong_vin = table.account()
            progress(
                f"    {count} worker{'s' if count > 1 else ''}: "
                f"{drained.samples_per_s:,.0f} samples/s ({drained.messages_per_s:,.0f} "
                f"msgs/s); stored {stored_now:,}, repeated keys {repeated_now}, "
                f"wrong VIN {wrong_vin}, dead-lettered {drained.dead_lettered}"
            )
            out["runs"][form][f"workers_{count}"] = {
                **drained.__dict__,
                "stored": stored_now,
                "repeated_keys": repeated_now,
                "misattributed": wrong_vin,
            }
            best = max(best, drained.samples_per_s)
            published += len(messages) * per_message
            stored += stored_now
            repeated += repeated_now
            absorbed += drained.duplicates_absorbed
            dead += drained.dead_lettered
            misattributed += wrong_vin
        if form == "batched":
            out["batched_samples_per_s"] = best
        else:
            out["single_msgs_per_s"] = best
    out.update(
        published=published,
        stored=stored,
        duplicates=repeated,  # keys stored twice: the table's key makes it 0, checked anyway
        redeliveries_absorbed=absorbed,
        dead_lettered=dead,
        misattributed=misattributed,
    )
    if with_latency:
        asyncio.run(_purge(url))
        table.truncate()
        progress(
            f"  latency: {sizes.latency_rate:,} samples/s in messages of "
            f"{sizes.latency_samples_per_message} for {sizes.latency_seconds:g} s"
        )
        measured = asyncio.run(
            latency(url, plant=plant, table=table, sizes=sizes, progress=progress)
        )
        rss = measured.rss_mb
        # The first half includes the warm-up (allocator pools, caches filling); flat memory
        # means no growth over the second half.
        middle = rss[len(rss) // 2] if rss else None
        out.update(
            latency_rate_samples_per_s=measured.rate,
            latency_p50_ms=measured.p50_ms,
            latency_p99_ms=measured.p99_ms,
            latency_max_ms=measured.max_ms,
            latency_messages=measured.messages,
            worker_rss_mb_half_time=middle,
            worker_rss_mb_end=rss[-1] if rss else None,
            worker_rss_mb_max=max(rss) if rss else None,
            worker_rss_growth_second_half_mb=rss[-1] - middle if rss else None,
            latency_seconds=sizes.latency_seconds,
        )
        progress(
            f"    {measured.rate:,.0f} samples/s: p50 {measured.p50_ms:.1f} ms, p99 "
            f"{measured.p99_ms:.1f} ms, max {measured.max_ms:.1f} ms; worker RSS "
            f"{middle:.0f} MiB at half time, {rss[-1]:.0f} MiB at the end"
        )
    return out


async def _purge(url: str) -> None:
    client = await connect_to(url)
    js = client.jetstream()
    await js.purge_stream(TELEMETRY_STREAM)
    await js.purge_stream("DEAD_LETTERS")
    await client.close()
