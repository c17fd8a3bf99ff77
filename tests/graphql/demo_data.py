"""Demo data for the torque question: the demo plant (seed_demo) and the simulator's offline
generator run through the MES, with the telemetry of the published stations stored with the MES
state of each sample's instant — the way tests/foresight/test_backtest.py builds its data."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import orjson
from django.db import connection

from mes.demo import seed_demo_plant
from mes.models import Station
from telemetry.importing import station_history
from telemetry.simulator import FaultSettings, Simulation, SimulationConfig, plant_layout_load
from telemetry.simulator.plant import MesSink
from telemetry.storage import COLUMNS, TABLE, CopyRows

START = dt.datetime(2026, 3, 3, 6, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class DemoRun:
    start: dt.datetime
    end: dt.datetime
    samples: int
    truth: list[dict]


def generate(
    *, hours: float, rate_hz: float, stations: tuple[str, ...] = ("1", "5"), seed: int = 7
) -> DemoRun:
    """Line 1 of the demo plant for `hours` from START, its `stations` publishing at `rate_hz`
    with the simulator's default faults (15 % of the units get the EPS release candidate)."""
    seed_demo_plant(today=START.date())
    layout = plant_layout_load()
    start_ms = int(START.timestamp() * 1000)
    end_ms = start_ms + int(hours * 3_600_000)
    simulation = Simulation(
        layout,
        SimulationConfig(
            seed=seed,
            start_ms=start_ms,
            stations=stations,
            rate_hz=rate_hz,
            batch=100,
            faults=FaultSettings(),
        ),
    )
    sink = MesSink(layout)
    samples: dict[str, list[tuple[int, int, dict]]] = {code: [] for code in stations}
    truth: list[dict] = []

    def keep(messages) -> None:
        for message in messages:
            document = orjson.loads(message.payload)
            code = message.subject.rsplit(".", 1)[-1]
            samples[code].extend((s["ts"], s["seq"], s["signals"]) for s in document["samples"])

    while simulation.now_ms < end_ms:
        keep(simulation.advance(min(end_ms, simulation.now_ms + 60_000)))
        truth.extend(sink.apply(simulation.plant.take_actions()))
    keep(simulation.finish())
    truth.extend(sink.apply(simulation.plant.take_actions()))
    assert sink.report.errors == 0, list(sink.report.last_errors)

    known = {s.code: s for s in Station.objects.filter(code__in=stations)}
    every = [(s.pk, s.code, s.line_id) for s in known.values()]
    rows = CopyRows()
    for code, taken in samples.items():
        station = known[code]
        history = station_history(
            station_id=station.pk, line_id=station.line_id, stations=every, since=START
        )
        for ts, seq, signals in taken:
            rows.add(station.pk, ts, seq, history.lookup(station.pk, ts), signals)
    statement = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(rows.payload())
    return DemoRun(
        start=START,
        end=START + dt.timedelta(hours=hours),
        samples=sum(len(taken) for taken in samples.values()),
        truth=truth,
    )
