"""What the browser tests look at: the demo plant as `make run` runs it, and a test bench.

`DemoPlant` is `make run` in miniature: the demo plant (`seed_demo_plant`), a Foresight model per
demo station trained by the product's own `foresight_demo_models` code (30 simulated minutes),
and the real processes of the Procfile — the outbox relay, an ingest worker, the Foresight
scorer and the plant simulator — as separate `manage.py` processes against the test session's
PostgreSQL, NATS and Redis. The pages and their screenshots show what a newcomer sees.

`Bench` adds stations the tests control on a line of their own: each has the four signals of
`telemetry.bench` and a production model trained on their normal values (the training of
`bench_alerts`: `station_spec`, window features, `train`), and a publisher thread sends their
telemetry to NATS at 1 kHz, as a PLC would, with an obvious fault on demand.

Playwright's sync API keeps an asyncio loop running on the test's thread, so `asyncio.run` (NATS)
cannot run there: `off_the_loop` runs such work on a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import nats.js.errors
import numpy as np
import orjson
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.db import connection, connections
from django.utils import timezone

from aegis import jetstream
from foresight import demo, registry
from foresight.bench import FAULT_FACTOR, TRAINING_SAMPLES
from foresight.detectors import DEFAULT_KIND, TrainedDetector, train
from foresight.features import FeatureSpec, StationWindows
from foresight.models import DefectAlert, ModelStatus, ModelVersion
from foresight.scorer import CONSUMER as SCORER_CONSUMER
from foresight.training import station_spec
from mes import services
from mes.demo import demo_vin, seed_demo_plant
from mes.models import (
    Area,
    Line,
    Product,
    Route,
    Site,
    Station,
    StationSignal,
    StationType,
    Unit,
    WorkOrderStatus,
)
from mes.roles import sync_roles
from telemetry.bench import SIGNALS, signals_at
from telemetry.ingest import CONSUMER as INGEST_CONSUMER
from telemetry.models import Sample
from tests.support import REPO, process_environment, stop
from tests.telemetry.conftest import reset_telemetry_streams

READY_S = 180.0  # a loaded 2-core machine starts four Django processes slowly
SIMULATOR_RATE_HZ = demo.DEFAULT_RATE_HZ  # what `make run` simulates
DEMO_MODEL_MINUTES = None  # as `make run`: 30 simulated minutes, so the pages show its models
BENCH_TICK_S = 0.05  # a message per bench station every 50 ms: 50 samples at 1 kHz

T = TypeVar("T")


def off_the_loop(function: Callable[[], T]) -> T:
    """`function()` on a thread of its own (its database connection closed after): asyncio.run
    cannot run on a thread whose event loop is running, as Playwright's is."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = error
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")  # type: ignore[return-value]


def reset_database() -> None:
    """Every table emptied, then what the migrations seed (content types, permissions, the
    reporting schema by post_migrate; the role groups by `sync_roles`): a fresh install."""
    call_command("flush", interactive=False, verbosity=0)
    sync_roles(Group, Permission)


def empty_database() -> None:
    """Every table emptied, as pytest-django's transactional tests leave the database (their
    serialized rollback restores the migrations' data when the next one starts)."""
    call_command("flush", interactive=False, verbosity=0, inhibit_post_migrate=True)


# -- processes ------------------------------------------------------------------------------


