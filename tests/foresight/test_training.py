"""Training on stored telemetry: rows read in time order as the scorer sees them, labels from
quality events and alert feedback, verified candidates registered (never promoted), clear
refusals, the command whose last line is the version, the Celery task's progress, the nightly
plan and the hourly drift check. Real PostgreSQL (and Redis for the task's progress)."""

from __future__ import annotations

import datetime as dt
import io
import json

import numpy as np
import pytest
from celery.result import AsyncResult
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from sklearn.metrics import roc_auc_score

from foresight import drift, registry, training
from foresight.detectors import OnnxModel, verify_parity
from foresight.features import FeatureSpec, StationWindows
from foresight.management.commands.foresight_train import Command as TrainCommand
from foresight.models import DefectAlert, ModelStatus, ModelVersion
from foresight.tasks import train_model
from mes import services
from mes.errors import InvalidInput
from mes.models import AuditEntry
from telemetry.enrichment import Enrichment
from telemetry.storage import COLUMNS, TABLE, CopyRows
from tests.factories import DefectCodeFactory, StationFactory, UnitFactory

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 20, 6, 0, tzinfo=dt.UTC)
T0_MS = int(T0.timestamp() * 1000)
STEP_MS = 100  # 10 Hz
VISIT = 600  # samples per unit at the station (60 s)


def at(index: int) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=index * STEP_MS)


def store_samples(
    station_id: int,
    ts_ms: np.ndarray,
    values: dict[str, np.ndarray],
    *,
    unit_ids: np.ndarray | None = None,
) -> None:
    """Telemetry rows through the ingest's COPY encoding, in the test's transaction; NaN values
    are left out of a sample, as a PLC that did not send them."""
    rows = CopyRows()
    enrichments: dict[int, Enrichment] = {}
    names = list(values)
    columns = [np.asarray(values[name], dtype=np.float64) for name in names]
    for i, ts in enumerate(np.asarray(ts_ms, dtype=np.int64).tolist()):
        unit = None if unit_ids is None else int(unit_ids[i])
        enrichment = None
        if unit is not None and unit >= 0:
            enrichment = enrichments.get(unit)
            if enrichment is None:
                enrichment = enrichments[unit] = Enrichment(unit, None, None, None, None, None, {})
        signals = {n: float(c[i]) for n, c in zip(names, columns, strict=True) if c[i] == c[i]}
        rows.add(station_id, ts, i, enrichment, signals)
    statement = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(rows.payload())


def nut_runner(count: int, *, seed: int, drifting: tuple[tuple[int, int], ...] = ()) -> dict:
    """A wheel-nut runner at 10 Hz: torque cycling around 120 N·m with angle, motor current and
    spindle temperature following it. In each `drifting` (first, last) sample stretch the
    torque drifts up to +8 % with three times the scatter, as under the bad EPS firmware."""
    rng = np.random.default_rng(seed)
    i = np.arange(count)
    cycle = 3.0 * np.sin(2 * np.pi * i / 150) + 1.0 * np.sin(2 * np.pi * i / 47 + seed)
    nominal = 120 + cycle + rng.normal(0, 0.3, count)
    torque = nominal.copy()
    for first, last in drifting:
        length = last - first
        ramp = np.minimum(np.arange(length) / 100, 1.0)
        torque[first:last] = nominal[first:last] * (1 + 0.08 * ramp) + rng.normal(0, 0.9, length)
    return {
        "torque": torque,
        "angle": 30 + 0.8 * (nominal - 120) + rng.normal(0, 0.2, count),
        "motor_current": 4 + 0.05 * nominal + rng.normal(0, 0.05, count),
        "spindle_temp": 35 + 0.5 * np.sin(2 * np.pi * i / 1_500) + rng.normal(0, 0.05, count),
    }


@pytest.fixture
def station():
    return StationFactory(code="ST5")


def store_normal(station, count: int, *, seed: int = 1, first: int = 0, unit_ids=None) -> None:
    ts = T0_MS + STEP_MS * (first + np.arange(count))
    store_samples(station.pk, ts, nut_runner(count, seed=seed), unit_ids=unit_ids)


# -- reading ------------------------------------------------------------------------------------


