"""`manage.py bench_alerts`: from the publish of a triggering sample to the alert at a browser.

On a nats-server of its own (`sync_interval: always`, as the product runs) and the configured
PostgreSQL and Redis, the run starts the real processes of the path — daphne (web and
websockets), the Foresight scorer (`manage.py foresight`; with `scorers` > 1, that many
partitions, `--partition I/N`) and an ingest worker (into a scratch copy of the telemetry
table, as `bench_ingest` does) — then:

- publishes background telemetry of a throwaway plant (20 stations at 1 kHz, messages of 20
  samples: 20,000 samples/s) for the whole run;
- once the stations' running baselines are warm, makes one sample of one station (round
  robin) an obvious fault every `interval` (its torque ten times normal) and notes the time
  just before that message's publish;
- listens on a websocket as a signed-in supervisor would (`/ws/events/`, the plant group), and
  notes when each `defect.alert` arrives.

The latency of an alert is its arrival minus its publish; alerts are matched to injections by
station and the triggering sample's timestamp. Alerts that match no injection are counted as
unexpected. To explain a result: the CPU seconds of every process over the run, the scorers' CPU
per published sample, and the scorers' backlog (their consumers' undelivered plus
unacknowledged messages, sampled every SAMPLE_LAG_S) in messages and in seconds of traffic.
The plant, the scratch table, the user and session, and the rows the run made (scores, alerts,
unpublished outbox rows) are removed afterwards; the audit trail keeps its entries of the
alerts, as it must.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
import numpy as np
import orjson
import psutil
import websockets
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import Group
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection

from aegis import jetstream
from aegis.embedded.servers import free_port
from foresight import registry
from foresight.detectors import DEFAULT_KIND, train
from foresight.features import FeatureSpec, StationWindows, default_spec
from foresight.models import DefectAlert, ModelStatus, ModelVersion
from foresight.scorer import Partition
from mes.models import OutboxMessage, Station
from telemetry import bench as ingest_bench
from telemetry.bench import (
    SIGNALS,
    BenchPlant,
    BenchProcesses,
    ScratchTable,
    connect_to,
    manage,
    signals_at,
)
from telemetry.simulator.publisher import StationStream

READY_S = 120.0
SAMPLE_LAG_S = 0.25
TRAINING_SAMPLES = 60_000  # a minute of a station at 1 kHz
FAULT_FACTOR = 10.0  # the injected sample's torque, times its normal value


@dataclass(frozen=True)
class AlertBenchSizes:
    stations: int = 20
    rate: int = 20_000  # background samples/s
    samples_per_message: int = 20
    seconds: float = 30.0
    warmup_seconds: float = 5.0
    interval_s: float = 0.5  # between injected faults
    scorers: int = 1  # scorer processes, one partition each
    # The nats-server's fsync policy: "always" as the product runs; "2m" (the server's default)
    # shows how much of the latency is the disk's.
    sync_interval: str = "always"

    @property
    def partitions(self) -> list[Partition]:
        return [Partition(index, self.scorers) for index in range(1, self.scorers + 1)]


def _session_cookie(tag: str) -> tuple[str, object, str]:
    """A supervisor of the run's own and a session for it: (cookie, user, session key)."""
    user = get_user_model().objects.create_user(
        username=f"bench-{tag}", password=secrets.token_urlsafe(24)
    )
    user.groups.add(Group.objects.get(name="supervisor"))
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}", user, session.session_key


def _wait_for_http(url: str, processes: BenchProcesses) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        processes.check_alive()
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=2),  # noqa: S310 - loopback
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {READY_S:g} s")


async def _sample_backlog(
    js, consumers: list[str], backlog: list[int], done: asyncio.Event
) -> None:
    """Every SAMPLE_LAG_S until `done`, the messages the scorers' consumers have not delivered or
    have not had acknowledged yet, summed over the consumers. (Stopped by an event, not by
    cancelling: nats-py turns a cancelled request into a timeout, which would be swallowed.)"""
    while not done.is_set():
        total = 0
        for name in consumers:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                info = await js.consumer_info("TELEMETRY", name)
                total += (info.num_pending or 0) + (info.num_ack_pending or 0)
        backlog.append(total)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), SAMPLE_LAG_S)