@dataclass
class Process:
    """A `manage.py` command running beside the tests, its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, arguments: list[str], *, logs: Path, **environment: str) -> Process:
        log = logs / f"{name}.log"
        # The servers under test keep Django's async-safety checks (see conftest.py).
        variables = process_environment(**environment)
        variables.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        with log.open("wb") as output:
            popen = subprocess.Popen(
                [sys.executable, "manage.py", *arguments],
                cwd=REPO,
                env=variables,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        return cls(name, popen, log)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def tail(self, characters: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-characters:]


async def _consumers_waiting(durables: tuple[str, ...]) -> bool:
    client = await jetstream.connect("browser-tests", allow_reconnect=False)
    try:
        js = client.jetstream()
        for durable in durables:
            try:
                info = await js.consumer_info("TELEMETRY", durable)
            except nats.js.errors.NotFoundError:
                return False
            if not info.num_waiting:
                return False
        return True
    finally:
        await client.close()


class Pipeline:
    """The Procfile's stream processes for the demo plant: relay, ingest, scorer and simulator,
    started on empty TELEMETRY consumers and stopped by SIGTERM as honcho stops them."""

    def __init__(self, *, logs: Path, artifacts: Path) -> None:
        self.logs = logs
        self.environment = {"AEGIS_FORESIGHT_ARTIFACT_DIR": str(artifacts)}
        self.processes: list[Process] = []

    def start(self) -> None:
        off_the_loop(
            lambda: asyncio.run(
                reset_telemetry_streams(consumers=(INGEST_CONSUMER, SCORER_CONSUMER))
            )
        )
        commands = {
            "relay": ["outbox_relay"],
            "ingest": ["ingest"],
            "scorer": ["foresight"],
            # As the Procfile runs it, at `make run`'s default rate.
            "simulator": [
                "simulate",
                f"--rate-hz={SIMULATOR_RATE_HZ:g}",
                "--batch=10",
                "--report-every=60",
            ],
        }
        for name, arguments in commands.items():
            self.processes.append(
                Process.start(name, arguments, logs=self.logs, **self.environment)
            )
        self.wait(
            lambda: off_the_loop(
                lambda: asyncio.run(_consumers_waiting((INGEST_CONSUMER, SCORER_CONSUMER)))
            ),
            "the ingest worker and the scorer pulling from TELEMETRY",
        )

    def wait(self, condition: Callable[[], object], what: str, timeout: float = READY_S):
        """`condition()` once true, checking meanwhile that every process still runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                process.check_alive()
            value = condition()
            if value:
                return value
            time.sleep(0.2)
        logs = "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in self.processes)
        raise AssertionError(f"not within {timeout:g} s: {what}\n{logs}")

    def stop(self) -> None:
        for process in reversed(self.processes):  # the simulator first, the relay last
            stop(process.popen)
        self.processes.clear()
        off_the_loop(
            lambda: asyncio.run(
                reset_telemetry_streams(consumers=(INGEST_CONSUMER, SCORER_CONSUMER))
            )
        )


# -- the demo plant ---------------------------------------------------------------------------


@dataclass
class DemoPlant:
    """The demo plant after `make run` has run it for a while."""

    alert: DefectAlert  # a model alert on a unit with a VIN, with stored telemetry around it
    work_order: str  # a work order in progress, with units

    @classmethod
    def build(cls, pipeline: Pipeline) -> DemoPlant:
        seed_demo_plant()
        off_the_loop(
            lambda: demo.demo_models_ensure(rate_hz=SIMULATOR_RATE_HZ, minutes=DEMO_MODEL_MINUTES)
        )
        _shadow_beside(ModelVersion.objects.get(station__code="1", status=ModelStatus.PRODUCTION))
        pipeline.start()
        alert = pipeline.wait(_traceable_alert, "a model alert on a unit with a VIN, traceable")
        work_order = (
            Unit.objects.filter(
                visits__isnull=False, work_order__status=WorkOrderStatus.IN_PROGRESS
            )
            .values_list("work_order__external_id", flat=True)
            .first()
        )
        assert work_order, "no work order in progress has a unit at a station"
        return cls(alert=alert, work_order=work_order)


def _shadow_beside(production: ModelVersion) -> ModelVersion:
    """What an ML engineer tries before promoting: the same detector with a looser threshold,
    scored in shadow beside production (the models page compares them)."""
    shadow = registry.register_candidate(
        station=production.station,
        kind=production.kind,
        onnx=production.load_artifact(),
        feature_spec=production.feature_spec,
        feature_mean=production.feature_mean,
        feature_std=production.feature_std,
        threshold=production.threshold * 1.5,
        training_start=production.training_start,
        training_end=production.training_end,
        metrics=production.metrics,
        notes="the demo model with a threshold half as high again (browser tests)",
    )
    return registry.promote(version=shadow, to=ModelStatus.SHADOW)