def test_telemetry_is_read_in_time_order_with_missing_and_non_numeric_values_as_nan(station):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_sample (station_id, ts, seq, unit_id, signals) VALUES"
            " (%(s)s, %(t2)s, 0, 7, '{\"torque\": 2.5}'),"
            ' (%(s)s, %(t1)s, 1, NULL, \'{"torque": 1.5, "angle": "jammed"}\'),'
            ' (%(s)s, %(t1)s, 0, NULL, \'{"torque": 1.0, "angle": 30}\'),'
            ' (%(s)s, %(t3)s, 0, 7, \'{"angle": 31, "note": {"a": 1}}\'),'
            " (%(other)s, %(t1)s, 0, NULL, '{\"torque\": 99}')",
            {"s": station.pk, "other": StationFactory().pk, "t1": at(0), "t2": at(1), "t3": at(2)},
        )

    for chunk_rows in (1, 2, 100):
        chunks = list(
            training.telemetry_chunks(
                station_id=station.pk,
                start=at(0),
                end=at(2),
                signals=["torque", "angle"],
                chunk_rows=chunk_rows,
            )
        )
        ts = np.concatenate([c.ts_ms for c in chunks])
        seq = np.concatenate([c.seq for c in chunks])
        units = np.concatenate([c.unit_id for c in chunks])
        torque = np.concatenate([c.values["torque"] for c in chunks])
        angle = np.concatenate([c.values["angle"] for c in chunks])
        assert ts.tolist() == [T0_MS, T0_MS, T0_MS + 100, T0_MS + 200]
        assert seq.tolist() == [0, 1, 0, 0]
        assert units.tolist() == [-1, -1, 7, 7]
        np.testing.assert_array_equal(torque, [1.0, 1.5, 2.5, np.nan])
        np.testing.assert_array_equal(angle, [30.0, np.nan, np.nan, 31.0])
    assert training.range_signals(station_id=station.pk, start=at(0), end=at(2)) == {
        "torque": 3,
        "angle": 2,
    }
    # Counting only a spec's signals agrees, and leaves out the signals the range lacks.
    assert training.range_signal_counts(
        station_id=station.pk, start=at(0), end=at(2), names=["torque", "angle", "current"]
    ) == {"torque": 3, "angle": 2}
    # The end is inclusive, and nothing outside the range is read.
    assert training.range_sample_count(station_id=station.pk, start=at(1), end=at(2)) == 2


def test_a_reader_stopped_early_leaves_the_callers_transaction_usable(station):
    store_normal(station, 20_000)
    chunks = training.telemetry_chunks(
        station_id=station.pk, start=at(0), end=at(20_000), signals=["torque"], chunk_rows=1_000
    )
    first = next(chunks)
    with pytest.raises(RuntimeError, match="a scoring error"):
        chunks.throw(RuntimeError("a scoring error"))

    assert len(first) >= 1_000
    assert training.range_sample_count(station_id=station.pk, start=at(0), end=at(20_000)) == (
        20_000
    )


def test_dataset_rows_have_exactly_the_features_the_scorer_computes(station):
    store_normal(station, 3_000)
    spec = training.station_spec(
        training.range_signals(station_id=station.pk, start=at(0), end=at(2_999)), 3_000
    )

    dataset = training.build_dataset(station=station, start=at(0), end=at(2_999), spec=spec)

    values = nut_runner(3_000, seed=1)
    expected = StationWindows(spec).push(T0_MS + STEP_MS * np.arange(3_000), values)
    warmup = spec.max_window - 1
    np.testing.assert_array_equal(dataset.features, expected[warmup:])
    assert dataset.ts_ms.tolist() == (T0_MS + STEP_MS * np.arange(warmup, 3_000)).tolist()
    assert (dataset.samples, dataset.stride) == (3_000, 1)


def test_the_spec_covers_the_signals_the_station_has_default_ones_first():
    spec = training.station_spec(
        {"spindle_temp": 90, "angle": 100, "torque": 100, "motor_current": 100, "rare": 0}, 100
    )

    assert spec.signals == ("torque", "angle", "motor_current", "spindle_temp")
    assert spec.correlations == (("torque", "angle"),)
    assert spec.windows == (20, 100)
    assert spec.features == ("mean", "std", "rms", "min", "max", "slope")
    assert training.station_spec({"pressure": 10}, 10).correlations == ()
    assert training.station_spec({"torque": 10}, 10, windows=[500, 100]).windows == (100, 500)


