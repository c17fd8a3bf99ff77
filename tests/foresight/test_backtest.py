"""Backtests score stored telemetry exactly as the live scorer would and judge the alerts per
unit: synthetic drifts, a historian CSV round trip (import_csv → foresight_train →
foresight_backtest) that finds its injected anomaly, and the simulator's labelled bad-firmware
fault at the wheel-nut runner, measured against the issue's targets. Real PostgreSQL."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from foresight import artifacts, training
from foresight.backtest import labels_from_truth, run_backtest
from foresight.features import FeatureSpec
from foresight.management.commands.foresight_backtest import Command as BacktestCommand
from foresight.models import ModelVersion
from foresight.scorer import load_model
from foresight.scoring import StationScorer, on_delay
from mes import services
from mes.demo import seed_demo_plant
from mes.errors import InvalidInput
from mes.models import Station
from telemetry.importing import station_history
from telemetry.simulator import FaultSettings, Simulation, SimulationConfig, plant_layout_load
from telemetry.simulator.plant import MesSink
from telemetry.storage import COLUMNS, TABLE, CopyRows
from tests.factories import DefectCodeFactory, StationFactory, UnitFactory
from tests.foresight.test_training import (
    STEP_MS,
    T0_MS,
    VISIT,
    at,
    nut_runner,
    store_samples,
    visit,
)

T0 = training.parse_instant("2026-11-20T06:00:00Z", name="T0")


@pytest.fixture
def station():
    return StationFactory(code="ST5")


@pytest.fixture
def artifact_dir(settings, tmp_path):
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.FORESIGHT_ARTIFACT_DIR


def read_scores(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# -- synthetic ----------------------------------------------------------------------------------

NORMAL = 36_000  # samples the model is trained on (an hour at 10 Hz)
UNITS = 20  # then 20 units of 60 s each
DEFECTIVE = (3, 8, 15)  # units whose torque drifts in the second half of their visit


@pytest.fixture
def drifting_station(station, artifact_dir):
    """A normal hour (trained on), then 20 units at the station, 3 with a drifting torque and a
    steering defect found at end of line 2 minutes after they left."""
    count = NORMAL + UNITS * VISIT
    drifting = tuple((NORMAL + u * VISIT + VISIT // 2, NORMAL + (u + 1) * VISIT) for u in DEFECTIVE)
    values = nut_runner(count, seed=4, drifting=drifting)
    units = UnitFactory.create_batch(UNITS)
    for number, unit in enumerate(units):
        first = NORMAL + number * VISIT
        visit(unit, station, first, first + VISIT - 1)
    unit_ids = np.concatenate([np.full(NORMAL, -1), np.repeat([u.pk for u in units], VISIT)])
    store_samples(station.pk, T0_MS + STEP_MS * np.arange(count), values, unit_ids=unit_ids)
    steering = DefectCodeFactory()
    for number in DEFECTIVE:
        services.quality_event_record(
            unit=units[number],
            defect=steering,
            found_at=at(NORMAL + (number + 1) * VISIT + 1_200),
            severity="major",
            source="inspection",
        )
    model = training.train_station_model(station=station, start=at(0), end=at(NORMAL - 1))
    return model, units, values


@pytest.mark.django_db
def test_the_backtest_gives_every_sample_the_live_scorers_score_and_alerts(
    drifting_station, station
):
    model, _units, values = drifting_station
    count = NORMAL + UNITS * VISIT
    out = io.StringIO()

    result = run_backtest(
        model=model, station=station, start=at(NORMAL), end=at(count - 1), out=out, batch_rows=777
    )

    # The live scorer: the same samples in pull-sized batches, as lists of signal dicts.
    live = StationScorer(station.pk, signals=[])
    live.use(load_model(model), [])
    ts = T0_MS + STEP_MS * np.arange(NORMAL, count)
    live_scores, live_alerts = [], []
    for first in range(0, ts.size, 100):
        part = {
            name: column[NORMAL + first : NORMAL + first + 100] for name, column in values.items()
        }
        raw = [{name: float(c[i]) for name, c in part.items()} for i in range(len(part["torque"]))]
        scored = live.score(
            ts[first : first + 100], np.arange(first, first + 100) + NORMAL, part, raw
        )
        live_scores.append(scored.by_model[0][2])
        live_alerts += [a.raised_ts_ms for a in scored.alerts]  # flagged where raised

    rows = read_scores(out.getvalue())
    assert out.getvalue().startswith("ts,score,alert\n")
    assert len(rows) == result.samples == UNITS * VISIT
    assert rows[0]["ts"] == "2026-11-20T07:00:00.000Z"
    assert rows[-1]["ts"] == at(count - 1).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    np.testing.assert_allclose(
        [float(r["score"]) for r in rows], np.concatenate(live_scores), rtol=1e-6
    )
    alerted = [i for i, r in enumerate(rows) if r["alert"] == "1"]
    assert [int(ts[i]) for i in alerted] == live_alerts == [a.ts_ms for a in result.alerts]
    assert result.model_errors == 0


@pytest.mark.django_db
def test_defective_units_are_caught_while_at_the_station_and_judged_per_unit(
    drifting_station, station
):
    model, units, _values = drifting_station
    count = NORMAL + UNITS * VISIT

    result = run_backtest(
        model=model, station=station, start=at(NORMAL), end=at(count - 1), out=io.StringIO()
    )

    e = result.evaluation
    assert (len(e.units), e.defective_units, e.good_units) == (UNITS, 3, 17)
    assert e.caught == 3
    assert e.recall == 1.0
    caught = sorted(u.unit_id for u in e.units if u.caught)
    assert caught == sorted(units[n].pk for n in DEFECTIVE)
    for outcome in (u for u in e.units if u.caught):
        # Raised in the drifting half of the visit, before the unit left.
        assert outcome.arrived_ms + 300 * STEP_MS <= outcome.first_alert_ms < outcome.left_ms
        assert 0 < (outcome.left_ms - outcome.first_alert_ms) / 1000 <= 30
        assert outcome.defect_found_ms == outcome.left_ms + 1_200 * STEP_MS + STEP_MS
    # Every other alert is a false alarm, judged on the unit at the station then.
    defective_ids = {units[n].pk for n in DEFECTIVE}
    others = [a for a in result.alerts if a.unit_id not in defective_ids]
    assert e.false_alarms == len(others)
    assert e.good_units_alerted == len({a.unit_id for a in others})
    assert e.precision == 3 / (3 + e.good_units_alerted)
    assert e.false_alarms_per_1000_good_units == 1000 * len(others) / 17
    assert sorted(e.lead_to_departure_s) == sorted(
        (u.left_ms - u.first_alert_ms) / 1000 for u in e.units if u.caught
    )
    assert e.sample_recall > 0.3
    assert e.sample_precision > 0.5


@pytest.mark.django_db
def test_the_backtest_command_writes_the_csv_and_prints_the_unit_level_numbers(
    drifting_station, station, tmp_path
):
    model, _units, _values = drifting_station
    out_file = tmp_path / "scores.csv"
    out = io.StringIO()

    call_command(
        "foresight_backtest",
        "--model",
        model.version,
        "--station",
        "ST5",
        "--start",
        "2026-11-20T07:00:00Z",
        "--end",
        "2026-11-20T07:20:00Z",
        "--out",
        str(out_file),
        stdout=out,
    )

    text = out.getvalue()
    assert len(read_scores(out_file.read_text())) == UNITS * VISIT
    expected = run_backtest(
        model=model,
        station=station,
        start=at(NORMAL),
        end=at(NORMAL + UNITS * VISIT),
        out=io.StringIO(),
    )
    e = expected.evaluation
    assert f"12,000 samples scored, {len(expected.alerts)} alerts" in text
    assert "20 (3 defective, 17 good)" in text
    assert "recall 1.000 (3 of 3 defective units caught before leaving station ST5)" in text
    assert (
        f"false alarms: {e.false_alarms} ({e.false_alarms_per_1000_good_units:.2f} per 1,000"
        in text
    )
    assert "to leaving the station median" in text
    assert "to the defect record median 1" in text
    assert "sample level (11,901 samples after the warm-up" in text


@pytest.mark.django_db
def test_the_simulators_ground_truth_can_be_the_label(drifting_station, tmp_path):
    model, units, _values = drifting_station
    truth = tmp_path / "truth.jsonl"
    records = [
        {"unit": units[3].serial, "fault": "bad_firmware", "evidence": {"station": "ST5"}},
        {  # acted here too, but end of line found nothing on it
            "unit": units[8].serial,
            "fault": "bad_firmware",
            "evidence": {"station": "ST5"},
            "defect": {"code": "steering", "found_at": "2026-11-20T08:00:00.000Z"},
        },
        {"unit": units[15].serial, "fault": "tool_wear", "evidence": {"station": "ST1"}},
        {"unit": units[5].serial, "fault": "none", "evidence": None},
        {"fault": "tool_wear", "event": "maintenance", "station": "ST1"},
    ]
    truth.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = io.StringIO()

    call_command(
        "foresight_backtest",
        *("--model", model.version, "--station", "ST5", "--start", "2026-11-20T07:00:00Z"),
        *("--end", "2026-11-20T07:20:00Z", "--out", str(tmp_path / "s.csv")),
        *("--truth", str(truth)),
        stdout=out,
    )

    text = out.getvalue()
    assert f"labels: the simulator's ground truth ({truth})" in text
    assert "20 (2 defective, 18 good)" in text
    assert "(2 of 2 defective units caught before leaving station ST5)" in text


@pytest.mark.django_db
def test_a_model_whose_artifact_is_corrupted_is_refused_not_backtested(
    drifting_station, station, tmp_path
):
    model, _units, _values = drifting_station
    path = artifacts.resolve(model.artifact_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(InvalidInput, match=f"model {model.version} does not load"):
        run_backtest(model=model, station=station, start=at(0), end=at(10), out=io.StringIO())
    with pytest.raises(CommandError, match="does not load"):
        call_command(
            "foresight_backtest",
            *("--model", model.version, "--station", "ST5", "--start", "2026-11-20T06:00Z"),
            *("--end", "2026-11-20T07:00Z", "--out", str(tmp_path / "x.csv")),
            stdout=io.StringIO(),
        )


@pytest.mark.django_db
def test_the_backtest_command_names_what_is_wrong(drifting_station, tmp_path):
    model, _units, _values = drifting_station
    common = ("--start", "2026-11-20T06:00Z", "--end", "2026-11-20T07:00Z")
    common += ("--out", str(tmp_path / "x.csv"))

    with pytest.raises(CommandError, match="unknown model version 'nope'"):
        call_command("foresight_backtest", "--model", "nope", "--station", "ST5", *common)
    with pytest.raises(CommandError, match="unknown station 'ST99'"):
        call_command("foresight_backtest", "--model", model.version, "--station", "ST99", *common)
    text = BacktestCommand().create_parser("manage.py", "foresight_backtest").format_help()
    for option in ("--model", "--station", "--start", "--end", "--out", "--defects"):
        assert option in text
    assert "exactly as the live scorer would" in " ".join(text.split())


# -- CSV → import_csv → foresight_train → foresight_backtest ----------------------------------

ANOMALY = (dt.timedelta(minutes=50), dt.timedelta(minutes=51))  # after T0


def historian_export(path: Path) -> None:
    """An hour at 10 Hz, naive UTC timestamps, semicolons and decimal commas; from minute 50
    to 51 the torque drifts up by up to 8 % with three times the scatter."""
    count = 36_000
    first = int(ANOMALY[0] / dt.timedelta(milliseconds=STEP_MS))
    last = int(ANOMALY[1] / dt.timedelta(milliseconds=STEP_MS))
    values = nut_runner(count, seed=9, drifting=((first, last),))
    stamps = np.datetime_as_string(
        (T0_MS + STEP_MS * np.arange(count)).astype("datetime64[ms]"), unit="ms"
    )
    with path.open("w", encoding="utf-8") as handle:
        handle.write("timestamp;torque [N·m];angle [deg];current [A];temperature [°C]\n")
        for i, stamp in enumerate(stamps.tolist()):
            row = [f"{values[name][i]:.4f}".replace(".", ",") for name in values]
            handle.write(stamp.replace("T", " ") + ";" + ";".join(row) + "\n")


def command_output(*arguments: str) -> list[str]:
    out = io.StringIO()
    call_command(*arguments, stdout=out)
    return out.getvalue().splitlines()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_import_train_backtest_round_trip_finds_the_injected_anomaly(artifact_dir, tmp_path):
    StationFactory(code="ST5")
    export = tmp_path / "historian.csv"
    historian_export(export)

    imported = command_output("import_csv", "ST5", str(export), "--sep", ";")
    trained = command_output(
        "foresight_train",
        *("--station", "ST5", "--start", "2026-11-20T06:00:00Z", "--end", "2026-11-20T06:40:00Z"),
    )
    version = trained[-1]
    scores = tmp_path / "backtest.csv"
    backtested = command_output(
        "foresight_backtest",
        *("--model", version, "--station", "ST5", "--start", "2026-11-20T06:40:00.100Z"),
        *("--end", "2026-11-20T07:00:00Z", "--out", str(scores)),
    )

    assert any("36,000 samples stored" in line for line in imported), imported
    model = ModelVersion.objects.get(version=version)
    assert model.feature_spec["signals"] == ["torque", "angle", "current", "temperature"]
    rows = read_scores(scores.read_text())
    assert len(rows) == 12_000 - 1
    ts = [training.parse_instant(r["ts"], name="ts") for r in rows]
    score = np.array([float(r["score"]) for r in rows])
    alerts = [t for t, r in zip(ts, rows, strict=True) if r["alert"] == "1"]
    anomaly_start, anomaly_end = T0 + ANOMALY[0], T0 + ANOMALY[1]
    during = [t for t in alerts if anomaly_start <= t <= anomaly_end]
    # Found within seconds of its start, before the drift has reached its full 8 %.
    assert during, backtested
    assert during[0] - anomaly_start <= dt.timedelta(seconds=10)
    # It is what the model finds most anomalous, by far: every sample of the full drift
    # scores above anything outside the anomaly and the 10 s window that still holds it.
    stamps = np.array([t.timestamp() for t in ts])
    judged = np.arange(score.size) >= 99
    full_drift = (stamps >= (anomaly_start + dt.timedelta(seconds=10)).timestamp()) & (
        stamps <= anomaly_end.timestamp()
    )
    outside = judged & (
        (stamps < anomaly_start.timestamp())
        | (stamps > (anomaly_end + dt.timedelta(seconds=10)).timestamp())
    )
    assert score[full_drift].min() > 3 * score[outside].max()
    assert any(f"{len(alerts)} alerts" in line for line in backtested)
    assert any("no labels in the range (from quality events" in line for line in backtested)


# -- the simulator's labelled fault ---------------------------------------------------------------

SIM_T0 = dt.datetime(2026, 3, 3, 6, 0, tzinfo=dt.UTC)
SIM_RATE_HZ = 10.0
NORMAL_H = 2.0  # the training range: no unit gets the bad firmware
FAULTY_H = 8.0  # then 15 % of the units do (the simulator's default share)


def _samples(message) -> list[tuple[int, int, dict]]:
    document = orjson.loads(message.payload)
    return [(s["ts"], s["seq"], s["signals"]) for s in document["samples"]]


def simulate_line_1(station: Station) -> list[dict]:
    """Run the demo plant's line 1 (station 5 published) through the MES, store station 5's
    telemetry with the MES state of each sample's instant; returns the ground truth."""
    layout = plant_layout_load()
    start_ms = int(SIM_T0.timestamp() * 1000)
    config = SimulationConfig(
        seed=7,
        start_ms=start_ms,
        stations=("5",),
        rate_hz=SIM_RATE_HZ,
        batch=100,
        faults=FaultSettings(bad_firmware_share=0.0),
    )
    simulation = Simulation(layout, config)
    sink = MesSink(layout)
    samples: list[tuple[int, int, dict]] = []
    truth: list[dict] = []

    def run_until(end_ms: int) -> None:
        while simulation.now_ms < end_ms:
            for message in simulation.advance(min(end_ms, simulation.now_ms + 60_000)):
                samples.extend(_samples(message))
            truth.extend(sink.apply(simulation.plant.take_actions()))

    run_until(start_ms + int(NORMAL_H * 3_600_000))
    for line in simulation.plant.lines:  # from now on units may get the release candidate
        line.faults.settings = dataclasses.replace(
            line.faults.settings, bad_firmware_share=FaultSettings().bad_firmware_share
        )
    run_until(start_ms + int((NORMAL_H + FAULTY_H) * 3_600_000))
    for message in simulation.finish():
        samples.extend(_samples(message))
    truth.extend(sink.apply(simulation.plant.take_actions()))
    assert sink.report.errors == 0, list(sink.report.last_errors)

    history = station_history(
        station_id=station.pk,
        line_id=station.line_id,
        stations=[(station.pk, station.code, station.line_id)],
        since=SIM_T0,
    )
    rows = CopyRows()
    for ts, seq, signals in samples:
        rows.add(station.pk, ts, seq, history.lookup(station.pk, ts), signals)
    statement = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(rows.payload())
    return truth


