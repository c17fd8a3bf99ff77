"""The plant simulator: signals in their nominal ranges, faults that the data reveals and that
end in labelled defects, the same bytes from the same seed, and a real run that publishes to the
TELEMETRY stream and records visits, flashes and defects through the MES services."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import re
import signal
import statistics
import subprocess
import sys
import time

import nats
import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from aegis import jetstream
from mes.demo import LINES, seed_demo_plant
from mes.models import (
    AuditEntry,
    FirmwareFlash,
    OutboxMessage,
    ProductionCount,
    QualityEvent,
    StationType,
    StationVisit,
    Unit,
    WorkOrder,
)
from telemetry import payloads
from telemetry.management.commands.simulate import Command as SimulateCommand
from telemetry.management.commands.simulate import parse_start
from telemetry.simulator import FaultSettings, Simulation, SimulationConfig, plant_layout_load
from telemetry.simulator.faults import UnitFaults
from telemetry.simulator.plant import (
    Arrive,
    DowntimeStart,
    Flash,
    Leave,
    LineLayout,
    MesSink,
    Operation,
    PlantLayout,
    Quality,
    SimUnit,
    Truth,
    UnitDone,
)
from telemetry.simulator.signals import (
    AUXILIARY_SIGNALS,
    StationSpec,
    VisitFaults,
    signal_spec,
    station_generator,
)
from tests.support import REPO, process_environment, stop

T0 = dt.datetime(2026, 3, 3, 6, 0, tzinfo=dt.UTC)
T0_MS = int(T0.timestamp() * 1000)
NO_FAULTS = FaultSettings(enabled=False)


def demo_layout() -> PlantLayout:
    """The demo plant of mes/demo.py, without a database."""
    ids = itertools.count(1)
    stations, lines = [], []
    for line_code, spec in LINES.items():
        operations = []
        for code, _name, kind, cycle, signals in spec["stations"]:
            station = StationSpec(
                id=next(ids),
                code=code,
                station_type=kind,
                signals=tuple(signal_spec(*signal) for signal in signals),
            )
            stations.append(station)
            operations.append(Operation(station, cycle * 1000))
        product, _name, line_cycle = spec["product"]
        lines.append(
            LineLayout(
                code=line_code,
                product=product,
                operations=tuple(operations),
                cycle_ms=int(line_cycle * 1000),
                vehicle=spec["wmi"] is not None,
                wmi=spec["wmi"],
            )
        )
    return PlantLayout(stations=tuple(stations), lines=tuple(lines))


def config(**overrides) -> SimulationConfig:
    defaults = {"seed": 42, "start_ms": T0_MS, "rate_hz": 20.0, "batch": 20, "faults": NO_FAULTS}
    return SimulationConfig(**{**defaults, **overrides})


@dataclasses.dataclass
class Run:
    messages: list
    actions: list
    simulation: Simulation


def run(layout: PlantLayout, simulated_s: float, **overrides) -> Run:
    simulation = Simulation(layout, config(**overrides))
    messages, actions = [], []
    end = simulation.config.start_ms + int(simulated_s * 1000)
    while simulation.now_ms < end:
        messages += simulation.advance(min(end, simulation.now_ms + 1000))
        actions += simulation.plant.take_actions()
    messages += simulation.finish()
    actions += simulation.plant.take_actions()
    return Run(messages, actions, simulation)


def samples_of(messages, station: str) -> list[tuple[int, dict]]:
    """(ts, signals) of one station, from either payload form."""
    found = []
    for message in messages:
        if message.subject != f"aegis.telemetry.raw.{station}":
            continue
        document = orjson.loads(message.payload)
        if "samples" in document:
            found += [(s["ts"], s["signals"]) for s in document["samples"]]
        else:
            ts = document.pop("timestamp")
            del document["station_id"], document["seq"]
            found.append((ts, document))
    return found


def visits_at(actions, station: str) -> list[tuple[object, int, int]]:
    """(unit, arrived, left) of every completed visit at the station."""
    return [
        (a.unit, a.arrived, a.at) for a in actions if isinstance(a, Leave) and a.station == station
    ]


# -- signals ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_free_run() -> Run:
    return run(demo_layout(), 15 * 60)


@pytest.mark.parametrize(
    "station", [code for spec in LINES.values() for code, *_ in spec["stations"]]
)
def test_signals_stay_in_their_nominal_ranges_without_faults(fault_free_run, station):
    spec = next(s for s in demo_layout().stations if s.code == station)
    ranges = {s.name: (s.low, s.high) for s in spec.signals}
    for extra in AUXILIARY_SIGNALS[spec.station_type]:
        ranges.setdefault(extra.name, (extra.low, extra.high))
    samples = samples_of(fault_free_run.messages, station)

    assert len(samples) == 15 * 60 * 20
    for ts, signals in samples:
        assert signals.keys() == ranges.keys(), ts
        for name, value in signals.items():
            low, high = ranges[name]
            assert low <= value <= high, f"{station}.{name} = {value} at {ts}"
    # The signals move: units are worked on, not a flat line at mid-range.
    for name in ranges:
        values = [signals[name] for _, signals in samples]
        assert statistics.pstdev(values) > 0, name


def test_a_tightening_visit_ramps_torque_to_the_target_and_grows_the_angle():
    torque = signal_spec("torque", "N·m", 110.0, 130.0)
    angle = signal_spec("angle", "deg", 20.0, 45.0)
    station = StationSpec(1, "5", StationType.TIGHTENING, (torque, angle))
    generator = station_generator(station, seed=1, rate_hz=1000)
    visit = generator.arrive(
        arrive_ms=0, work_from_ms=1000, work_to_ms=53_000, faults=VisitFaults()
    )
    start, end, final, _angle = visit.params["joints"][0]
    rundown = [generator.sample(ts) for ts in range(int(start), int(end))]

    torques = [s["torque"] for s in rundown]
    angles = [s["angle"] for s in rundown]
    assert torques[0] < 112.0
    assert abs(torques[-1] - final) < 1.0
    assert statistics.mean(torques[-100:]) > statistics.mean(torques[:100]) + 5
    assert angles[-1] > angles[0] + 5
    assert rundown[-1]["motor_current"] > rundown[0]["motor_current"] + 5


# -- faults -------------------------------------------------------------------------------------


def _late_torque_peaks(result: Run) -> list[float]:
    """Per visit at the wheel nut runner: the highest torque of its last third."""
    samples = samples_of(result.messages, "5")
    peaks = []
    for _unit, arrived, left in visits_at(result.actions, "5"):
        late = arrived + (left - arrived) * 2 // 3
        values = [s["torque"] for ts, s in samples if late <= ts < left]
        if values:
            peaks.append(max(values))
    return peaks


def test_bad_firmware_drifts_the_wheel_nut_torque_before_inspection_finds_steering():
    layout = demo_layout()
    faults = FaultSettings(bad_firmware_share=1.0, steering_defect_share=1.0)
    bad = run(layout, 20 * 60, stations=("5",), faults=faults)
    good = run(
        layout, 20 * 60, stations=("5",), faults=dataclasses.replace(faults, bad_firmware_share=0.0)
    )

    bad_peaks, good_peaks = _late_torque_peaks(bad), _late_torque_peaks(good)
    assert len(bad_peaks) >= 15
    assert len(good_peaks) >= 15
    # +6 to +10 % by the end of the visit, against the nominal target of 120 N·m.
    assert statistics.median(bad_peaks) > 1.05 * statistics.median(good_peaks)
    assert statistics.median(good_peaks) < 123.0

    flashed = {a.unit.key for a in bad.actions if isinstance(a, Flash) and a.version == "v2.1.5-rc"}
    steering = [a for a in bad.actions if isinstance(a, Quality) and a.defect == "steering"]
    assert steering
    assert all(
        (q.station, q.source, q.unit.key in flashed) == ("6", "inspection", True) for q in steering
    )
    for quality in steering:  # found at end-of-line after the torque drifted at station 5
        left_5 = next(left for unit, _, left in visits_at(bad.actions, "5") if unit is quality.unit)
        assert quality.at > left_5
    assert not [a for a in good.actions if isinstance(a, Quality) and a.defect == "steering"]
    truth = [a.record for a in bad.actions if isinstance(a, Truth) and a.unit is not None]
    labelled = {
        a.unit.key
        for a in bad.actions
        if isinstance(a, Truth) and a.record["fault"] == "bad_firmware"
    }
    assert {q.unit.key for q in steering} <= labelled
    assert all(
        r["defect"]["code"] == "steering"
        for r in truth
        if r["fault"] == "bad_firmware" and r["complete"]
    )


def test_tool_and_seal_wear_end_in_labelled_defects_and_a_planned_maintenance():
    faults = FaultSettings(tool_life_h=0.5, seal_life_h=0.5, bad_firmware_share=0.0)
    result = run(demo_layout(), 60 * 60, stations=("7", "10"), rate_hz=5.0, faults=faults)

    defects = [a for a in result.actions if isinstance(a, Quality)]
    torque_low = [d for d in defects if d.defect == "torque_low"]
    leaks = [d for d in defects if d.defect == "leak"]
    assert torque_low
    assert all(d.station == "12" for d in torque_low)
    assert leaks
    assert all((d.station, d.source) == ("10", "test_rig") for d in leaks)
    assert {a.station for a in result.actions if isinstance(a, DowntimeStart)} >= {"7", "10"}
    records = [a.record for a in result.actions if isinstance(a, Truth) and a.unit is not None]
    assert {r["defect"]["code"] for r in records if r["defect"]} >= {"torque_low", "leak"}
    assert all(r["wear"] >= 0.6 or r["defect"] for r in records if r["fault"] == "tool_wear")


# -- determinism --------------------------------------------------------------------------------


def test_the_same_seed_and_arguments_give_the_same_bytes():
    layout = demo_layout()
    arguments = {"rate_hz": 100.0, "batch": 50, "faults": FaultSettings()}
    first = run(layout, 180, **arguments).messages
    second = run(layout, 180, **arguments).messages
    other_seed = run(layout, 180, seed=43, **arguments).messages

    assert len(first) == 12 * 180 * 100 // 50
    assert first == second
    assert [m.payload for m in first] != [m.payload for m in other_seed]


def test_a_station_publishes_the_same_samples_whichever_other_stations_publish():
    layout = demo_layout()
    alone = run(layout, 120, stations=("5",), rate_hz=50.0, batch=1)
    everything = run(layout, 120, rate_hz=50.0, batch=1)
    single = [m for m in everything.messages if m.subject == "aegis.telemetry.raw.5"]

    assert alone.messages == single
    first = orjson.loads(single[0].payload)
    assert list(first)[:3] == ["station_id", "timestamp", "seq"]
    assert (first["station_id"], first["timestamp"], first["seq"]) == ("5", T0_MS, 0)
    assert single[1].msg_id == f"5-{T0_MS + 20}-1"


@pytest.mark.parametrize("batch", [1, 100])
def test_the_ingest_accepts_every_message_as_the_samples_generated(batch):
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - 3_600_000
    result = run(demo_layout(), 30, start_ms=start_ms, batch=batch, faults=FaultSettings())
    window = payloads.time_window(now_ms=now_ms, retention_hours=24)

    stored = 0
    for message in result.messages:
        parsed = payloads.parse_message(message.payload, subject=message.subject, window=window)
        assert isinstance(parsed, payloads.Message), parsed
        assert parsed.station == message.subject.rsplit(".", 1)[1]
        assert message.msg_id == f"{parsed.station}-{parsed.samples[0].ts}-{parsed.samples[0].seq}"
        stored += len(parsed.samples)
    assert stored == 12 * 30 * 20


# -- the command against the session's NATS and database ----------------------------------------


async def _telemetry_after(sequence: int) -> list:
    client = await jetstream.connect("test", allow_reconnect=False)
    js = client.jetstream()
    found = []
    try:
        while True:
            try:
                message = await js.get_msg(
                    "TELEMETRY", seq=sequence + 1, subject="aegis.telemetry.raw.>", next=True
                )
            except nats.js.errors.NotFoundError:
                return found
            found.append(message)
            sequence = message.seq
    finally:
        await client.close()


async def _provision_and_last_sequence() -> int:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        js = client.jetstream()
        await jetstream.provision(js, replicas=1)
        return (await js.stream_info("TELEMETRY")).state.last_seq
    finally:
        await client.close()


async def _purge(stations: tuple[str, ...]) -> None:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        for station in stations:
            await client.jetstream().purge_stream(
                "TELEMETRY", subject=f"aegis.telemetry.raw.{station}"
            )
    finally:
        await client.close()


@pytest.fixture
def telemetry_stream():
    """TELEMETRY provisioned; yields its last sequence, and afterwards drops what the demo
    stations published so later tests' consumers do not receive it."""
    yield asyncio.run(_provision_and_last_sequence())
    asyncio.run(_purge(tuple(str(code) for code in range(1, 13))))


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_run_publishes_to_telemetry_and_records_the_plant_through_the_mes(
    tmp_path, capsys, telemetry_stream
):
    seed_demo_plant()
    before = telemetry_stream
    start = dt.datetime.fromtimestamp(int(time.time()) - 3600, tz=dt.UTC)
    arguments = {
        "stations": ("1", "2", "5", "6"),
        "rate_hz": 50.0,
        "batch": 25,
        "duration_s": 240.0,
        "start_ms": int(start.timestamp() * 1000),
        "faults": FaultSettings(bad_firmware_share=1.0, steering_defect_share=1.0),
    }
    expected = run(plant_layout_load(), 240, **arguments).messages
    truth_file = tmp_path / "truth.jsonl"

    call_command(
        "simulate",
        "--seed=42",
        "--stations=1,2,5,6",
        "--rate-hz=50",
        "--batch=25",
        "--duration=240",
        "--speed=0",
        f"--start={start.isoformat()}",
        "--bad-firmware-share=1",
        f"--truth-file={truth_file}",
    )

    published = asyncio.run(_telemetry_after(before))
    assert len(published) == len(expected) == 4 * 240 * 50 // 25
    assert [(m.subject, m.data, m.headers["Nats-Msg-Id"]) for m in published] == [
        (m.subject, m.payload, m.msg_id) for m in expected
    ]
    output = capsys.readouterr().out
    assert "1,920 messages (1,920 acked, 0 duplicates, 0 refused, 0 unacked)" in output

    visits = StationVisit.objects.filter(station__code__in=["1", "2", "3", "4", "5", "6"])
    assert visits.count() >= 12
    assert not StationVisit.objects.filter(station__line__code="L2").exists()
    assert AuditEntry.objects.filter(model="mes.stationvisit", source="simulator").exists()
    bad = FirmwareFlash.objects.filter(component="EPS", version="v2.1.5-rc", station__code="2")
    assert bad.exists()
    steering = QualityEvent.objects.filter(defect__code="steering", source="inspection")
    assert steering.exists()
    assert {event.station.code for event in steering} == {"6"}
    assert {event.unit_id for event in steering} <= set(bad.values_list("unit_id", flat=True))
    assert WorkOrder.objects.filter(line__code="L1", status="in_progress").exists()
    assert ProductionCount.objects.filter(station__code="5", good=1).exists()
    # A unit completes when it leaves end-of-line, and only then.
    completed = Unit.objects.filter(status="completed")
    assert completed.exists()
    for unit in completed:
        last = unit.visits.order_by("-arrived_at").first()
        assert (last.station.code, last.left_at is not None) == ("6", True), unit
    assert not Unit.objects.filter(status="completed", visits__left_at__isnull=True).exists()
    assert {m.station_code for m in OutboxMessage.objects.filter(kind="unit.completed")} == {"6"}

    records = [json.loads(line) for line in truth_file.read_text().splitlines()]
    steering_truth = [r for r in records if r.get("defect") and r["defect"]["code"] == "steering"]
    assert {r["unit"] for r in steering_truth} == {event.unit.serial for event in steering}
    assert all(r["version"] == "v2.1.5-rc" and r["vin"] for r in steering_truth)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_single_sample_form_without_the_mes_publishes_one_message_per_sample(
    capsys, telemetry_stream
):
    seed_demo_plant()
    before = telemetry_stream
    start = dt.datetime.fromtimestamp(int(time.time()) - 1800, tz=dt.UTC)

    arguments = [
        "simulate",
        "--stations=7",
        "--rate-hz=1000",
        "--batch=1",
        "--duration=3",
        "--speed=0",
        "--no-mes",
        f"--start={start.isoformat()}",
    ]
    call_command(*arguments)

    published = asyncio.run(_telemetry_after(before))
    assert len(published) == 3000
    first = orjson.loads(published[0].data)
    assert first["station_id"] == "7"
    assert first["timestamp"] == int(start.timestamp() * 1000)
    assert {"torque", "angle", "motor_current", "spindle_temp"} <= first.keys()
    assert not StationVisit.objects.exists()
    assert "3,000 messages (3,000 acked, 0 duplicates" in capsys.readouterr().out

    call_command(*arguments)  # the same seed and start again: the stream drops every copy

    assert "3,000 messages (3,000 acked, 3,000 duplicates" in capsys.readouterr().out
    assert len(asyncio.run(_telemetry_after(before))) == 3000


