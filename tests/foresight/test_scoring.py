"""A station's scoring, as the live scorer and the backtest run it: one alert per episode,
opened only after the on-delay and named after the sample that crossed, whatever the batching;
shadows that score and never alert, fail-open to the baseline, swaps between batches, and
score rows PostgreSQL reads back exactly."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from django.db import connection

from foresight.detectors import BaselineScorer, OnnxModel, train
from foresight.features import FeatureSpec, StationWindows
from foresight.models import BASELINE_MODEL_VERSION_ID
from foresight.scoring import (
    CLEAR_AFTER,
    LoadedModel,
    ScoreRows,
    StationScorer,
    baseline_spec,
    on_delay,
)

SPEC = FeatureSpec.from_json(
    {
        "version": 1,
        "signals": ["torque", "angle"],
        "windows": [10, 40],
        "features": ["mean", "std", "min", "max", "slope"],
        "correlations": [["torque", "angle"]],
    }
)
T0 = 1_763_800_000_000


def normal(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"torque": rng.normal(40.0, 0.4, n), "angle": rng.normal(30.0, 0.6, n)}


@pytest.fixture(scope="module")
def detector():
    values = normal(6_000)
    features = StationWindows(SPEC).push(T0 + np.arange(6_000), values)
    return train("pca_t2q", features[40:])  # full windows only


def loaded(detector, model_id: int = 7, *, onnx: OnnxModel | None = None) -> LoadedModel:
    return LoadedModel(
        id=model_id,
        version=f"v{model_id}",
        threshold=detector.threshold,
        spec=SPEC,
        names=SPEC.names,
        feature_mean=detector.feature_mean,
        feature_std=detector.feature_std,
        onnx=onnx or OnnxModel(detector.onnx),
        fallback=BaselineScorer(detector.feature_mean, detector.feature_std),
    )


def feed(scorer: StationScorer, values: dict[str, np.ndarray], start: int = 0, batch: int = 500):
    """Push `values` in batches of `batch` samples; every batch's result, in order."""
    n = len(next(iter(values.values())))
    results = []
    for first in range(0, n, batch):
        part = {name: column[first : first + batch] for name, column in values.items()}
        count = len(part["torque"])
        ts = T0 + start + first + np.arange(count)
        raw = [{name: float(part[name][i]) for name in part} for i in range(count)]
        results.append(scorer.score(ts, np.zeros(count, dtype=np.int64), part, raw))
    return results


def with_drift(n: int, start: int, end: int, step: float) -> dict[str, np.ndarray]:
    values = normal(n, seed=2)
    values["torque"][start:end] += step
    return values


def test_a_sustained_fault_raises_one_alert_with_its_torque_and_explanation(detector):
    scorer = StationScorer(5)
    scorer.use(loaded(detector), [])
    results = feed(scorer, with_drift(4_000, 2_000, 3_000, 4.0))

    alerts = [alert for result in results for alert in result.alerts]
    assert len(alerts) == 1
    alert = alerts[0]
    assert 2_000 <= alert.ts_ms - T0 < 2_040  # within a window of the fault's start
    assert alert.score >= alert.threshold == detector.threshold
    assert alert.model.version == "v7"
    assert alert.triggering["torque"] > 42  # the triggering sample's own values
    assert alert.explanation[0]["signal"] == "torque"
    assert sum(item["share"] for item in alert.explanation) <= 1.0 + 1e-9
    assert all(result.source == "model" for result in results)


def test_a_fault_that_clears_and_returns_is_two_episodes():
    values = with_drift(6_000, 1_000, 1_500, 6.0)
    values["torque"][4_000:4_500] += 6.0
    scorer = StationScorer(5, signals=["torque", "angle"], baseline_alerts=True)
    results = feed(scorer, values)
    alerts = [alert for result in results for alert in result.alerts]
    # The running baseline (no model) learns the first 1,000 samples, then sees two episodes.
    assert [alert.ts_ms - T0 for alert in alerts] == pytest.approx([1_000, 4_000], abs=40)
    assert all(alert.model is None for alert in alerts)