def test_the_default_windows_span_two_and_ten_seconds_of_the_stations_sampling():
    assert training.default_windows(10) == [20, 100]  # the default spec's
    assert training.default_windows(50) == [100, 500]
    assert training.default_windows(1_000) == [100, 500]  # bounded: the scorer pays per sample
    assert training.default_windows(5) == [20, 50]
    assert training.default_windows(None) == [20, 100]


def test_the_sampling_rate_is_read_from_the_stored_samples_not_the_pauses(station):
    store_normal(station, 1_500)  # 10 Hz
    store_normal(station, 1_500, first=30_000)  # the same after a pause of almost an hour

    rate = training.sampling_rate_hz(station_id=station.pk, start=at(0), end=at(40_000))

    assert rate == pytest.approx(10.0)
    assert training.sampling_rate_hz(station_id=station.pk, start=at(0), end=at(0)) is None


def test_a_rate_whose_interval_is_not_a_whole_millisecond_is_read_exactly(station):
    # 70 Hz as the simulator stamps it: intervals of 14 and 15 ms.
    ts = T0_MS + (np.arange(3_000) * 1000 / 70).astype(np.int64)
    store_samples(station.pk, ts, nut_runner(3_000, seed=2))

    rate = training.sampling_rate_hz(station_id=station.pk, start=at(0), end=at(40_000))

    assert rate == pytest.approx(70.0, rel=1e-3)
    with pytest.raises(InvalidInput, match="no numeric signal"):
        training.station_spec({}, 0)


def test_a_long_range_is_thinned_evenly_to_the_row_limit(station):
    store_normal(station, 4_000)
    spec = FeatureSpec.from_json({"signals": ["torque", "angle"], "windows": [10, 50]})

    dataset = training.build_dataset(
        station=station, start=at(0), end=at(3_999), spec=spec, max_rows=1_000
    )

    assert dataset.stride == 4
    assert dataset.features.shape == (988, spec.n_features)
    assert np.all(np.diff(dataset.ts_ms) == 4 * STEP_MS)


# -- labels -------------------------------------------------------------------------------------


def visit(unit, station, first: int, last: int) -> None:
    services.unit_arrive(unit=unit, station=station, at=at(first))
    services.unit_leave(unit=unit, station=station, at=at(last))