# The Procfile's arguments, with a rate report every second to see it running.
PROCFILE_LIKE = ("--rate-hz=50", "--batch=10", "--report-every=1")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda signum: signum.name
)
def test_the_procfile_simulator_runs_until_a_stop_signal_then_stops_cleanly_at_once(
    signum, telemetry_stream
):
    """As `make run` starts it (no duration, real time, the MES on), and as honcho, Ctrl-C or a
    closed terminal stop it: it drains in less than the 5 s honcho waits before SIGKILL."""
    seed_demo_plant()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "simulate", *PROCFILE_LIKE, "--stations=7"],
        cwd=REPO,
        env=process_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline and not any(s.startswith("sim ") for s in started):
            line = process.stdout.readline()
            if not line:
                break
            started.append(line)
        assert any(line.startswith("sim ") for line in started), "".join(started)
        assert process.poll() is None  # no duration: it runs until stopped

        signalled = time.monotonic()
        process.send_signal(signum)
        output, _ = process.communicate(timeout=30)
        stopped_s = time.monotonic() - signalled
    finally:
        stop(process)

    assert process.returncode == 0, output
    assert stopped_s < 5, output
    summary = re.search(
        r"([\d,]+) messages \(([\d,]+) acked, 0 duplicates, 0 refused, 0 unacked", output
    )
    assert summary, output
    assert summary[1] == summary[2] != "0"
    assert re.search(r"MES records [\d,]+, errors 0", output), output
    assert StationVisit.objects.filter(station__code="7").exists()