def test_a_score_wobbling_around_the_threshold_stays_one_episode(detector):
    scorer = StationScorer(5)
    threshold = detector.threshold
    opening = np.full(3, threshold * 1.1)
    wobble = np.tile([threshold * 1.1, threshold * 0.9], 200)  # never below 0.8 of the threshold
    assert scorer._episodes(np.r_[opening, wobble], threshold, 3) == [(0, 2)]
    quiet = np.full(CLEAR_AFTER, threshold * 0.5)
    assert scorer._episodes(quiet, threshold, 3) == []
    assert not scorer.in_episode  # cleared after CLEAR_AFTER quiet samples
    assert scorer._episodes(np.full(3, threshold * 2), threshold, 3) == [(0, 2)]


def test_crossings_shorter_than_the_on_delay_open_no_episode(detector):
    scorer = StationScorer(5)
    threshold = detector.threshold
    fleeting = np.full(1_000, threshold * 0.5)
    fleeting[100] = fleeting[300:302] = fleeting[500:504] = threshold * 3  # 1, 2 and 4 samples

    assert scorer._episodes(fleeting, threshold, 5) == []
    assert not scorer.in_episode
    fleeting[700:705] = threshold * 3  # five in a row: the on-delay is over at the fifth
    assert scorer._episodes(fleeting, threshold, 5) == [(700, 704)]


def test_the_on_delay_is_a_quarter_of_the_shortest_window():
    assert on_delay(SPEC) == 2  # windows of 10 and 40 samples
    assert on_delay(FeatureSpec(signals=("torque",), windows=(100, 20))) == 5
    assert on_delay(FeatureSpec(signals=("torque",), windows=(100, 500))) == 25
    assert on_delay(FeatureSpec(signals=("torque",), windows=(3,))) == 2


def alerts_of(results) -> list[tuple[int, int, int, float]]:
    return [
        (a.ts_ms - T0, a.raised_ts_ms - T0, a.seq, a.triggering["torque"])
        for r in results
        for a in r.alerts
    ]


@pytest.mark.parametrize("batch", [1, 7, 500, 2_001, 4_000])
def test_an_alert_names_the_sample_that_crossed_however_the_samples_are_batched(detector, batch):
    # One sample ten times its torque, as bench_alerts injects, on the last sample of the first
    # 2,001-sample batch: its windows keep the score up for a whole short window.
    values = normal(4_000, seed=5)
    values["torque"][2_000] *= 10

    scorer = StationScorer(5)
    scorer.use(loaded(detector), [])
    alerts = alerts_of(feed(scorer, values, batch=batch))

    assert len(alerts) == 1
    first, raised, _seq, torque = alerts[0]
    assert first == 2_000  # the injected sample itself, even when raised in a later batch
    assert raised == first + on_delay(SPEC) - 1
    assert torque == values["torque"][2_000]


def test_shadow_models_score_every_sample_and_raise_nothing(detector):
    scorer = StationScorer(5)
    scorer.use(None, [loaded(detector, 8)])
    results = feed(scorer, with_drift(3_000, 1_500, 2_500, 4.0))
    for result in results:
        models = {(model_id, shadow) for model_id, shadow, _ in result.by_model}
        assert models == {(BASELINE_MODEL_VERSION_ID, False), (8, True)}
    shadow_scores = np.concatenate([r.by_model[1][2] for r in results])
    assert (shadow_scores[1_600:2_400] >= detector.threshold).mean() > 0.9
    # Alerts come from production (here the baseline), never from the shadow.
    assert all(a.model is None for r in results for a in r.alerts)


class Exploding:
    """A model whose every call fails, as a corrupt or mismatched artifact would."""

    def score(self, features):
        raise RuntimeError("onnxruntime: invalid input shape")


