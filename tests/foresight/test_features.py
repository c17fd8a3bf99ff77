"""Window features: what each feature means, the same features however samples are batched,
carried-forward values, and the speed the live scorer needs."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import time
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foresight.features import (
    DEFAULT_SPEC_JSON,
    FeatureSpec,
    FeatureSpecError,
    StationWindows,
    dataset,
    default_spec,
    feature_signal,
)

SPEC = FeatureSpec.from_json(
    {
        "version": 1,
        "signals": ["torque", "angle", "current"],
        "windows": [5, 12],
        "features": ["mean", "std", "rms", "min", "max", "slope", "kurtosis"],
        "correlations": [["torque", "angle"]],
    }
)


def station_samples(count: int, *, seed: int = 1, start_ms: int = 1_763_800_000_000):
    """A tightening station at 100 Hz: torque cycles, angle follows it, current is sometimes
    missing, and some stretches hold a value exactly (a PLC result register)."""
    rng = np.random.default_rng(seed)
    ts = start_ms + 10 * np.arange(count, dtype=np.int64)
    phase = np.arange(count) / 40.0
    torque = 40 + 3 * np.sin(phase) + rng.normal(0, 0.3, count)
    torque[count // 3 : count // 3 + 30] = 42.5  # held result
    angle = 30 + 0.8 * (torque - 40) + rng.normal(0, 0.2, count)
    current = 4 + 0.1 * torque + rng.normal(0, 0.05, count)
    current[rng.random(count) < 0.1] = np.nan  # samples without the signal
    current[:7] = np.nan  # the signal starts late
    return ts, {"torque": torque, "angle": angle, "current": current}


def push_in_parts(spec: FeatureSpec, ts, values, cuts, dtype=np.float32) -> np.ndarray:
    windows = StationWindows(spec)
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < len(ts)}), len(ts)]
    parts = [
        windows.push(ts[a:b], {name: column[a:b] for name, column in values.items()}, dtype=dtype)
        for a, b in itertools.pairwise(bounds)
    ]
    return np.concatenate(parts)


def test_feature_names_follow_signals_windows_features_then_correlations():
    spec = default_spec()

    assert spec.to_json() == DEFAULT_SPEC_JSON
    assert spec.names[:3] == ["torque.mean@20", "torque.std@20", "torque.rms@20"]
    assert spec.names[7] == "torque.mean@100"
    assert spec.names[14] == "angle.mean@20"
    assert spec.names[-2:] == ["corr(torque,angle)@20", "corr(torque,angle)@100"]
    assert spec.n_features == 4 * 2 * 7 + 2
    assert feature_signal("corr(torque,angle)@20") == "torque,angle"
    assert feature_signal("temperature.slope@100") == "temperature"


def test_spec_survives_a_json_round_trip():
    assert FeatureSpec.from_json(SPEC.to_json()) == SPEC


@pytest.mark.parametrize(
    "broken",
    [
        {"windows": [1, 20]},
        {"windows": [20, 20]},
        {"features": ["mean", "median"]},
        {"correlations": [["torque", "pressure"]]},
        {"signals": []},
        {"version": 2},
        {"colour": "red"},
    ],
)
def test_spec_that_cannot_be_computed_is_refused(broken):
    with pytest.raises(FeatureSpecError):
        FeatureSpec.from_json({**DEFAULT_SPEC_JSON, **broken})


def reference_features(spec: FeatureSpec, values: dict[str, np.ndarray], row: int) -> list[float]:
    """The features of one sample computed the obvious, slow way."""
    filled = {}
    for name in spec.signals:
        column = values[name].astype(float).copy()
        for i in range(1, len(column)):
            if np.isnan(column[i]):
                column[i] = column[i - 1]
        filled[name] = column

    def window_of(name, window):
        history = filled[name][: row + 1]
        history = history[~np.isnan(history)]
        return history[-window:]

    out = []
    for name in spec.signals:
        for window in spec.windows:
            x = window_of(name, window)
            if len(x) < 2:
                out += [np.nan] * len(spec.features)
                continue
            d = x - x.mean()
            flat = x.std() < 1e-9 * (abs(x.mean()) + 1)
            stats = {
                "mean": x.mean(),
                "std": 0.0 if flat else x.std(),
                "rms": np.sqrt(np.mean(x * x)),
                "min": x.min(),
                "max": x.max(),
                "slope": 0.0 if flat else np.polyfit(np.arange(len(x)), x, 1)[0],
                "kurtosis": 0.0 if flat else np.mean(d**4) / np.mean(d**2) ** 2 - 3,
            }
            out += [stats[f] for f in spec.features]
    for a, b in spec.correlations:
        for window in spec.windows:
            xa, xb = window_of(a, window), window_of(b, window)
            size = min(len(xa), len(xb))
            if size < 2:
                out.append(np.nan)
                continue
            xa, xb = xa[-size:], xb[-size:]
            out.append(0.0 if min(xa.std(), xb.std()) < 1e-9 else np.corrcoef(xa, xb)[0, 1])
    return out


def test_features_are_the_textbook_statistics_of_each_window():
    ts, values = station_samples(200)

    features = StationWindows(SPEC).push(ts, values)

    assert features.shape == (200, SPEC.n_features)
    assert features.dtype == np.float32
    for row in [0, 1, 3, 4, 8, 11, 12, 50, 66, 70, 90, 199]:
        np.testing.assert_allclose(
            features[row],
            reference_features(SPEC, values, row),
            rtol=2e-5,
            atol=2e-5,
            err_msg=f"row {row}",
        )


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=249), max_size=25))
def test_features_do_not_depend_on_how_samples_are_batched(cuts):
    ts, values = station_samples(250, seed=7)

    in_one_push = StationWindows(SPEC).push(ts, values)
    in_parts = push_in_parts(SPEC, ts, values, cuts)

    assert np.array_equal(in_one_push, in_parts, equal_nan=True)


def test_sample_by_sample_equals_one_push_with_the_default_spec():
    spec = default_spec()
    ts, values = station_samples(260, seed=3)
    values = {"torque": values["torque"], "angle": values["angle"], "current": values["current"]}
    # "temperature" never arrives: its features stay NaN, the rest is computed.

    in_one_push = StationWindows(spec).push(ts, values)
    one_by_one = push_in_parts(spec, ts, values, range(1, 260))

    assert np.array_equal(in_one_push, one_by_one, equal_nan=True)
    temperature = [i for i, name in enumerate(spec.names) if name.startswith("temperature.")]
    assert np.isnan(in_one_push[:, temperature]).all()
    # current starts at the 8th sample, so every other feature exists from the 9th on
    assert not np.isnan(np.delete(in_one_push[8:], temperature, axis=1)).any()


def test_long_chunked_stream_matches_one_push():
    # More rows than one reduction chunk, so chunk boundaries are crossed too.
    ts, values = station_samples(5_000, seed=11)
    small_chunks = StationWindows(SPEC, chunk_rows=7)

    assert np.array_equal(
        StationWindows(SPEC).push(ts, values),
        small_chunks.push(ts, values),
        equal_nan=True,
    )


def test_short_windows_use_the_samples_there_are():
    spec = FeatureSpec(signals=("torque",), windows=(4,), features=("mean", "std", "min"))
    windows = StationWindows(spec)

    first = windows.push(np.array([0]), {"torque": np.array([10.0])})
    later = windows.push(np.array([1, 2, 3, 4]), {"torque": np.array([12.0, 14.0, 16.0, 18.0])})

    assert np.isnan(first).all()  # a window of one sample has no spread
    np.testing.assert_allclose(later[:, 0], [11, 12, 13, 15])  # 2, 3, 4 then 4 samples
    stds = [1, np.std([10, 12, 14]), np.std([10, 12, 14, 16]), np.std([12, 14, 16, 18])]
    np.testing.assert_allclose(later[:, 1], stds, rtol=1e-6)
    np.testing.assert_allclose(later[:, 2], [10, 10, 10, 12])


def test_missing_values_carry_the_last_value_forward():
    spec = FeatureSpec(signals=("torque", "angle"), windows=(3,), features=("mean", "max"))
    windows = StationWindows(spec)

    features = windows.push(
        np.arange(5),
        {"torque": np.array([1.0, np.nan, 3.0, np.nan, np.nan]), "angle": np.full(5, np.nan)},
    )
    next_push = windows.push(np.array([5]), {"angle": np.array([7.0])})  # no torque at all

    np.testing.assert_allclose(features[1:, 0], [1, 5 / 3, 7 / 3, 3])  # [1,1], [1,1,3], …
    assert np.isnan(features[:, 2:]).all()  # angle: nothing before its first value
    np.testing.assert_allclose(next_push[0, :2], [3, 3])  # torque held at 3
    assert np.isnan(next_push[0, 2:]).all()  # one angle value is not a window yet


def test_a_held_value_is_flat_not_noise():
    spec = FeatureSpec(
        signals=("torque", "angle"),
        windows=(10,),
        features=("std", "slope", "kurtosis"),
        correlations=(("torque", "angle"),),
    )
    count = 30
    values = {"torque": np.full(count, 43.21), "angle": np.linspace(0, 1, count)}

    features = StationWindows(spec).push(np.arange(count), values)

    assert (features[9:, :3] == 0).all()  # torque: std, slope, kurtosis
    assert (features[9:, 6] == 0).all()  # no correlation with a constant
    np.testing.assert_allclose(features[9:, 4], 1 / 29, rtol=1e-5)  # angle slope per sample


def test_dataset_from_telemetry_rows_equals_live_pushes():
    ts, values = station_samples(600, seed=5)
    rows = []
    for i, stamp in enumerate(ts):
        signals = {name: float(column[i]) for name, column in values.items()}
        signals = {k: v for k, v in signals.items() if not np.isnan(v)}  # absent, not NaN
        if i % 50 == 0:
            signals["torque"] = "n/a"  # not a number: carried forward like a missing value
            values["torque"][i] = np.nan
        when = dt.datetime.fromtimestamp(stamp / 1000, tz=dt.UTC)
        rows.append((when, signals))

    dataset_ts, features = dataset(SPEC, iter(rows), batch_rows=97)

    assert np.array_equal(dataset_ts, ts)
    live = push_in_parts(SPEC, ts, values, range(10, 600, 10))
    assert np.array_equal(features, live, equal_nan=True)


def test_features_of_twenty_stations_keep_up_with_the_plant():
    """Print samples/s for 20 stations x 4 signals x windows [20, 100] (docs/foresight.md)."""
    spec = default_spec()
    stations = 20
    rng = np.random.default_rng(0)
    results = {}
    for batch in (50, 500):
        per_station = 20 * batch if batch < 500 else 5_000
        streams = []
        for station in range(stations):
            _, values = station_samples(per_station, seed=station)
            values["temperature"] = 35 + rng.normal(0, 0.1, per_station)
            streams.append(values)
        windows = [StationWindows(spec) for _ in range(stations)]
        ts = np.arange(per_station, dtype=np.int64)
        started = time.perf_counter()
        for start in range(0, per_station, batch):
            for station in range(stations):
                part = {k: v[start : start + batch] for k, v in streams[station].items()}
                windows[station].push(ts[start : start + batch], part)
        elapsed = time.perf_counter() - started
        results[batch] = stations * per_station / elapsed
    print(
        f"\nfeatures: {spec.n_features} per sample; 20 stations, pushes of 50 samples:"
        f" {results[50]:,.0f} samples/s; pushes of 500: {results[500]:,.0f} samples/s"
    )
    # The scorer's budget is 20,000 samples/s on two shared cores: features alone must leave
    # most of a core for the rest (a lenient floor, so a busy CI machine does not flake).
    assert results[500] > 20_000


def exact_window_features(
    x: np.ndarray, features: Sequence[str]
) -> tuple[list[float], list[float]]:
    """The features of one window and the scale each is judged on, to within rounding.

    Corrected two-pass with exactly rounded sums: deviations from a value of the window (exact
    for samples close to it), their correctly rounded mean, then the moments about that mean
    corrected for what is left of it. Plain two-pass in float64 loses the last digits of the
    kurtosis of a signal that barely moves around a high level (around 1e-8 relatively).
    """
    n = len(x)
    pivot = x[-1]
    deviations = x - pivot
    delta = math.fsum(deviations) / n
    d = deviations - delta
    rest = math.fsum(d) / n
    s2, s3, s4 = (math.fsum(d**power) / n for power in (2, 3, 4))
    m2 = s2 - rest**2
    m4 = s4 - 4 * rest * s3 + 6 * rest**2 * s2 - 3 * rest**4
    mean = pivot + delta + rest
    flat = m2 <= (1e-9 * (abs(mean) + 1)) ** 2
    variance = 0.0 if flat else m2
    offsets = np.arange(n) - (n - 1) / 2
    slope = math.fsum(d * offsets) / math.fsum(offsets * offsets)
    spread = math.sqrt(variance)
    values = {
        "mean": (mean, abs(mean) + spread),
        "std": (spread, spread),
        "rms": (math.sqrt(mean * mean + variance), abs(mean) + spread),
        "min": (x.min(), abs(mean) + spread),
        "max": (x.max(), abs(mean) + spread),
        # the steepest slope the spread allows
        "slope": (0.0 if flat else slope, spread * math.sqrt(12 / max(n * n - 1, 1))),
        "kurtosis": (0.0 if flat else m4 / (variance * variance) - 3, 0.0 if flat else m4 / m2**2),
    }
    return [values[f][0] for f in features], [values[f][1] for f in features]


def exact_correlation(a: np.ndarray, b: np.ndarray) -> float:
    def centred(x):
        pivot = x[-1]
        deviations = x - pivot
        mean = pivot + math.fsum(deviations) / len(x)
        return deviations - (mean - pivot), mean

    da, mean_a = centred(a)
    db, mean_b = centred(b)
    var_a, var_b = math.fsum(da * da), math.fsum(db * db)
    if var_a <= len(a) * (1e-9 * (abs(mean_a) + 1)) ** 2:
        return 0.0
    if var_b <= len(b) * (1e-9 * (abs(mean_b) + 1)) ** 2:
        return 0.0
    return max(-1.0, min(1.0, math.fsum(da * db) / math.sqrt(var_a * var_b)))


def demanding_samples(count: int, *, seed: int) -> dict[str, np.ndarray]:
    """Signals that break naive arithmetic: a level of 1e6 moving by 0.05, level shifts, held
    values, spikes, missing stretches, and a signal at 1e8."""
    rng = np.random.default_rng(seed)
    high = 1e6 + rng.normal(0, 0.05, count)
    high[count // 2 :] += 250.0  # a level shift
    high[count // 5 : count // 5 + 130] = 1e6 + 0.125  # a held result, longer than a window
    steps = np.repeat(rng.normal(0, 50, count // 40 + 1), 40)[:count] + rng.normal(0, 1, count)
    steps[rng.random(count) < 0.01] += 1e4  # spikes
    steps[: count // 7] = np.nan  # starts late
    gappy = 1e8 + rng.normal(0, 1.0, count)
    gappy[rng.random(count) < 0.2] = np.nan
    gappy[count // 3 : count // 3 + 60] = np.nan  # a missing stretch
    return {"high": high, "steps": steps, "gappy": gappy}


@pytest.mark.parametrize("windows", [(20, 100), (5, 12), (8, 24, 40)])
def test_features_stay_within_1e9_of_exact_arithmetic(windows):
    spec = FeatureSpec(
        signals=("high", "steps", "gappy"),
        windows=windows,
        correlations=(("high", "steps"), ("gappy", "high")),
    )
    count = 700
    values = demanding_samples(count, seed=sum(windows))
    filled = {}
    for name, column in values.items():
        column = column.copy()
        for i in range(1, count):
            if np.isnan(column[i]):
                column[i] = column[i - 1]
        filled[name] = column

    features = push_in_parts(spec, np.arange(count), values, [1, 2, 50, 333, 334, 500], np.float64)

    worst = 0.0
    for row in range(0, count, 3):
        expected, scales = [], []
        for name in spec.signals:
            history = filled[name][: row + 1]
            history = history[~np.isnan(history)]
            for window in spec.windows:
                x = history[-window:]
                if len(x) < 2:
                    expected += [np.nan] * len(spec.features)
                    scales += [1.0] * len(spec.features)
                else:
                    found, scale = exact_window_features(x, spec.features)
                    expected += found
                    scales += scale
        for a, b in spec.correlations:
            for window in spec.windows:
                xa, xb = filled[a][: row + 1], filled[b][: row + 1]
                seen = min(np.isfinite(xa).sum(), np.isfinite(xb).sum(), window)
                expected.append(exact_correlation(xa[-seen:], xb[-seen:]) if seen >= 2 else np.nan)
                scales.append(1.0)
        expected, scales = np.array(expected), np.array(scales)
        got = features[row]
        assert np.array_equal(np.isnan(got), np.isnan(expected)), f"row {row}"
        finite = ~np.isnan(expected)
        error = np.abs(got[finite] - expected[finite]) / np.maximum(scales[finite], 1e-300)
        error[expected[finite] == got[finite]] = 0.0  # exact, flat windows included
        worst = max(worst, error.max(initial=0.0))
        assert (error <= 1e-9).all(), (row, np.array(spec.names)[finite][error > 1e-9])
    print(f"\nwindows {windows}: worst error {worst:.1e} of scale")


def test_features_depend_only_on_the_window_once_it_is_full():
    spec = default_spec()
    ts, values = station_samples(900, seed=9)
    values["temperature"] = 1e6 + np.random.default_rng(9).normal(0, 0.05, 900)
    later = 137  # a second scorer that starts later, with different push sizes

    from_start = push_in_parts(spec, ts, values, range(0, 900, 50))
    late = {name: column[later:] for name, column in values.items()}
    from_later = push_in_parts(spec, ts[later:], late, range(0, 900, 23))

    full = later + spec.max_window - 1
    assert np.array_equal(from_start[full:], from_later[full - later :])
    assert not np.array_equal(from_start[later : full - 1], from_later[: full - 1 - later])


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=399), max_size=30),
    chunk_rows=st.sampled_from([1, 9, 64, 256]),
)
def test_default_features_do_not_depend_on_batching_or_chunking(cuts, chunk_rows):
    spec = default_spec()
    ts, values = station_samples(400, seed=21)
    values["temperature"] = 1e6 + np.random.default_rng(21).normal(0, 0.05, 400)

    in_one_push = StationWindows(spec).push(ts, values)
    windows = StationWindows(spec, chunk_rows=chunk_rows)
    bounds = [0, *sorted(set(cuts)), len(ts)]
    in_parts = np.concatenate(
        [
            windows.push(ts[a:b], {name: column[a:b] for name, column in values.items()})
            for a, b in itertools.pairwise(bounds)
        ]
    )

    assert np.array_equal(in_one_push, in_parts, equal_nan=True)