def test_labels_come_from_later_quality_events_and_alerts_resolved_as_true_defects(station):
    later, earlier, confirmed, good = UnitFactory.create_batch(4)
    for number, unit in enumerate((later, earlier, confirmed, good)):
        visit(unit, station, number * 100, number * 100 + 99)
    store_normal(station, 1_000, unit_ids=np.arange(1_000) // 100)
    steering = DefectCodeFactory(code="steering")
    cosmetic = DefectCodeFactory(code="cosmetic", name="Paint scratch")
    services.quality_event_record(
        unit=later, defect=steering, found_at=at(900), severity="major", source="inspection"
    )
    services.quality_event_record(  # found before the unit came: its samples here are good
        unit=earlier, defect=cosmetic, found_at=at(0), severity="minor", source="inspection"
    )
    alert = registry.raise_alert(
        station=station, ts=at(250), score=3.0, threshold=1.0, unit=confirmed
    )
    registry.resolve(alert=alert, feedback="true_defect")
    unitless = registry.raise_alert(station=station, ts=at(700), seq=700, score=3.0, threshold=1)
    registry.resolve(alert=unitless, feedback="true_defect")
    dismissed = registry.raise_alert(station=station, ts=at(450), seq=450, score=2, threshold=1)
    registry.resolve(alert=dismissed, feedback="false_alarm")

    labels = training.labels_for(station=station, start=at(0), end=at(999), window=20)

    ts = T0_MS + STEP_MS * np.arange(1_000)
    units = np.repeat([later.pk, earlier.pk, confirmed.pk, good.pk, -1], [100, 100, 100, 100, 600])
    defective = labels.of(ts, units)
    assert defective[0:100].all()  # later got a steering defect
    assert not defective[100:200].any()
    assert defective[200:300].all()  # its alert was confirmed
    assert not defective[300:681].any()
    assert defective[681:701].all()  # the window of the unit-less alert
    assert not defective[701:].any()
    assert labels.defective_units == {later.pk, earlier.pk, confirmed.pk}
    assert labels.deadline(earlier.pk) < int(at(100).timestamp() * 1000)
    assert labels.deadline(good.pk) is None

    only_steering = training.labels_for(
        station=station, start=at(0), end=at(999), window=20, defects=["steering"]
    )
    assert only_steering.defective_units == {later.pk, confirmed.pk}


# -- training -----------------------------------------------------------------------------------


def test_a_model_trained_on_a_normal_range_is_a_verified_candidate_of_its_signals(
    station, settings, tmp_path
):
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path
    store_normal(station, 6_000)
    seen: list[float] = []

    model = training.train_station_model(
        station=station,
        start=at(0),
        end=at(5_999),
        progress=lambda fraction, message: seen.append(fraction),
    )

    model.refresh_from_db()
    assert model.status == ModelStatus.CANDIDATE
    assert model.kind == "pca_t2q"
    assert (model.training_start, model.training_end) == (at(0), at(5_999))
    assert model.feature_spec["signals"] == ["torque", "angle", "motor_current", "spindle_temp"]
    assert model.feature_spec["windows"] == [20, 100]  # 2 s and 10 s at 10 Hz
    assert model.metrics["dataset"]["sampling_rate_hz"] == pytest.approx(10.0)
    # Every default statistic but kurtosis, over both windows, and the torque-angle correlation.
    assert model.feature_spec["features"] == list(training.TRAINING_FEATURES)
    assert "kurtosis" not in training.TRAINING_FEATURES
    assert len(model.feature_names) == 4 * 2 * 6 + 2
    data = model.metrics["dataset"]
    assert (data["samples_in_range"], data["rows"], data["defect_rows_left_out"]) == (
        6_000,
        5_901,
        0,
    )
    assert model.metrics["drift_reference"]["edges"]
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
    # What scorers load is what parity was checked on: it reproduces the training scores.
    spec = FeatureSpec.from_json(model.feature_spec)
    features = StationWindows(spec).push(
        T0_MS + STEP_MS * np.arange(6_000), nut_runner(6_000, seed=1)
    )[99:]
    scores = OnnxModel(model.load_artifact()).score(features)
    assert np.quantile(scores, 0.99) < model.threshold
    verify_parity(model.load_artifact(), features[:100], scores[:100])
    assert AuditEntry.objects.filter(object_id=str(model.pk), action="create").exists()


def test_unsupervised_training_leaves_out_the_units_known_to_be_defective(
    station, settings, tmp_path
):
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path
    units = UnitFactory.create_batch(10)
    for number, unit in enumerate(units):
        visit(unit, station, number * VISIT, number * VISIT + VISIT - 1)
    store_normal(station, 6_000, unit_ids=np.repeat([u.pk for u in units], VISIT))
    services.quality_event_record(
        unit=units[3],
        defect=DefectCodeFactory(),
        found_at=at(9_000),
        severity="major",
        source="inspection",
    )

    model = training.train_station_model(station=station, start=at(0), end=at(5_999))

    data = model.metrics["dataset"]
    assert data["defective_units"] == 1
    assert data["defect_rows_left_out"] == VISIT
    assert data["training_rows"] == data["rows"] - VISIT


def test_a_supervised_model_learns_the_defects_from_the_labels(station, settings, tmp_path):
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path
    count = 12_000
    drifting = tuple((first + 300, first + VISIT) for first in range(1_200, count, 2_400))
    values = nut_runner(count, seed=3, drifting=drifting)
    units = UnitFactory.create_batch(count // VISIT)
    for number, unit in enumerate(units):
        visit(unit, station, number * VISIT, number * VISIT + VISIT - 1)
    unit_ids = np.repeat([u.pk for u in units], VISIT)
    store_samples(station.pk, T0_MS + STEP_MS * np.arange(count), values, unit_ids=unit_ids)
    defect = DefectCodeFactory()
    for first, _last in drifting:
        services.quality_event_record(
            unit=units[first // VISIT],
            defect=defect,
            found_at=at(count + 10),
            severity="major",
            source="inspection",
        )

    model = training.train_station_model(
        station=station, start=at(0), end=at(count - 1), kind="supervised"
    )

    assert model.kind == "supervised"
    assert model.metrics["dataset"]["defect_rows"] == len(drifting) * VISIT
    spec = FeatureSpec.from_json(model.feature_spec)
    features = StationWindows(spec).push(T0_MS + STEP_MS * np.arange(count), values)
    scores = OnnxModel(model.load_artifact()).score(features)
    defective = np.zeros(count, dtype=bool)
    for first, last in drifting:
        defective[first - 300 : last] = True  # the whole visit of the unit
    late = np.zeros(count, dtype=bool)
    for first, last in drifting:
        late[first + 100 : last] = True  # the drift under way
    # The drifting stretches score far above the good units' samples (ranking, not the
    # threshold: the unit-level labels also mark the first half of each visit, before drift).
    ranked = roc_auc_score(late[late | ~defective], scores[late | ~defective])
    assert ranked > 0.95
    assert np.median(scores[late]) > model.threshold


def test_too_few_samples_are_refused_with_the_reason(station):
    store_normal(station, 300)

    with pytest.raises(InvalidInput, match=r"station ST5 has 300 samples .* at least 599"):
        training.train_station_model(station=station, start=at(0), end=at(10_000))
    with pytest.raises(InvalidInput, match=r"ends .* before it starts"):
        training.train_station_model(station=station, start=at(10), end=at(0))
    assert not ModelVersion.objects.exists()


def test_a_feature_spec_naming_signals_the_range_lacks_is_refused(station, tmp_path):
    store_normal(station, 2_000)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"signals": ["torque", "pressure"], "windows": [10]}))

    with pytest.raises(CommandError, match="signals pressure have no values at station ST5"):
        call_command(
            "foresight_train",
            *("--station", "ST5", "--start", at(0).isoformat(), "--end", at(1_999).isoformat()),
            *("--feature-spec", str(spec)),
        )