@pytest.mark.django_db
def test_when_the_demo_work_orders_run_out_new_ones_are_started_and_finished_ones_completed():
    seed_demo_plant()
    sink = MesSink(plant_layout_load())
    units = [SimUnit("L2", number, UnitFaults()) for number in range(1, 27)]
    actions = []
    for number, unit in enumerate(units):
        at = T0_MS + number * 10_000
        actions += [
            Arrive(unit, "7", at),
            Leave(unit, "7", at + 5000, at),
            UnitDone(unit, at + 5000),
        ]

    sink.apply(actions)

    assert (sink.report.errors, list(sink.report.last_errors)) == (0, [])
    demo = WorkOrder.objects.filter(external_id__startswith="WO-", line__code="L2")
    assert set(demo.values_list("status", flat=True)) == {"completed"}
    new = WorkOrder.objects.get(external_id__startswith="SIM-L2-")
    assert (new.status, new.quantity, new.units.count()) == ("in_progress", 12, 12)
    assert new.units.filter(status="completed").count() == 2  # units 25 and 26
    assert Unit.objects.filter(work_order__in=demo, status="completed").count() == 24
    assert not Unit.objects.filter(status="in_progress").exists()
    assert StationVisit.objects.filter(station__code="7", left_at__isnull=False).count() == 26
    assert ProductionCount.objects.filter(station__code="7", good=1).count() == 26