# About 80 s alone on the 2-core machine (10 simulated hours through the MES, then three
# backtests); the default 300 s limit is too tight when other test sessions share the cores
# (with five other sessions on them it has taken more than 15 minutes).
@pytest.mark.timeout(1800)
@pytest.mark.django_db
def test_the_simulators_bad_firmware_units_are_caught_before_they_leave_the_wheel_nut_runner(
    artifact_dir,
):
    started = time.monotonic()
    seed_demo_plant(today=SIM_T0.date())
    station = Station.objects.get(code="5")
    truth = simulate_line_1(station)
    simulated_s = time.monotonic() - started
    normal_end = SIM_T0 + dt.timedelta(hours=NORMAL_H)
    faulty_end = normal_end + dt.timedelta(hours=FAULTY_H)

    model = training.train_station_model(
        station=station, start=SIM_T0, end=normal_end - dt.timedelta(milliseconds=1)
    )
    trained_s = time.monotonic() - started - simulated_s
    # Judged by the simulator's labels: a unit is defective when the bad firmware drifted
    # its torque here (whether or not end of line then found a steering pull on it).
    faults = labels_from_truth([json.dumps(record) for record in truth], station=station)
    labelled = run_backtest(
        model=model,
        station=station,
        start=normal_end,
        end=faulty_end,
        out=io.StringIO(),
        labels=faults,
    )
    backtest_s = time.monotonic() - started - simulated_s - trained_s
    # Judged by what the MES knows: steering defects found at end of line, then any defect.
    steering = run_backtest(
        model=model,
        station=station,
        start=normal_end,
        end=faulty_end,
        out=io.StringIO(),
        defects=["steering"],
    ).evaluation
    every_defect = run_backtest(
        model=model, station=station, start=normal_end, end=faulty_end, out=io.StringIO()
    ).evaluation

    e = labelled.evaluation
    rate = e.false_alarms_per_1000_good_units
    print(
        f"\nsimulator, station 5 at {SIM_RATE_HZ:g} Hz: trained on {NORMAL_H:g} h "
        f"({model.metrics['dataset']['training_rows']:,} rows, {len(model.feature_names)} "
        f"features, threshold {model.threshold:.3f}, on-delay "
        f"{on_delay(FeatureSpec.from_json(model.feature_spec))} samples),"
        f" backtested {FAULTY_H:g} h ({labelled.samples:,} samples, {len(labelled.alerts)} "
        f"alerts); simulate+store {simulated_s:.0f} s, train {trained_s:.0f} s, backtest "
        f"{backtest_s:.0f} s\n"
        f"  labelled faults (bad firmware): {e.caught} of {e.defective_units} units caught "
        f"before leaving station 5 (recall {e.recall:.3f}), precision {e.precision:.3f}; "
        f"{e.false_alarms} false alarms = {rate:.2f} per 1,000 good units ({e.good_units} good "
        f"units, {e.good_units_alerted} alerted)\n"
        f"  lead time to leaving station 5: {_spread(e.lead_to_departure_s)}; to the steering "
        f"record at end of line: {_spread(e.lead_to_defect_record_s)}\n"
        f"  MES labels, steering only: recall {steering.recall:.3f} ({steering.caught} of "
        f"{steering.defective_units}), {steering.false_alarms_per_1000_good_units:.2f} false "
        f"alarms per 1,000 good units; every defect code: recall {every_defect.recall:.3f} "
        f"({every_defect.caught} of {every_defect.defective_units}), "
        f"{every_defect.false_alarms_per_1000_good_units:.2f} per 1,000\n"
        f"  sample level (labelled faults): precision {e.sample_precision:.3f}, recall "
        f"{e.sample_recall:.3f}, false-positive rate {e.sample_false_positive_rate:.5f}"
    )
    assert e.defective_units >= 40
    assert e.good_units >= 300
    # The target, first half: >= 90 % of the defective units caught before they
    # leave the faulty station.
    assert e.recall >= 0.9
    assert steering.recall >= 0.9
    assert all(lead > 0 for lead in e.lead_to_departure_s)
    # Second half: <= 1 false alarm per 1,000 good units.
    assert rate <= 1.0


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {np.median(values):.1f} s (min {min(values):.1f} s)"
