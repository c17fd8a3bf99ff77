"""Demo models: on a seeded demo plant every station the simulator publishes gets a promoted
model with a verified ONNX artifact, trained on simulated normal running stored as its
telemetry; running it again changes nothing; and the wheel-nut runner's model catches the
simulator's bad-firmware units before they leave the station. Real PostgreSQL (the history
goes through the ingest's own COPY session, hence transactional tests)."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from aegis.management.commands.run import demo_models_wanted, train_demo_models_meanwhile
from foresight import demo
from foresight.detectors import OnnxModel
from foresight.features import FeatureSpec
from foresight.models import ModelStatus, ModelVersion
from foresight.scorer import load_model
from foresight.scoring import StationScorer, on_delay
from mes.demo import seed_demo_plant
from mes.models import AuditEntry, Station
from telemetry.models import Sample
from telemetry.simulator import FaultSettings, Simulation, SimulationConfig, plant_layout_load
from telemetry.simulator.plant import Arrive, Leave, Truth

NOW = dt.datetime(2026, 3, 3, 12, 0, tzinfo=dt.UTC)
RATE_HZ = 50.0  # the live simulator's default
MINUTES = 10.0  # a third of the default history keeps the test short; the spec is the default's

transactional = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def artifact_dir(settings, tmp_path):
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.FORESIGHT_ARTIFACT_DIR


def production_models() -> dict[str, ModelVersion]:
    return {
        model.station.code: model
        for model in ModelVersion.objects.filter(status=ModelStatus.PRODUCTION).select_related(
            "station"
        )
    }


def published_stations() -> dict[str, list[str]]:
    """Station code → the signals the simulator publishes for it (every demo station)."""
    return {spec.code: [s.name for s in spec.signals] for spec in plant_layout_load().stations}


def simulate_bad_firmware(minutes: float, *, start: dt.datetime) -> dict:
    """Line 1 with a third of the units flashed with the bad EPS firmware, station 5 published:
    its samples, its visits and the units the firmware drifted there (the ground truth)."""
    config = SimulationConfig(
        seed=11,
        start_ms=int(start.timestamp() * 1000),
        stations=("5",),
        rate_hz=RATE_HZ,
        batch=500,
        mes=False,
        faults=FaultSettings(bad_firmware_share=0.35),
    )
    simulation = Simulation(plant_layout_load(), config)
    samples, visits, drifted = [], {}, set()
    end_ms = config.start_ms + int(minutes * 60_000)
    while simulation.now_ms < end_ms:
        messages = simulation.advance(min(end_ms, simulation.now_ms + 60_000))
        for message in messages:
            samples += orjson.loads(message.payload)["samples"]
        actions = simulation.plant.take_actions()
        for action in actions + simulation.plant.in_flight_truth():
            if isinstance(action, Arrive) and action.station == "5":
                visits[action.unit.key] = [action.at, None]
            elif isinstance(action, Leave) and action.station == "5":
                visits[action.unit.key][1] = action.at
            elif isinstance(action, Truth) and action.unit is not None:
                acted_at = (action.record.get("evidence") or {}).get("station")
                if acted_at == "5":
                    drifted.add(action.unit.key)
    return {"samples": samples, "visits": visits, "drifted": drifted}


def score_live(model: ModelVersion, samples: list[dict], batch: int = 250) -> list:
    """The production model scores the samples as the live scorer would; its alerts."""
    scorer = StationScorer(model.station_id)
    scorer.use(load_model(model), [])
    alerts = []
    for first in range(0, len(samples), batch):
        part = samples[first : first + batch]
        raw = [sample["signals"] for sample in part]
        values = {name: np.array([signals.get(name, np.nan) for signals in raw]) for name in raw[0]}
        ts = np.array([sample["ts"] for sample in part])
        seq = np.array([sample["seq"] for sample in part])
        alerts += scorer.score(ts, seq, values, raw).alerts
    return alerts


@transactional
def test_every_published_demo_station_gets_a_verified_production_model_once(artifact_dir):
    seed_demo_plant(today=NOW.date())
    published = published_stations()
    audit_before = AuditEntry.objects.order_by("pk").values_list("pk", flat=True).last() or 0
    lines: list[str] = []

    report = demo.demo_models_ensure(rate_hz=RATE_HZ, minutes=MINUTES, now=NOW, say=lines.append)

    models = production_models()
    assert sorted(models) == sorted(published) == sorted(report.trained)
    history = (report.history_start, report.history_end)
    assert history == (
        NOW - dt.timedelta(minutes=MINUTES, seconds=1),
        NOW - dt.timedelta(seconds=1),
    )
    per_station = int(MINUTES * 60 * RATE_HZ)
    assert report.samples_stored == Sample.objects.count() == per_station * len(published)
    # Stored as the stations' telemetry just before now, without MES state (no units).
    assert not Sample.objects.filter(unit_id__isnull=False).exists()
    assert not Sample.objects.filter(ts__lt=history[0]).exists()
    assert not Sample.objects.filter(ts__gte=history[1]).exists()
    for code, model in models.items():
        assert report.trained[code] == model.version
        assert model.kind == "pca_t2q"
        assert model.notes.startswith(demo.DEMO_NOTE)
        spec = FeatureSpec.from_json(model.feature_spec)
        assert list(spec.windows) == [100, 500]  # 2 s and 10 s at 50 Hz
        assert set(spec.signals) == set(published[code])
        assert "kurtosis" not in spec.features
        artifact = model.load_artifact()  # sha256-verified
        assert OnnxModel(artifact).n_features == len(model.feature_names)
        assert model.metrics["parity_max_abs_diff"] < 1e-4
        assert model.metrics["dataset"]["samples_in_range"] == per_station
        assert model.metrics["dataset"]["sampling_rate_hz"] == RATE_HZ
    # Registered and promoted as the system, audited.
    ids = [str(model.pk) for model in models.values()]
    audited = AuditEntry.objects.filter(
        pk__gt=audit_before, model="foresight.modelversion", object_id__in=ids
    )
    assert {(e.source, e.actor_id) for e in audited} == {("system", None)}
    # Registered, then promoted.
    assert sorted(e.action for e in audited) == sorted(["create", "update"] * len(published))
    assert lines[0].startswith(f"simulating {MINUTES:g} min of normal running (no faults)")
    assert any("station 5 (" in line and "in production" in line for line in lines)

    # Again: nothing to do, nothing changes.
    versions = sorted(ModelVersion.objects.values_list("version", flat=True))
    samples, audited = Sample.objects.count(), AuditEntry.objects.count()
    again = demo.demo_models_ensure(rate_hz=RATE_HZ, minutes=MINUTES, now=NOW)
    assert again.trained == {}
    assert sorted(again.ready) == sorted(published)
    assert sorted(ModelVersion.objects.values_list("version", flat=True)) == versions
    assert (Sample.objects.count(), AuditEntry.objects.count()) == (samples, audited)

    # The wheel-nut runner's model on fresh simulated running with the bad firmware: every
    # drifted unit is alerted on while still at station 5, raised after the on-delay.
    run = simulate_bad_firmware(20, start=NOW + dt.timedelta(hours=1))
    alerts = score_live(models["5"], run["samples"])
    visits = run["visits"]

    def unit_at(ts_ms: int) -> str | None:
        for unit, (arrived, left) in visits.items():
            if arrived <= ts_ms and (left is None or ts_ms < left):
                return unit
        return None

    # Judged: the units that arrived once the model's longest window was full, and left.
    warm_ms = run["samples"][0]["ts"] + 20 * max(models["5"].feature_spec["windows"])
    judged = {u for u, (arrived, left) in visits.items() if arrived >= warm_ms and left}
    alerted = {unit_at(a.raised_ts_ms) for a in alerts}
    drifted = run["drifted"] & judged
    false_alarms = [a for a in alerts if unit_at(a.raised_ts_ms) not in run["drifted"]]
    delay = on_delay(FeatureSpec.from_json(models["5"].feature_spec))
    print(
        f"\ndemo model of station 5: {len(drifted & alerted)} of {len(drifted)} drifted units "
        f"caught before leaving, {len(false_alarms)} alerts on {len(judged - drifted)} good units"
    )
    assert len(drifted) >= 4
    assert drifted <= alerted
    assert len(false_alarms) <= 1
    assert all(a.raised_ts_ms - a.ts_ms == (delay - 1) * 20 for a in alerts)  # 20 ms a sample


@transactional
def test_demo_models_made_for_another_rate_are_replaced_and_a_stations_own_model_kept(
    artifact_dir,
):
    seed_demo_plant(today=NOW.date())
    first = demo.demo_models_ensure(rate_hz=10.0, minutes=3, now=NOW)
    own = ModelVersion.objects.get(version=first.trained["3"])
    ModelVersion.objects.filter(pk=own.pk).update(notes="trained by the quality engineer")

    second = demo.demo_models_ensure(rate_hz=20.0, minutes=2, now=NOW)

    models = production_models()
    assert "3" not in second.trained
    assert "3" in second.ready
    assert models["3"].pk == own.pk
    for code, version in second.trained.items():
        assert models[code].version == version
        assert models[code].feature_spec["windows"] == [40, 200]
        replaced = ModelVersion.objects.get(version=first.trained[code])
        assert replaced.status == ModelStatus.ARCHIVED
    # The second history lies before the first: samples never interleave.
    assert second.history_end < first.history_start


@pytest.mark.django_db
def test_the_command_refuses_without_the_demo_plant_and_explains_itself():
    with pytest.raises(CommandError, match=r"run manage\.py seed_demo first"):
        call_command("foresight_demo_models", stdout=io.StringIO())
    parser = __import__(
        "foresight.management.commands.foresight_demo_models", fromlist=["Command"]
    ).Command()
    text = " ".join(
        parser.create_parser("manage.py", "foresight_demo_models").format_help().split()
    )
    assert "--rate-hz" in text
    assert "--minutes" in text
    assert "Idempotent" in text


def own_production_model(station: Station) -> ModelVersion:
    """A production model of the station's own (not a demo model), as a row."""
    return ModelVersion.objects.create(
        version=f"own-{station.code}",
        station=station,
        kind="pca_t2q",
        feature_spec={"signals": ["torque"], "windows": [20]},
        feature_names=[],
        feature_mean=[],
        feature_std=[],
        threshold=1.0,
        training_start=NOW,
        training_end=NOW,
        artifact_path="x",
        sha256="0" * 64,
        status=ModelStatus.PRODUCTION,
        promoted_at=NOW,
    )