@pytest.mark.django_db
def test_a_unit_whose_departure_was_refused_is_not_completed_and_the_refusal_is_counted():
    seed_demo_plant()
    sink = MesSink(plant_layout_load())
    unit = SimUnit("L2", 1, UnitFaults())
    # The MES refuses the departure (before the arrival), so the unit is still at station 12.
    sink.apply([Arrive(unit, "12", T0_MS), Leave(unit, "12", T0_MS - 5000, T0_MS)])
    errors = sink.report.errors

    sink.apply([UnitDone(unit, T0_MS + 1000)])

    assert sink.report.errors == errors + 1
    assert "is at station 12" in sink.report.last_errors[-1]
    assert Unit.objects.get(pk=sink.units[unit.key].pk).status == "in_progress"


@pytest.mark.django_db
def test_a_start_before_the_history_the_mes_records_is_refused():
    seed_demo_plant()
    sink = MesSink(plant_layout_load())
    unit = SimUnit("L1", 1, UnitFaults())
    sink.apply([Arrive(unit, "3", T0_MS)])

    with pytest.raises(CommandError, match="--no-mes"):
        call_command(
            "simulate",
            "--duration=10",
            f"--start={dt.datetime(2026, 3, 3, 5, 0, tzinfo=dt.UTC).isoformat()}",
        )


def test_start_accepts_instants_with_an_offset_and_times_ago():
    now = dt.datetime(2026, 3, 3, 12, 0, tzinfo=dt.UTC)

    assert parse_start("2026-03-03T06:00:00Z", now) == T0
    assert parse_start("-8h", now) == dt.datetime(2026, 3, 3, 4, 0, tzinfo=dt.UTC)
    assert parse_start("-90m", now) == dt.datetime(2026, 3, 3, 10, 30, tzinfo=dt.UTC)
    with pytest.raises(CommandError):
        parse_start("2026-03-03T06:00:00", now)  # no offset: which 06:00?


def test_help_explains_the_simulator():
    text = SimulateCommand().create_parser("manage.py", "simulate").format_help()

    for option in ("--seed", "--stations", "--rate-hz", "--batch", "--duration", "--speed"):
        assert option in text
    assert "--no-mes" in text
    assert "--truth-file" in text
    assert "steering" in text
    assert "docs/simulator.md" in text


def test_arguments_out_of_range_are_refused():
    with pytest.raises(CommandError, match="--rate-hz"):
        call_command("simulate", "--rate-hz=2000", "--duration=1")
    with pytest.raises(CommandError, match="--batch"):
        call_command("simulate", "--batch=0", "--duration=1")
