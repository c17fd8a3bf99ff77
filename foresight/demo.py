"""Demo models: every station of the demo plant gets a Foresight model trained on simulated
normal running, so `make run` raises real model alerts on the simulator's injected faults.

A plant trains its models on its own history; a fresh demo plant has none, and the running
baseline that scores a station without a model raises no alerts (AEGIS_FORESIGHT_BASELINE_ALERTS
is off: on cyclic signals it is noise). `demo_models_ensure` fills the gap the way an ML engineer
would, with the product's own code:

1. **History.** The simulator's deterministic generator (`telemetry.simulator.Simulation`, its
   own seed, no faults at all: no bad firmware, no worn tool or seal, no cosmetic defects) runs
   the lines of the stations that need a model for HISTORY_MINUTES of simulated time, offline,
   as fast as it can. Its samples are stored as those stations' telemetry just before now (or
   before the oldest telemetry they already have) through the ingest's storage path
   (`telemetry.storage`: binary COPY, idempotent on a retry). Nothing is recorded in the MES:
   no units, visits or work orders appear, so the samples carry no unit.
2. **Training.** `foresight.training.train_station_model` on that range: the default kind
   (`pca_t2q`) and the training's default spec over the signals the station publishes, with
   the windows of 2 s and 10 s at the live simulator's sampling rate (AEGIS_SIMULATOR_RATE_HZ,
   50 Hz by default: 100 and 500 samples; `training.default_windows`). Window features are
   counted in samples, so a model only fits telemetry sampled at the rate it was trained on.
3. **Promotion.** Each model is registered (ONNX parity checked on the stored artifact) and
   promoted to production by the registry's services, audited with source `system`.

Idempotent: a station that has a production model is left alone — unless it is a demo model
trained for another sampling rate (AEGIS_SIMULATOR_RATE_HZ changed), which is replaced. A
station's own models (trained, promoted or archived by people) are never touched, and only
stations of the demo site are ever considered: simulated telemetry never enters a real plant.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.db.models import Min

from foresight import registry, training
from foresight.detectors import DEFAULT_KIND, MIN_TRAINING_ROWS
from foresight.models import ModelStatus, ModelVersion
from mes.audit import audit_context
from mes.errors import InvalidInput
from mes.models import Station
from telemetry.models import Sample
from telemetry.simulator import FaultSettings, Simulation, SimulationConfig, plant_layout_load
from telemetry.simulator.publisher import SEQ_MASK
from telemetry.simulator.runner import MAX_RATE_HZ
from telemetry.storage import CopyRows, SampleStore, database_parameters

DEMO_SITE = "DEMO"  # the site `manage.py seed_demo` creates
DEMO_NOTE = "demo model"  # how a demo model's notes begin
RATE_VARIABLE = "AEGIS_SIMULATOR_RATE_HZ"
DEFAULT_RATE_HZ = 50.0  # the Procfile's simulator rate when the variable is unset
HISTORY_SEED = "foresight-demo"  # not the live simulator's seed: other units than it will run
HISTORY_MINUTES = 30.0
MAX_HISTORY_SAMPLES = 90_000  # per station: 30 min at 50 Hz; shorter at higher rates
CHUNK_MS = 60_000  # simulated time generated and stored at once
PROGRESS_EVERY_MIN = 5

Say = Callable[[str], None]


@dataclass
class DemoModelsReport:
    rate_hz: float
    trained: dict[str, str] = field(default_factory=dict)  # station code → promoted version
    ready: list[str] = field(default_factory=list)  # codes that had a fitting production model
    history_start: dt.datetime | None = None
    history_end: dt.datetime | None = None
    samples_stored: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per phase


def live_rate_hz() -> float:
    """The sampling rate of the live simulator `make run` starts (AEGIS_SIMULATOR_RATE_HZ)."""
    raw = os.environ.get(RATE_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_RATE_HZ
    try:
        rate = float(raw)
    except ValueError:
        raise InvalidInput(f"{RATE_VARIABLE}: expected samples per second, got {raw!r}") from None
    check_rate(rate)
    return rate


def check_rate(rate_hz: float) -> None:
    if not 0 < rate_hz <= MAX_RATE_HZ:
        raise InvalidInput(
            f"the sampling rate must be above 0 and at most {MAX_RATE_HZ:g} Hz, not {rate_hz:g}",
            fields={"rate_hz": ["out of range"]},
        )


def history_minutes(rate_hz: float) -> float:
    return min(HISTORY_MINUTES, MAX_HISTORY_SAMPLES / rate_hz / 60.0)


def demo_stations() -> list[Station]:
    return list(
        Station.objects.filter(line__area__site__code=DEMO_SITE)
        .select_related("line")
        .order_by("line__code", "position")
    )


def _fits(model: ModelVersion, rate_hz: float) -> bool:
    """A production model stays: the station's own always, a demo model if made for the rate
    (within 1 %, the precision of the rate read back from its training samples)."""
    if not model.notes.startswith(DEMO_NOTE):
        return True
    trained_at = ((model.metrics or {}).get("dataset") or {}).get("sampling_rate_hz")
    return bool(trained_at) and abs(trained_at - rate_hz) <= 0.01 * rate_hz


def stations_needing_models(rate_hz: float) -> tuple[list[Station], list[Station]]:
    """(stations to train, stations whose production model stays) among the demo stations."""
    production = {
        model.station_id: model
        for model in ModelVersion.objects.filter(
            station__line__area__site__code=DEMO_SITE, status=ModelStatus.PRODUCTION
        )
    }
    needing, ready = [], []
    for station in demo_stations():
        model = production.get(station.pk)
        (ready if model is not None and _fits(model, rate_hz) else needing).append(station)
    return needing, ready


def _history_end(stations: list[Station], now: dt.datetime) -> dt.datetime:
    """Now, or the oldest telemetry of the stations if they have some: the simulated history
    never interleaves with samples already stored (a live run's, an earlier history's)."""
    oldest = Sample.objects.filter(station_id__in=[s.pk for s in stations]).aggregate(Min("ts"))
    end = min(now, oldest["ts__min"] or now)
    return end.replace(microsecond=0) - dt.timedelta(seconds=1)


def _history_batches(
    simulation: Simulation, end_ms: int, station_ids: dict[str, int], say: Say, minutes: float
) -> Iterator[CopyRows]:
    """The simulation's samples as COPY rows, a simulated minute of every station at a time.

    The generators are sampled directly, as `Simulation.advance` does, without cutting the
    samples into NATS messages and decoding them again (a third of the work)."""
    plant = simulation.plant
    sampled = [(station_ids[code], simulation.generators[code]) for code in station_ids]
    index = 0
    ts = simulation.ts_of(index)
    while ts < end_ms:
        rows = CopyRows()
        chunk_end = min(end_ms, ts + CHUNK_MS)
        while ts < chunk_end:
            plant.run_until(ts)
            for station_id, generator in sampled:
                # seq numbers each station's samples, as the simulator's publisher does.
                rows.add(station_id, ts, index & SEQ_MASK, None, generator.sample(ts))
            index += 1
            ts = simulation.ts_of(index)
        plant.take_actions()  # units, visits, flashes: not recorded in the MES
        done = (chunk_end - simulation.config.start_ms) / 60_000
        if chunk_end >= end_ms or round(done) % PROGRESS_EVERY_MIN == 0:
            say(f"  simulated {done:.0f} of {minutes:g} min ({index * len(sampled):,} samples)")
        yield rows


async def _store(batches: Iterator[CopyRows]) -> int:
    """Every batch through the ingest's writer; the next batch is simulated (in a thread) while
    PostgreSQL stores the previous one."""
    loop = asyncio.get_running_loop()
    store = SampleStore(database_parameters())
    stored = 0
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-history") as executor:
            following = loop.run_in_executor(executor, next, batches, None)
            while (rows := await following) is not None:
                following = loop.run_in_executor(executor, next, batches, None)
                stored += (await store.write(rows)).stored
    finally:
        await store.close()
    return stored


def demo_models_ensure(
    *,
    rate_hz: float | None = None,
    minutes: float | None = None,
    now: dt.datetime | None = None,
    say: Say | None = None,
) -> DemoModelsReport:
    """Give every demo station without a fitting production model a trained, promoted model
    (see the module docstring); returns what was done. Nothing happens when all have one."""
    say = say or (lambda message: None)
    rate_hz = live_rate_hz() if rate_hz is None else float(rate_hz)
    check_rate(rate_hz)
    minutes = history_minutes(rate_hz) if minutes is None else float(minutes)
    report = DemoModelsReport(rate_hz=rate_hz)
    needing, ready = stations_needing_models(rate_hz)
    report.ready = [station.code for station in ready]
    if not needing:
        return report
    windows = training.default_windows(rate_hz)
    codes = [station.code for station in needing]
    if minutes * 60 * rate_hz < windows[-1] - 1 + MIN_TRAINING_ROWS:
        raise InvalidInput(
            f"{minutes:g} min at {rate_hz:g} Hz is too short a history to train on",
            fields={"minutes": ["too short"]},
        )

    started = time.monotonic()
    end = _history_end(needing, now or dt.datetime.now(dt.UTC))
    start = end - dt.timedelta(minutes=minutes)
    report.history_start, report.history_end = start, end
    say(
        f"simulating {minutes:g} min of normal running (no faults) at {rate_hz:g} Hz for "
        f"stations {', '.join(codes)}, stored as their telemetry of "
        f"{training.describe_range(start, end)}"
    )
    start_ms = int(start.timestamp() * 1000)
    end_ms = int(end.timestamp() * 1000)
    layout = plant_layout_load()
    published = {spec.code: [signal.name for signal in spec.signals] for spec in layout.stations}
    simulation = Simulation(
        layout,
        SimulationConfig(
            seed=HISTORY_SEED,
            start_ms=start_ms,
            stations=tuple(codes),
            rate_hz=rate_hz,
            duration_s=minutes * 60,
            speed=0,
            mes=False,
            faults=FaultSettings(enabled=False),
        ),
    )
    station_ids = {station.code: station.pk for station in needing}
    batches = _history_batches(simulation, end_ms, station_ids, say, minutes)
    report.samples_stored = asyncio.run(_store(batches))
    report.seconds["history"] = round(time.monotonic() - started, 1)
    say(f"  {report.samples_stored:,} samples stored in {report.seconds['history']:.1f} s")

    started = time.monotonic()
    last_sample = end - dt.timedelta(milliseconds=1)
    notes = (
        f"{DEMO_NOTE}: trained on {minutes:g} simulated minutes of normal running at"
        f" {rate_hz:g} Hz (manage.py foresight_demo_models)"
    )
    with audit_context(user=None, source="system"):
        for number, station in enumerate(needing, 1):
            # Every simulated sample holds every signal the station publishes.
            signals = dict.fromkeys(published[station.code], 1)
            spec = training.station_spec(signals, 1, windows=windows)
            model = training.train_station_model(
                station=station,
                start=start,
                end=last_sample,
                kind=DEFAULT_KIND,
                spec=spec,
                notes=notes,
            )
            registry.promote(version=model, to=ModelStatus.PRODUCTION)
            report.trained[station.code] = model.version
            say(
                f"  station {station.code} ({number} of {len(needing)}): {model.version} in"
                f" production, threshold {model.threshold:.3g}, {len(model.feature_names)}"
                f" features over {', '.join(spec.signals)}"
            )
    report.seconds["training"] = round(time.monotonic() - started, 1)
    return report