def test_a_supervised_model_without_labels_is_refused(station):
    store_normal(station, 2_000)

    with pytest.raises(InvalidInput, match="0 defect and"):
        training.train_station_model(station=station, start=at(0), end=at(1_999), kind="supervised")


# -- the command --------------------------------------------------------------------------------


def test_the_train_command_prints_progress_and_the_new_version_last(station, settings, tmp_path):
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path
    store_normal(station, 3_000)
    out = io.StringIO()

    call_command(
        "foresight_train",
        "--station",
        "ST5",
        "--start",
        at(0).isoformat().replace("+00:00", "Z"),
        "--end",
        at(2_999).replace(tzinfo=None).isoformat(),  # naive: UTC
        "--kind",
        "isolation_forest",
        stdout=out,
    )

    lines = out.getvalue().splitlines()
    model = ModelVersion.objects.get()
    assert lines[-1] == model.version
    assert model.kind == "isolation_forest"
    assert model.training_end == at(2_999)
    assert any("%" in line and "samples" in line for line in lines[:-1])
    assert f"registered candidate {model.version}" in lines[-2]


def test_the_train_command_names_what_is_wrong(station):
    store_normal(station, 100)
    arguments = ["--station", "ST5", "--start", "2026-11-20T06:00Z", "--end", "2026-11-20T07:00Z"]

    with pytest.raises(CommandError, match="unknown station 'NOPE'"):
        call_command("foresight_train", *arguments[:1], "NOPE", *arguments[2:])
    with pytest.raises(CommandError, match="'yesterday' is not an ISO 8601 instant"):
        call_command("foresight_train", *arguments[:3], "yesterday", *arguments[4:])
    with pytest.raises(CommandError, match="has 100 samples"):
        call_command("foresight_train", *arguments)


def test_the_train_command_explains_itself():
    text = TrainCommand().create_parser("manage.py", "foresight_train").format_help()

    assert "--station" in text
    assert "--kind" in text
    assert "the LAST line printed is the new model version" in " ".join(text.split())


# -- the Celery task ----------------------------------------------------------------------------


def test_the_training_task_reports_progress_through_the_result_backend(
    station, settings, tmp_path, monkeypatch
):
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path
    store_normal(station, 3_000)
    stored_states: list[tuple[str, dict]] = []
    update_state = train_model.update_state

    def update_and_read_back(*args, **kwargs):
        update_state(*args, **kwargs)
        result = AsyncResult(train_model.request.id)
        stored_states.append((result.state, result.info))

    monkeypatch.setattr(train_model, "update_state", update_and_read_back)

    outcome = train_model.apply(
        kwargs={"station": "ST5", "start": at(0).isoformat(), "end": at(2_999).isoformat()}
    ).get()

    assert outcome["status"] == "registered"
    assert ModelVersion.objects.get().version == outcome["version"]
    assert stored_states
    assert {state for state, _ in stored_states} == {"PROGRESS"}
    fractions = [info["fraction"] for _, info in stored_states]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert all(info["message"] for _, info in stored_states)