def _traceable_alert() -> DefectAlert | None:
    """The first model alert on a unit with a VIN whose triggering sample the ingest stored
    with the VIN (the trace page shows it)."""
    for alert in DefectAlert.objects.filter(source="model").exclude(vin="").order_by("ts")[:20]:
        if Sample.objects.filter(station_id=alert.station_id, ts=alert.ts, vin=alert.vin).exists():
            return alert
    return None


# -- the test bench ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    """A detector trained once on the bench signals' normal values, registered per station."""

    spec: FeatureSpec
    detector: TrainedDetector

    @classmethod
    def train(cls) -> BenchModel:
        # As bench_alerts trains its stations' models: a minute of normal signals at 1 kHz, on
        # the feature spec `foresight_train` would choose for them.
        spec = station_spec(dict.fromkeys(SIGNALS, TRAINING_SAMPLES), TRAINING_SAMPLES)
        ts = np.arange(TRAINING_SAMPLES, dtype=np.int64)
        rows = [signals_at(int(t), 0) for t in ts]
        values = {name: np.array([row[name] for row in rows]) for name in SIGNALS}
        features = StationWindows(spec).push(ts, values)[spec.max_window :]
        return cls(spec, train(DEFAULT_KIND, features))

    def promote_for(self, station: Station) -> ModelVersion:
        now = timezone.now()
        model = registry.register_candidate(
            station=station,
            kind=self.detector.kind,
            onnx=self.detector.onnx,
            feature_spec=self.spec.to_json(),
            feature_mean=self.detector.feature_mean,
            feature_std=self.detector.feature_std,
            threshold=self.detector.threshold,
            training_start=now - dt.timedelta(minutes=1),
            training_end=now,
            metrics=self.detector.metrics,
            notes="browser test bench",
        )
        registry.promote(version=model, to=ModelStatus.PRODUCTION)
        return model


@dataclass
class Fault:
    """An injected fault: the triggering sample and when its message was published."""

    station: str
    ts_ms: int | None = None
    torque: float | None = None
    published_at: float | None = None  # time.monotonic() just before the publish
    published_wall: float | None = None  # and time.time(), to compare with the page's clock
    done: threading.Event = field(default_factory=threading.Event)


class BenchPublisher:
    """The bench stations' PLCs: every BENCH_TICK_S, one message per station with its samples
    since the previous one (1 kHz, wall-clock timestamps, the signals of `signals_at`),
    published with JetStream acknowledgements from a thread of its own."""

    def __init__(self) -> None:
        self._stations: dict[str, int] = {}  # code → timestamp of its last sample
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BenchPublisher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise self._error

    def _check(self) -> None:
        """A publisher that stopped on an error says so at once, not as a test's timeout."""
        if self._error is not None:
            raise AssertionError(f"the bench publisher stopped: {self._error!r}")

    def add(self, code: str) -> None:
        self._check()
        with self._lock:
            self._stations[code] = time.time_ns() // 1_000_000

    def remove(self, code: str) -> None:
        with self._lock:
            self._stations.pop(code, None)

    def inject_fault(self, code: str) -> Fault:
        """The next message of `code` ends with a sample whose torque is FAULT_FACTOR times its
        normal value; the returned Fault is filled in when that message is published."""
        self._check()
        fault = Fault(code)
        with self._lock:
            self._faults[code] = fault
        return fault

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as error:  # noqa: BLE001 - re-raised by __exit__
            self._error = error

    async def _publish(self) -> None:
        client = await jetstream.connect("browser-bench", allow_reconnect=True)
        js = client.jetstream(timeout=10)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                now_ms = time.time_ns() // 1_000_000
                with self._lock:
                    due = [(code, last) for code, last in self._stations.items() if last < now_ms]
                    for code, _ in due:
                        self._stations[code] = now_ms
                    faults = {
                        code: self._faults.pop(code) for code, _ in due if code in self._faults
                    }
                for code, last in due:
                    samples = []
                    for ts in range(last + 1, now_ms + 1):
                        samples.append({"ts": ts, "seq": 0, "signals": signals_at(ts, 0)})
                    fault = faults.get(code)
                    if fault is not None:
                        triggering = samples[-1]["signals"]
                        triggering["torque"] = round(triggering["torque"] * FAULT_FACTOR, 3)
                        fault.ts_ms, fault.torque = samples[-1]["ts"], triggering["torque"]
                    body = orjson.dumps({"station_id": code, "samples": samples})
                    if fault is not None:
                        fault.published_at, fault.published_wall = time.monotonic(), time.time()
                    await js.publish(
                        f"aegis.telemetry.raw.{code}",
                        body,
                        headers={"Nats-Msg-Id": f"bench-{code}-{now_ms}"},
                    )
                    if fault is not None:
                        fault.done.set()
                await asyncio.sleep(max(0.0, BENCH_TICK_S - (time.monotonic() - started)))
        finally:
            with contextlib.suppress(Exception):
                await client.close()


