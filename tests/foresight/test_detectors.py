"""Detectors: injected torque drift caught with thresholds from normal data alone, ONNX artifacts
that reproduce their Python models, corrupted artifacts refused, the fail-open baseline and alert
explanations, and the scoring speed."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from foresight.detectors import (
    DEFAULT_KIND,
    UNSUPERVISED_KINDS,
    BaselineScorer,
    DetectorError,
    InsufficientData,
    ModelLoadError,
    OnnxModel,
    ParityError,
    RunningBaseline,
    drift_shares,
    explain,
    population_stability_index,
    train,
    verify_parity,
)
from foresight.features import StationWindows, default_spec

SPEC = default_spec()
WINDOW = max(SPEC.windows)
DRIFT = slice(15_000, 18_000)  # the faulty stretch of the test stream


def tightening_station(count: int, *, seed: int, drifts: tuple[slice, ...] = ()) -> np.ndarray:
    """Features of a wheel-nut runner at 100 Hz. In each `drifts` stretch the torque drifts up
    to +8 % over 5 s and scatters three times as much, as under the bad EPS firmware."""
    rng = np.random.default_rng(seed)
    i = np.arange(count)
    cycle = 2.0 * np.sin(2 * np.pi * i / 700) + 0.7 * np.sin(2 * np.pi * i / 230 + seed)
    nominal = 40 + cycle + rng.normal(0, 0.3, count)
    torque = nominal.copy()
    for stretch in drifts:
        length = stretch.stop - stretch.start
        ramp = np.minimum(np.arange(length) / 500, 1.0)
        torque[stretch] = nominal[stretch] * (1 + 0.08 * ramp) + rng.normal(0, 0.6, length)
    values = {
        "torque": torque,
        "angle": 30 + 0.8 * (nominal - 40) + rng.normal(0, 0.2, count),
        "current": 4 + 0.1 * nominal + rng.normal(0, 0.05, count),
        "temperature": 35 + 0.5 * np.sin(2 * np.pi * i / 20_000) + rng.normal(0, 0.05, count),
    }
    return StationWindows(SPEC).push(1_763_800_000_000 + 10 * i, values)


@pytest.fixture(scope="module")
def normal_features():
    return tightening_station(30_000, seed=1)


@pytest.fixture(scope="module")
def drifting_features():
    return tightening_station(30_000, seed=2, drifts=(DRIFT,))


@pytest.fixture(scope="module")
def labelled_features():
    stretches = [slice(5_000, 7_000), slice(16_000, 18_000), slice(27_000, 29_000)]
    labels = np.zeros(40_000, dtype=int)
    for stretch in stretches:
        labels[stretch] = 1
    return tightening_station(40_000, seed=3, drifts=tuple(stretches)), labels


@pytest.fixture(scope="module")
def detectors(normal_features, labelled_features):
    trained = {kind: train(kind, normal_features) for kind in UNSUPERVISED_KINDS}
    trained["supervised"] = train("supervised", *labelled_features)
    return trained


# Share of the drifting samples (once the windows are in the drift) each kind flags: PCA T²/Q
# sees the broken torque-angle correlation at once; the isolation forest picks the few drifting
# features out of 58 at random and flags fewer samples, still raising the alert.
DRIFT_CAUGHT = {"pca_t2q": 0.95, "isolation_forest": 0.6}


@pytest.mark.parametrize("kind", UNSUPERVISED_KINDS)
def test_unsupervised_detector_flags_torque_drift_and_passes_normal_samples(
    kind, detectors, drifting_features
):
    detector = detectors[kind]
    scores = OnnxModel(detector.onnx).score(drifting_features)
    above = scores > detector.threshold

    in_drift = scores[DRIFT.start + WINDOW : DRIFT.stop]
    # Normal samples: windows that do not reach into the drift.
    normal = np.r_[above[WINDOW : DRIFT.start], above[DRIFT.stop + WINDOW :]]
    caught = float(np.mean(in_drift > detector.threshold))
    print(
        f"\n{kind}: threshold {detector.threshold:.4g}, drifting samples above {caught:.1%},"
        f" normal samples below {1 - normal.mean():.3%}"
    )
    assert np.median(in_drift) > detector.threshold  # the stretch as a whole scores above
    assert caught >= DRIFT_CAUGHT[kind]
    assert above[DRIFT.start : DRIFT.start + WINDOW].any()  # alert within one long window
    assert 1 - normal.mean() >= 0.995


def test_supervised_detector_learns_the_labelled_drift(detectors):
    detector = detectors["supervised"]
    unseen = tightening_station(30_000, seed=4, drifts=(DRIFT,))

    above = OnnxModel(detector.onnx).score(unseen) > detector.threshold

    caught = above[DRIFT.start + WINDOW : DRIFT.stop].mean()
    passed = 1 - np.r_[above[WINDOW : DRIFT.start], above[DRIFT.stop + WINDOW :]].mean()
    print(
        f"\nsupervised: threshold {detector.threshold:.4g}, drifting samples above {caught:.1%},"
        f" normal samples below {passed:.3%}"
    )
    assert caught >= 0.9
    assert passed >= 0.995
    assert detector.metrics["defect_rows"] == 6_000


def test_default_kind_is_an_unsupervised_detector():
    assert DEFAULT_KIND in UNSUPERVISED_KINDS


@pytest.mark.parametrize("kind", UNSUPERVISED_KINDS)
def test_unsupervised_threshold_comes_from_the_training_rows_alone(kind, normal_features):
    labels = np.random.default_rng(0).integers(0, 2, len(normal_features))

    unlabelled = train(kind, normal_features)
    labelled = train(kind, normal_features, labels)

    assert labelled.threshold == unlabelled.threshold
    assert labelled.sha256 == unlabelled.sha256
    assert unlabelled.metrics["held_out_above_threshold"] < 0.001
    assert unlabelled.metrics["held_out_rows"] == 6_000  # every fifth block of 500 rows


@pytest.mark.parametrize("kind", ["pca_t2q", "isolation_forest", "supervised"])
def test_onnx_artifact_reproduces_the_python_model(kind, detectors, drifting_features):
    detector = detectors[kind]
    held_out = drifting_features[::7]  # rows the model never saw, normal and drifting

    verify_parity(detector.onnx, detector.parity_features, detector.parity_scores)
    verify_parity(detector.onnx, held_out, detector.python_scores(held_out))
    assert detector.metrics["parity_max_abs_diff"] < 1e-4
    model = OnnxModel(detector.onnx)
    assert model.kind == kind
    assert model.n_features == SPEC.n_features


def test_parity_holds_for_a_feature_that_barely_moves_at_a_high_level(normal_features):
    features = normal_features[:10_000].copy()
    # A supply voltage of 400 V +- 0.1 mV: float32 rounding of its mean is a large part of its std.
    features[:, 7] = 400 + np.random.default_rng(0).normal(0, 1e-4, len(features))

    detector = train("pca_t2q", features)  # verifies parity, raising ParityError

    assert detector.metrics["parity_max_abs_diff"] < 1e-4


def _weights_in_file(artifact: bytes) -> list[int]:
    """Offsets in the serialized artifact of the float32 values of its largest float array:
    an initializer (PCA loadings, stored packed) or a float attribute (tree thresholds, stored
    one tagged value after another)."""
    model = onnx.load_from_string(artifact)
    arrays = [(numpy_helper.to_array(t).astype("<f4").ravel(), 4) for t in model.graph.initializer]
    for node in model.graph.node:
        arrays += [(np.asarray(a.floats, "<f4"), 5) for a in node.attribute if len(a.floats)]
    values, stride = max(arrays, key=lambda pair: pair[0].size)
    tag = b"" if stride == 4 else b"\x3d"  # field 7 (floats), 32-bit wire type
    anchor = b"".join(tag + value.tobytes() for value in values[:8])
    start = artifact.find(anchor) + len(tag)
    assert start >= len(tag)
    return [start + stride * i for i in range(values.size)]


@pytest.mark.parametrize("kind", ["pca_t2q", "isolation_forest", "supervised"])
def test_flipped_bytes_in_the_weights_fail_the_parity_check(kind, detectors):
    detector = detectors[kind]
    corrupted = bytearray(detector.onnx)
    for value in _weights_in_file(detector.onnx)[::16]:
        corrupted[value + 3] ^= 0x01  # an exponent bit: the weight x 4 or / 4

    with pytest.raises(ParityError, match="differs from the Python model"):
        verify_parity(bytes(corrupted), detector.parity_features, detector.parity_scores)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda a: a[: len(a) // 2], id="truncated"),
        pytest.param(lambda a: b"\xff" * 16 + a[16:], id="header-overwritten"),
        pytest.param(lambda a: b"", id="empty"),
    ],
)
def test_an_artifact_that_does_not_load_fails_with_a_clear_error(damage, detectors):
    detector = detectors["pca_t2q"]
    broken = damage(detector.onnx)

    with pytest.raises(ModelLoadError, match="does not load"):
        OnnxModel(broken)
    with pytest.raises(ParityError, match="does not load"):
        verify_parity(broken, detector.parity_features, detector.parity_scores)


def test_another_models_artifact_for_the_same_inputs_fails_the_parity_check(
    detectors, drifting_features
):
    detector = detectors["pca_t2q"]
    other = train("pca_t2q", drifting_features[:12_000])  # other data, same features

    for impostor in (other.onnx, detectors["isolation_forest"].onnx):
        with pytest.raises(ParityError, match="differs"):
            verify_parity(impostor, detector.parity_features, detector.parity_scores)


def test_an_onnx_model_with_other_inputs_is_not_a_detector():
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["X", "axes"], ["score"], keepdims=0)],
        "not_aegis",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    with pytest.raises(ModelLoadError, match="'features'"):
        OnnxModel(model.SerializeToString())


def test_missing_features_score_as_their_training_mean(detectors, drifting_features):
    detector = detectors["pca_t2q"]
    model = OnnxModel(detector.onnx)
    rows = drifting_features[1_000:1_010].copy()
    rows[:, [0, 5, 30]] = np.nan
    filled = rows.copy()
    filled[:, [0, 5, 30]] = np.asarray(detector.feature_mean, dtype=np.float32)[[0, 5, 30]]

    np.testing.assert_array_equal(model.score(rows), model.score(filled))
    np.testing.assert_allclose(detector.python_scores(rows), model.score(rows), rtol=1e-4)
    assert np.isfinite(model.score(drifting_features[:1])).all()  # the first sample is all NaN


def test_scorer_session_is_single_threaded(detectors):
    options = OnnxModel(detectors["pca_t2q"].onnx)._session.get_session_options()

    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1


def test_training_reports_progress_up_to_done(normal_features):
    calls = []

    train("pca_t2q", normal_features[:5_000], progress=lambda f, m: calls.append((f, m)))

    fractions = [fraction for fraction, _ in calls]
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert len(calls) >= 4
    assert all(isinstance(message, str) and message for _, message in calls)


def test_detector_refuses_what_it_cannot_learn_from(normal_features):
    with pytest.raises(InsufficientData, match="needs labels"):
        train("supervised", normal_features)
    few_defects = np.zeros(len(normal_features), dtype=int)
    few_defects[:5] = 1
    with pytest.raises(InsufficientData, match="at least 20 of each"):
        train("supervised", normal_features, few_defects)
    with pytest.raises(InsufficientData, match="training rows"):
        train("pca_t2q", normal_features[:100])
    with pytest.raises(DetectorError, match="unknown detector kind"):
        train("crystal_ball", normal_features)


def test_baseline_scores_the_largest_z_and_explains_it():
    mean, std = [10.0, 0.0, 5.0], [2.0, 1.0, 0.5]
    names = ["torque.mean@20", "angle.std@20", "corr(torque,angle)@20"]
    baseline = BaselineScorer(mean, std, z_limit=6.0)
    sample = np.array([[34.0, 1.0, np.nan]], dtype=np.float32)  # torque 12 std above

    scores = baseline.score(sample)
    explanation = explain(sample[0], mean, std, names, top=2)

    assert scores[0] == pytest.approx(2.0)
    assert baseline.threshold == 1.0
    assert [e["feature"] for e in explanation] == ["torque.mean@20", "angle.std@20"]
    assert explanation[0]["signal"] == "torque"
    assert explanation[0]["z"] == pytest.approx(12.0)
    assert explanation[0]["share"] == pytest.approx(144 / 145)
    assert explanation[1]["share"] == pytest.approx(1 / 145)
    full = explain(sample[0], mean, std, names)
    assert full[-1]["value"] is None  # the missing feature, z 0
    json.dumps(full)  # goes into the alert as is


def test_explanation_of_a_drift_alert_points_at_torque(detectors, drifting_features):
    detector = detectors["pca_t2q"]
    sample = drifting_features[DRIFT.start + 2_000]

    explanation = explain(sample, detector.feature_mean, detector.feature_std, SPEC.names, top=3)

    everything = explain(sample, detector.feature_mean, detector.feature_std, SPEC.names, top=58)
    torque_share = sum(e["share"] for e in everything if e["signal"].startswith("torque"))

    assert [e["signal"] for e in explanation] == ["torque,angle", "torque", "torque"]
    assert torque_share > 0.6
    assert sum(e["share"] for e in everything) == pytest.approx(1.0)


def test_running_baseline_learns_normal_then_flags_an_outlier(normal_features):
    baseline = RunningBaseline(SPEC.n_features, warmup=1_000)

    warming = baseline.score(normal_features[:1_000])
    normal = np.concatenate(
        [
            baseline.score(normal_features[start : start + 500])
            for start in range(1_000, 20_000, 500)
        ]
    )
    outlier = normal_features[20_000:20_001].copy()
    outlier[0, 3] += 100 * baseline.std[3]  # torque.min@20 far out

    assert (warming == 0).all()
    assert np.mean(normal <= 1.0) > 0.995  # the slow temperature cycle is learnt as it comes
    assert baseline.score(outlier)[0] > 1.0


def test_running_baseline_does_not_learn_a_fault():
    rng = np.random.default_rng(5)
    count = 8_000
    values = {"torque": rng.normal(40, 0.4, count), "angle": rng.normal(30, 0.6, count)}
    values["torque"][3_000:3_500] += 6.0  # a torque step for 5 s
    windows = StationWindows(SPEC)
    baseline = RunningBaseline(SPEC.n_features)
    scores = np.concatenate(
        [
            baseline.score(
                windows.push(
                    np.arange(start, start + 500),
                    {k: v[start : start + 500] for k, v in values.items()},
                )
            )
            for start in range(0, count, 500)
        ]
    )

    assert (scores[3_000:3_500] > 1.0).all()  # every faulty sample, batch after batch
    after = scores[3_500 + WINDOW :]  # windows clear of the fault
    assert np.mean(after <= 1.0) >= 0.995
    torque_mean = SPEC.names.index("torque.mean@20")
    assert baseline.mean[torque_mean] == pytest.approx(40, abs=0.05)  # not pulled up by the step


def test_psi_flags_a_shifted_feature_distribution(detectors, normal_features, drifting_features):
    reference = detectors["pca_t2q"].metrics["drift_reference"]
    edges = np.asarray(reference["edges"]).T

    same = population_stability_index(
        reference["shares"], drift_shares(normal_features[10_000:20_000], edges)
    )
    shifted = population_stability_index(
        reference["shares"], drift_shares(drifting_features[DRIFT], edges)
    )

    torque_mean = SPEC.names.index("torque.mean@100")
    assert same[torque_mean] < 0.1
    assert shifted[torque_mean] > 0.25


def test_onnx_scoring_time_per_thousand_rows(detectors, drifting_features):
    """Print the time to score a batch of 1,000 rows per kind (docs/foresight.md)."""
    batch = np.ascontiguousarray(drifting_features[5_000:6_000])
    timings = {}
    for kind, detector in detectors.items():
        model = OnnxModel(detector.onnx)
        model.score(batch)  # warm up
        runs = []
        for _ in range(30):
            started = time.perf_counter()
            model.score(batch)
            runs.append(time.perf_counter() - started)
        timings[kind] = 1000 * float(np.median(runs))
    summary = ", ".join(f"{kind} {ms:.2f}" for kind, ms in timings.items())
    print(f"\nONNX, 1,000 rows x {SPEC.n_features} features, one thread, median ms: {summary}")
    assert max(timings.values()) < 100