def test_a_refused_training_is_the_tasks_result_not_a_failure(station):
    outcome = train_model.apply(
        kwargs={"station": "ST5", "start": at(0).isoformat(), "end": at(100).isoformat()}
    ).get()

    assert outcome["status"] == "refused"
    assert "has 0 samples" in outcome["reason"]


def test_the_nightly_plan_retrains_each_station_with_enough_data_line_by_line(station):
    quiet = StationFactory(code="ST9", line=station.line)
    store_normal(station, 2_000)
    store_samples(quiet.pk, T0_MS + STEP_MS * np.arange(50), nut_runner(50, seed=2))

    plan = training.nightly_plan(now=at(2_000), min_samples=1_000)

    assert [(p["line"], p["station"], p["kind"], p["reason"]) for p in plan] == [
        (station.line.code, "ST5", "pca_t2q", "nightly")
    ]
    assert training.parse_instant(plan[0]["end"], name="end") == at(2_000)
    assert training.parse_instant(plan[0]["start"], name="start") == at(2_000) - dt.timedelta(
        hours=24
    )


def test_the_beat_schedule_retrains_nightly_and_checks_drift_hourly():
    from aegis.celery import app

    schedule = {entry["task"]: entry["schedule"] for entry in app.conf.beat_schedule.values()}
    assert schedule["foresight.retrain_lines"].hour == {2}
    assert schedule["foresight.drift_check"].minute == {7}
    assert len(schedule["foresight.drift_check"].hour) == 24
    assert {"foresight.retrain_lines", "foresight.drift_check", "foresight.train_model"} <= set(
        app.tasks
    )


# -- drift ----------------------------------------------------------------------------------------


@pytest.fixture
def production(station, settings, tmp_path):
    """A production model trained on 20 minutes of normal telemetry."""
    settings.FORESIGHT_ARTIFACT_DIR = tmp_path
    store_normal(station, 12_000)
    model = training.train_station_model(station=station, start=at(0), end=at(11_999))
    return registry.promote(version=model, to="production")


def test_an_hour_like_training_is_stable_and_a_shifted_one_drifts_and_asks_for_retraining(
    production, station
):
    first = 12_000
    normal = nut_runner(36_000, seed=5)
    store_samples(station.pk, T0_MS + STEP_MS * (first + np.arange(36_000)), normal)
    stable = drift.drift_check(model=production, now=at(first + 36_000 - 1))

    shifted = nut_runner(36_000, seed=6)
    shifted["torque"] = shifted["torque"] * 1.04
    store_samples(station.pk, T0_MS + STEP_MS * (first + 36_000 + np.arange(36_000)), shifted)
    drifted = drift.drift_check(model=production, now=at(first + 72_000 - 1))

    assert stable.status == "stable", stable
    assert stable.max_psi < drift.PSI_LIMIT
    assert drifted.status == "drift"
    assert drifted.retrain
    assert drifted.shifted[0]["psi"] > drift.PSI_LIMIT
    assert {row["feature"].split(".")[0] for row in drifted.shifted} == {"torque"}
    recorded = ModelVersion.objects.get(pk=production.pk).metrics["drift"]
    assert recorded["latest"]["status"] == "drift"
    assert [entry["status"] for entry in recorded["history"]] == ["drift", "stable"]
    assert training.parse_instant(drifted.retrain_end, name="end") == at(first + 72_000 - 1)


def test_drift_starts_no_second_retraining_while_a_recent_candidate_waits(production, station):
    shifted = nut_runner(36_000, seed=6)
    shifted["torque"] = shifted["torque"] * 1.04
    store_samples(station.pk, T0_MS + STEP_MS * (12_000 + np.arange(36_000)), shifted)
    candidate = training.train_station_model(station=station, start=at(0), end=at(11_999))
    ModelVersion.objects.filter(pk=candidate.pk).update(created_at=at(40_000))

    report = drift.drift_check(model=production, now=at(48_000 - 1))

    assert report.status == "drift"
    assert not report.retrain
    assert candidate.version in report.reason


def test_an_hour_without_production_is_skipped_not_called_drift(production):
    report = drift.drift_check(model=production, now=at(200_000))

    assert report.status == "skipped"
    assert "0 judged samples" in report.reason
    assert not report.retrain


def test_every_production_model_is_checked(production):
    reports = drift.drift_check_all(now=at(11_999))

    assert [(r.version, r.status) for r in reports] == [(production.version, "stable")]
    assert json.dumps([r.as_dict() for r in reports])
    assert not DefectAlert.objects.exists()