@dataclass
class BenchStation:
    station: Station
    model: ModelVersion
    units: list[Unit]

    @property
    def code(self) -> str:
        return self.station.code


class Bench:
    """Stations on a line of their own ("Test bench", site BENCH) whose telemetry the tests
    publish; each has units with VINs in a work order in progress and a production model."""

    def __init__(self, publisher: BenchPublisher, model: BenchModel) -> None:
        self.publisher = publisher
        self.model = model
        site, _ = Site.objects.get_or_create(
            code="BENCH", defaults={"name": "Browser test bench", "timezone": "Europe/Berlin"}
        )
        area, _ = Area.objects.get_or_create(site=site, code="TB", defaults={"name": "Bench"})
        self.line, _ = Line.objects.get_or_create(
            area=area, code="TB", defaults={"name": "Test bench"}
        )
        self.product, _ = Product.objects.get_or_create(
            code="BENCH-CAR", defaults={"name": "Bench car"}
        )
        Route.objects.get_or_create(
            product=self.product, line=self.line, defaults={"ideal_cycle_time_s": 60}
        )
        self.stations: list[BenchStation] = []

    def work_order_with_units(self, units: int) -> list[Unit]:
        """`units` new units with VINs, of a new work order in progress on the bench line."""
        tag = secrets.token_hex(3)
        work_order = services.work_order_create(
            external_id=f"WO-TB-{tag}", product=self.product, line=self.line, quantity=units
        )
        services.work_order_release(work_order=work_order)
        services.work_order_start(work_order=work_order)
        first = int(tag, 16) % 10_000 * 100
        return [
            services.unit_create(
                work_order=work_order, serial=f"TB-{tag}-{n}", vin=demo_vin("1TB", first + n)
            )
            for n in range(units)
        ]

    def station(self, *, units: int = 1) -> BenchStation:
        """A new bench station, publishing, scored by its own model, with `units` units of a
        new work order; the first is at the station."""
        number = len(self.stations) + 1
        tag = secrets.token_hex(2)
        station = Station.objects.create(
            line=self.line,
            code=f"tb-{tag}-{number}",
            name=f"Bench nut runner {number}",
            position=number,
            station_type=StationType.TIGHTENING,
        )
        StationSignal.objects.bulk_create(
            [
                StationSignal(
                    station=station, name="torque", unit="N·m", nominal_min=40, nominal_max=52
                ),
                *(StationSignal(station=station, name=name) for name in SIGNALS[1:]),
            ]
        )
        made = self.work_order_with_units(units)
        services.unit_arrive(unit=made[0], station=station, at=timezone.now())
        model = self.model.promote_for(station)
        bench_station = BenchStation(station, model, made)
        self.stations.append(bench_station)
        self.publisher.add(station.code)
        return bench_station

    def scored_by_its_model(self, bench_station: BenchStation) -> bool:
        """Whether the scorer has loaded the station's model and scores its telemetry."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM foresight_score WHERE station_id = %s "
                "AND model_version_id = %s AND NOT shadow)",
                [bench_station.station.pk, bench_station.model.pk],
            )
            return cursor.fetchone()[0]