def test_a_model_that_fails_every_call_falls_back_to_its_baseline_and_still_alerts(detector):
    failures = []
    scorer = StationScorer(5, on_error=lambda version, error: failures.append(version))
    scorer.use(loaded(detector, onnx=Exploding()), [])
    values = normal(2_000, seed=3)
    values["torque"][1_000:1_200] += 40.0  # far outside training: many z above the baseline's
    results = feed(scorer, values)

    assert all(result.source == "fallback" for result in results)
    assert sum(result.errors for result in results) == len(results) == len(failures)
    for result in results:  # every sample still has one production-side score
        ((model_id, shadow, scores),) = result.by_model
        assert (model_id, shadow) == (BASELINE_MODEL_VERSION_ID, False)
        assert len(scores) == len(result.ts_ms)
    alerts = [alert for result in results for alert in result.alerts]
    assert len(alerts) == 1
    assert alerts[0].model is None
    assert alerts[0].threshold == 1.0


def test_a_swap_between_batches_scores_each_sample_with_exactly_one_production_model(detector):
    scorer = StationScorer(5)
    first, second = loaded(detector, 7), loaded(detector, 9)
    scorer.use(first, [])
    before = feed(scorer, normal(1_000), batch=250)
    scorer.use(second, [])
    after = feed(scorer, normal(1_000, seed=4), start=1_000, batch=250)
    ids = [result.by_model[0][0] for result in before + after]
    assert ids == [7] * 4 + [9] * 4
    # The windows carried over: the second model's first batch has full windows.
    assert not np.isnan(after[0].by_model[0][2]).any()


def test_the_baseline_spec_follows_the_stations_own_signals_in_trainings_order():
    # The default spec's signals first, in its order, then the others by name.
    spec = baseline_spec(["pressure", "flow", "torque", "angle"])
    assert spec.signals == ("torque", "angle", "flow", "pressure")
    assert spec.correlations == (("torque", "angle"),)
    assert baseline_spec(None).signals == ("torque", "angle", "current", "temperature")


@pytest.mark.django_db
def test_score_rows_are_read_back_by_postgresql_exactly():
    scored = StationScorer(5, signals=["torque", "angle"]).score(
        T0 + np.arange(3),
        np.array([0, 1, 2]),
        {"torque": np.array([1.0, 2.0, 3.0]), "angle": np.array([1.0, 1.0, 1.0])},
        [{}, {}, {}],
    )
    scored.by_model = [(0, False, np.array([0.25, 1.5, 3.0])), (11, True, np.array([1, 2, 3.0]))]
    rows = ScoreRows()
    rows.add(42, scored)
    assert len(rows) == 6
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE score_copy (LIKE foresight_score INCLUDING ALL)")
        with cursor.connection.cursor().copy(
            "COPY score_copy (station_id, ts, seq, model_version_id, score, shadow) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.write(rows.payload())
        cursor.execute(
            "SELECT station_id, ts, seq, model_version_id, score, shadow FROM score_copy "
            "ORDER BY model_version_id, seq"
        )
        found = cursor.fetchall()
    at = [dt.datetime.fromtimestamp((T0 + i) / 1000, dt.UTC) for i in range(3)]
    assert found == [
        (42, at[0], 0, 0, 0.25, False),
        (42, at[1], 1, 0, 1.5, False),
        (42, at[2], 2, 0, 3.0, False),
        (42, at[0], 0, 11, 1.0, True),
        (42, at[1], 1, 11, 2.0, True),
        (42, at[2], 2, 11, 3.0, True),
    ]


def test_a_station_without_a_model_is_scored_but_raises_nothing_unless_asked():
    values = with_drift(3_000, 1_500, 2_000, 6.0)
    quiet = feed(StationScorer(5, signals=["torque", "angle"]), values)
    assert [a for r in quiet for a in r.alerts] == []
    assert sum(len(r.by_model[0][2]) for r in quiet) == 3_000  # every sample still scored
    loud = feed(StationScorer(5, signals=["torque", "angle"], baseline_alerts=True), values)
    assert len([a for r in loud for a in r.alerts]) == 1