@pytest.mark.django_db
def test_the_command_says_when_there_is_nothing_to_do():
    seed_demo_plant(today=NOW.date())
    for station in Station.objects.all():
        own_production_model(station)
    out = io.StringIO()

    call_command("foresight_demo_models", stdout=out)

    assert (
        "every demo station has a production model (12 stations): nothing to do" in out.getvalue()
    )
    assert not Sample.objects.exists()


@transactional
def test_make_run_trains_them_in_a_thread_that_never_fails_the_launcher():
    out = io.StringIO()
    train_demo_models_meanwhile(until=NOW, stdout=out).join(60)  # no demo plant yet
    seed_demo_plant(today=NOW.date())
    for station in Station.objects.all():
        own_production_model(station)
    train_demo_models_meanwhile(until=NOW, stdout=out).join(60)

    lines = out.getvalue().splitlines()
    assert lines[0].endswith(
        " demo-models | no demo models: CommandError: the demo plant is not there: run "
        "manage.py seed_demo first"
    )
    assert lines[1].endswith(
        " demo-models | every demo station has a production model (12 stations): nothing to do"
    )


def test_make_run_trains_demo_models_only_for_the_demo_plant_with_its_simulator():
    assert demo_models_wanted(demo=True, processes=["web", "scorer", "simulator"])
    assert not demo_models_wanted(demo=True, processes=["web", "scorer"])
    assert not demo_models_wanted(demo=False, processes=["web", "scorer", "simulator"])


def test_the_history_is_shorter_above_50_hz():
    assert demo.history_minutes(50) == 30
    assert demo.history_minutes(10) == 30
    assert demo.history_minutes(100) == 15  # 90,000 samples a station at most