async def _run(
    url: str, *, plant: BenchPlant, port: int, cookie: str, sizes: AlertBenchSizes, progress
) -> dict:
    origin = f"http://127.0.0.1:{port}"
    arrivals: dict[tuple[str, int], float] = {}
    unexpected: list[dict] = []
    injected: dict[tuple[str, int], float] = {}
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ws/events/",
        additional_headers={"Cookie": cookie, "Origin": origin},
        open_timeout=30,
    ) as socket:
        hello = orjson.loads(await socket.recv())
        if hello.get("type") != "hello":
            raise RuntimeError(f"the websocket said {hello}")

        async def listen() -> None:
            async for text in socket:
                now = time.monotonic()
                event = orjson.loads(text)
                if event.get("type") == "defect.alert":
                    key = (event["station_id"], event["timestamp"])
                    arrivals.setdefault(key, now)
                    if key not in injected:
                        unexpected.append(event)

        listener = asyncio.ensure_future(listen())
        client = await connect_to(url)
        js = client.jetstream()
        streams = [StationStream(code, batch=sizes.samples_per_message) for code in plant.codes]
        interval_s = sizes.samples_per_message * len(plant.codes) / sizes.rate
        pending: set[asyncio.Task] = set()
        failures: list[str] = []
        acked: list[float] = []  # seconds from each publish to the stream's acknowledgement

        async def send(message, fault_key=None) -> None:
            before = time.monotonic()
            try:
                await js.publish(
                    message.subject, message.payload, headers={"Nats-Msg-Id": message.msg_id}
                )
            except Exception as error:  # noqa: BLE001 - reported after the run
                failures.append(f"{type(error).__name__}: {error}")
                return
            acked.append(time.monotonic() - before)
            if fault_key is not None:
                injected[fault_key] = before

        # Every message is built before the clock starts, its samples stamped with the wall
        # time at which the run will publish it: a plant's edges build their messages, not the
        # server, so the machine's two cores are left to what is measured.
        rounds = int(sizes.seconds / interval_s)
        lead_ms = 2_000
        start_ms = time.time_ns() // 1_000_000 + lead_ms
        per = sizes.samples_per_message
        schedule = []
        fault_round = int(sizes.warmup_seconds / interval_s)
        fault_every = max(1, round(sizes.interval_s / interval_s))
        fault_station = 0
        for round_number in range(rounds):
            last_ms = start_ms + (round_number + 1) * per - 1
            fault = round_number >= fault_round and (round_number - fault_round) % fault_every == 0
            fault = fault and round_number < rounds - 1
            batch = []
            for n, stream in enumerate(streams):
                key = None
                for ts in range(last_ms - per + 1, last_ms + 1):
                    values = signals_at(ts, n)
                    if fault and n == fault_station and ts == last_ms:
                        values["torque"] = round(values["torque"] * FAULT_FACTOR, 3)
                        key = (plant.codes[n], ts)
                    message = stream.add(ts, values)
                    if message is not None:
                        batch.append((message, key))
            if fault:
                fault_station = (fault_station + 1) % len(streams)
            schedule.append((last_ms, batch))
        published = 0
        backlog: list[int] = []
        sampled = asyncio.Event()
        sampler = asyncio.ensure_future(
            _sample_backlog(js, [p.consumer for p in sizes.partitions], backlog, sampled)
        )
        started = time.monotonic()
        for round_number, (last_ms, batch) in enumerate(schedule):
            await asyncio.sleep(max(0.0, (last_ms + 1) / 1000 - time.time()))
            for message, key in batch:
                task = asyncio.ensure_future(send(message, key))
                pending.add(task)
                task.add_done_callback(pending.discard)
                published += message.samples
            if round_number % max(1, int(5 / interval_s)) == 0:
                progress(
                    f"  {time.monotonic() - started:5.1f} s: {published:,} samples, "
                    f"{len(injected)} faults injected, {len(arrivals)} alerts received"
                )
        seconds = time.monotonic() - started
        sampled.set()
        await sampler
        if pending:
            await asyncio.wait(pending)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not injected.keys() <= arrivals.keys():
            await asyncio.sleep(0.05)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await listener
        await client.close()
    if failures:
        raise RuntimeError(f"{len(failures)} publishes failed, e.g. {failures[0]}")
    latencies = sorted((arrivals[k] - sent) * 1000 for k, sent in injected.items() if k in arrivals)
    cut = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else None
    messages_per_s = sizes.rate / sizes.samples_per_message
    # A slow nats-server (a busy disk under sync_interval: always) delays every delivery too.
    acks = statistics.quantiles(acked, n=100, method="inclusive") if len(acked) > 1 else None
    return {
        "background_samples_per_s": published / seconds,
        "samples_published": published,
        "alerts_expected": len(injected),
        "alerts_received": len(latencies),
        "alerts_unexpected": len(unexpected),
        "alert_latency_p50_ms": cut[49] if cut else (latencies[0] if latencies else None),
        "alert_latency_p99_ms": cut[98] if cut else (latencies[0] if latencies else None),
        "alert_latency_max_ms": latencies[-1] if latencies else None,
        "seconds": seconds,
        "publish_ack_p50_ms": acks[49] * 1000 if acks else None,
        "publish_ack_p99_ms": acks[98] * 1000 if acks else None,
        "scorer_backlog_mean_messages": statistics.fmean(backlog) if backlog else None,
        "scorer_backlog_max_messages": max(backlog) if backlog else None,
        # Seconds of traffic the backlog holds: how far behind the scorers ran.
        "scorer_lag_mean_s": statistics.fmean(backlog) / messages_per_s if backlog else None,
        "scorer_lag_max_s": max(backlog) / messages_per_s if backlog else None,
    }


def _train_models(plant: BenchPlant, progress) -> None:
    """A production model per station, trained on a minute of its normal signals, as a plant
    that uses Foresight has (without one a station is judged by its running baseline). The
    spec stays the default windows and statistics over the four signals, as in every run so
    far, so that results stay comparable (`foresight_train` would choose other windows)."""
    spec = FeatureSpec.from_json({**default_spec().to_json(), "signals": list(SIGNALS)})
    now = dt.datetime.now(dt.UTC)
    for n, code in enumerate(plant.codes):
        ts = np.arange(plant.first_ms, plant.first_ms + TRAINING_SAMPLES)
        rows = [signals_at(int(t), n) for t in ts]
        values = {name: np.array([row[name] for row in rows]) for name in SIGNALS}
        features = StationWindows(spec).push(ts, values)[spec.max_window :]
        detector = train(DEFAULT_KIND, features)
        model = registry.register_candidate(
            station=Station.objects.get(code=code),
            kind=detector.kind,
            onnx=detector.onnx,
            feature_spec=spec.to_json(),
            feature_mean=detector.feature_mean,
            feature_std=detector.feature_std,
            threshold=detector.threshold,
            training_start=now - dt.timedelta(minutes=1),
            training_end=now,
            metrics=detector.metrics,
            notes="bench_alerts (removed after the run)",
        )
        registry.promote(version=model, to=ModelStatus.PRODUCTION)
    progress(f"trained and promoted a {DEFAULT_KIND} model for each of {len(plant.codes)} stations")


def run(sizes: AlertBenchSizes, progress) -> dict:
    now_ms = time.time_ns() // 1_000_000
    plant = BenchPlant(stations=sizes.stations, first_ms=now_ms - 60_000, span_ms=60_000)
    table = ScratchTable(plant.tag)
    user = session_key = None
    result: dict = {"machine": ingest_bench.machine()}
    try:
        plant.create()
        table.create()
        cookie, user, session_key = _session_cookie(plant.tag)
        _train_models(plant, progress)
        with ingest_bench.private_nats(sizes.sync_interval) as url:
            asyncio.run(_provision(url))
            port = free_port()
            daphne = [
                sys.executable,
                "-m",
                "daphne",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--verbosity",
                "0",
                "aegis.asgi:application",
            ]
            scorers = [
                manage("foresight", f"--partition={partition}") for partition in sizes.partitions
            ]
            names = ["web", *_scorer_names(sizes), "ingest"]
            processes = BenchProcesses(
                [daphne, *scorers, manage("bench_ingest", "--serve-worker", table.name)],
                nats_url=url,
            )
            try:
                progress(f"starting daphne, {len(scorers)} scorer process(es) and an ingest worker")
                _wait_for_http(f"http://127.0.0.1:{port}/healthz", processes)
                asyncio.run(_wait_for_consumers(url, processes, sizes))
                progress(
                    f"{sizes.rate:,} samples/s for {sizes.seconds:g} s; a fault every "
                    f"{sizes.interval_s:g} s after {sizes.warmup_seconds:g} s"
                )
                before = _cpu_seconds(processes, names)
                result.update(
                    asyncio.run(
                        _run(
                            url,
                            plant=plant,
                            port=port,
                            cookie=cookie,
                            sizes=sizes,
                            progress=progress,
                        )
                    )
                )
                processes.check_alive()
                after = _cpu_seconds(processes, names)
                # Where the two cores went during the run (setup and training excluded).
                used = {name: after[name] - before[name] for name in after}
                each = [used.pop(name) for name in _scorer_names(sizes)]
                result["cpu_seconds"] = {"scorer": sum(each), **used}
                result["scorers"] = sizes.scorers
                result["nats_sync_interval"] = sizes.sync_interval
                result["scorer_cpu_seconds_each"] = each
                # Less sensitive to a busy machine than latencies are.
                result["scorer_cpu_us_per_sample"] = (
                    sum(each) / result["samples_published"] * 1e6
                    if result["samples_published"]
                    else None
                )
                result["scorer_rss_mb"] = sum(
                    psutil.Process(process.pid).memory_info().rss / 2**20
                    for process in processes.processes[1 : 1 + sizes.scorers]
                )
            finally:
                processes.stop()
    finally:
        _clean_up(plant, user, session_key)
        table.drop()
        plant.remove()
    return result


def _scorer_names(sizes: AlertBenchSizes) -> list[str]:
    return [f"scorer {partition}" for partition in sizes.partitions]


def _cpu_seconds(processes: BenchProcesses, names: list[str]) -> dict[str, float]:
    """User + system CPU seconds so far of the run's processes, of this one (the publisher and
    the websocket client) and of the servers it uses (found by their data directories)."""

    def used(process: psutil.Process) -> float:
        with contextlib.suppress(psutil.Error):
            return sum(process.cpu_times()[:2])
        return 0.0

    seconds = {
        name: used(psutil.Process(process.pid))
        for name, process in zip(names, processes.processes, strict=True)
    }
    seconds["publisher and websocket client"] = used(psutil.Process())
    servers = {"postgresql": 0.0, "nats-server": 0.0, "redis": 0.0}
    data_dir = os.environ.get("AEGIS_EMBEDDED_DATA_DIR", "\0")
    # An embedded redis-server is started with its address on the command line.
    redis = urlsplit(settings.REDIS_URL)
    redis_address = f"{redis.hostname}:{redis.port}"
    for process in psutil.process_iter(["name", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        name = process.info["name"] or ""
        if name.startswith("postgres") and data_dir in command:
            servers["postgresql"] += used(process) + sum(used(c) for c in process.children())
        elif name.startswith("nats-server") and "aegis-bench-nats-" in command:
            servers["nats-server"] += used(process)
        elif name.startswith("redis-server") and (
            data_dir in command or redis_address in command.split()
        ):
            servers["redis"] += used(process)
    return {**seconds, **servers}


async def _provision(url: str) -> None:
    client = await connect_to(url)
    await jetstream.provision(client.jetstream(), 1)
    await client.close()


async def _wait_for_consumers(url: str, processes: BenchProcesses, sizes: AlertBenchSizes) -> None:
    """Until every scorer and the ingest worker have a pull request waiting (a partition's
    consumer exists once its scorer has created it)."""
    client = await connect_to(url)
    js = client.jetstream()
    deadline = time.monotonic() + READY_S
    durables = ["ingest", *(p.consumer for p in sizes.partitions)]
    try:
        while time.monotonic() < deadline:
            processes.check_alive()
            waiting = []
            for durable in durables:
                try:
                    waiting.append((await js.consumer_info("TELEMETRY", durable)).num_waiting or 0)
                except nats.js.errors.NotFoundError:
                    waiting.append(0)
            if min(waiting) >= 1:
                return
            await asyncio.sleep(0.1)
    finally:
        await client.close()
    raise RuntimeError("a scorer or the ingest worker did not start pulling")


def _clean_up(plant: BenchPlant, user, session_key: str | None) -> None:
    if plant.station_ids:
        ids = list(plant.station_ids.values())
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM foresight_score WHERE station_id = ANY(%s)", [ids])
        DefectAlert.objects.filter(station_id__in=ids).delete()
        ModelVersion.objects.filter(station_id__in=ids).delete()
        OutboxMessage.objects.filter(
            station_code__in=plant.codes, published_at__isnull=True
        ).delete()
    if session_key:
        SessionStore(session_key=session_key).delete()
    if user is not None:
        user.delete()
    connection.close()
