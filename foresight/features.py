"""Window features of one station's telemetry: the same numbers for live scoring, training and
backtests.

A feature spec (stored as JSON on every model version) names the signals, the window lengths in
samples, the per-signal statistics and the signal pairs whose correlation is a feature. Feature
names are ``f"{signal}.{feature}@{window}"`` in the order signals x windows x features, then
``f"corr({a},{b})@{window}"`` in the order correlations x windows.

`StationWindows` keeps the tail of the stream that the longest window needs, so the features of a
sample depend only on the samples of its station before it, never on how they were batched: the
live scorer pushes whatever a pull request brought, a backtest pushes a whole range, and both get
bit-identical features (tests/foresight/test_features.py proves it over random splits).

Why every window is computed two-pass from its own values rather than from running prefix sums:
prefix sums are cheaper, but their rounding depends on where a push started, so the features
would change with the batching, and raw power sums lose the variance and kurtosis of a signal
that barely moves (a PLC holding a result register) to cancellation. Instead the windows of a
batch are copied into one contiguous (rows x window) array and reduced along the rows with
numpy: every row is reduced in the same order whatever the batch, the cost is a few passes over
rows x window floats (no per-sample Python), and the memory stays bounded by processing rows in
chunks.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

SPEC_VERSION = 1
FEATURES = ("mean", "std", "rms", "min", "max", "slope", "kurtosis")
DEFAULT_SPEC_JSON: dict[str, Any] = {
    "version": SPEC_VERSION,
    "signals": ["torque", "angle", "current", "temperature"],
    "windows": [20, 100],
    "features": list(FEATURES),
    "correlations": [["torque", "angle"]],
}
MIN_WINDOW = 2  # a spread, a slope or a correlation needs two samples
# A window whose standard deviation is below this fraction of its level (plus one unit) is flat:
# its spread is rounding noise, so std, slope, kurtosis and correlation are reported as 0.
FLAT_RELATIVE_STD = 1e-9
# Rows reduced at once: rows x 100 float64 per temporary stays within a core's L2 cache.
CHUNK_ROWS = 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


class FeatureSpecError(ValueError):
    """A feature spec that cannot be computed; the message says which part is wrong."""


@dataclass(frozen=True)
class FeatureSpec:
    signals: tuple[str, ...]
    windows: tuple[int, ...]
    features: tuple[str, ...] = FEATURES
    correlations: tuple[tuple[str, str], ...] = ()
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.version != SPEC_VERSION:
            raise FeatureSpecError(f"unsupported feature spec version {self.version!r}")
        if not self.signals or any(not isinstance(s, str) or not s for s in self.signals):
            raise FeatureSpecError("signals must be a non-empty list of signal names")
        if len(set(self.signals)) != len(self.signals):
            raise FeatureSpecError("signals must not repeat")
        if not self.windows or any(
            isinstance(w, bool) or not isinstance(w, int) or w < MIN_WINDOW for w in self.windows
        ):
            raise FeatureSpecError(f"windows must be sample counts of at least {MIN_WINDOW}")
        if len(set(self.windows)) != len(self.windows):
            raise FeatureSpecError("windows must not repeat")
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or not self.features:
            raise FeatureSpecError(f"features must be some of {', '.join(FEATURES)}: {unknown}")
        if len(set(self.features)) != len(self.features):
            raise FeatureSpecError("features must not repeat")
        for pair in self.correlations:
            if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(self.signals):
                raise FeatureSpecError(f"correlation {list(pair)} must name two listed signals")
        if len(set(self.correlations)) != len(self.correlations):
            raise FeatureSpecError("correlations must not repeat")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSpec:
        if not isinstance(data, Mapping):
            raise FeatureSpecError("a feature spec is a JSON object")
        unknown = set(data) - {"version", "signals", "windows", "features", "correlations"}
        if unknown:
            raise FeatureSpecError(f"unknown feature spec keys: {sorted(unknown)}")
        try:
            return cls(
                version=data.get("version", SPEC_VERSION),
                signals=tuple(data["signals"]),
                windows=tuple(data["windows"]),
                features=tuple(data.get("features", FEATURES)),
                correlations=tuple(tuple(pair) for pair in data.get("correlations", ())),
            )
        except (KeyError, TypeError) as exc:
            raise FeatureSpecError(f"malformed feature spec: {exc!r}") from exc

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "signals": list(self.signals),
            "windows": list(self.windows),
            "features": list(self.features),
            "correlations": [list(pair) for pair in self.correlations],
        }

    @cached_property
    def names(self) -> list[str]:
        names = [
            f"{signal}.{feature}@{window}"
            for signal in self.signals
            for window in self.windows
            for feature in self.features
        ]
        names += [
            f"corr({a},{b})@{window}" for a, b in self.correlations for window in self.windows
        ]
        return names

    @property
    def max_window(self) -> int:
        return max(self.windows)

    @property
    def n_features(self) -> int:
        return len(self.names)


def default_spec() -> FeatureSpec:
    return FeatureSpec.from_json(DEFAULT_SPEC_JSON)


def feature_signal(name: str) -> str:
    """The signal a feature describes ("torque" for torque.mean@20, "torque,angle" for corr)."""
    if name.startswith("corr("):
        return name[len("corr(") : name.index(")")]
    return name.split(".", 1)[0]


def _carry_forward(column: np.ndarray, last: float) -> np.ndarray:
    """Missing values (NaN, ±inf) take the last value before them, `last` for leading ones."""
    valid = np.isfinite(column)
    if valid.all():
        return column
    positions = np.where(valid, np.arange(column.size), -1)
    np.maximum.accumulate(positions, out=positions)
    return np.where(positions >= 0, column[np.maximum(positions, 0)], last)


def _flat(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    return variance <= (FLAT_RELATIVE_STD * (np.abs(mean) + 1.0)) ** 2


def _centred(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, deviations, population variance and flatness of each row of a contiguous array."""
    size = windows.shape[1]
    mean = windows.sum(axis=1) / size
    deviations = windows - mean[:, None]
    variance = np.square(deviations).sum(axis=1) / size
    flat = _flat(mean, variance)
    return mean, deviations, np.where(flat, 0.0, variance), flat


def _signal_stats(windows: np.ndarray, wanted: Sequence[str]) -> list[np.ndarray]:
    """The wanted statistics of each window (row); `windows` is C-contiguous float64."""
    size = windows.shape[1]
    mean, deviations, variance, flat = _centred(windows)
    stats: dict[str, np.ndarray] = {}
    for name in wanted:
        if name == "mean":
            stats[name] = mean
        elif name == "std":
            stats[name] = np.sqrt(variance)
        elif name == "rms":
            stats[name] = np.sqrt(mean * mean + variance)
        elif name == "min":
            stats[name] = windows.min(axis=1)
        elif name == "max":
            stats[name] = windows.max(axis=1)
        elif name == "slope":
            # Least squares against the sample index: units per sample (x rate = per second).
            offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
            slope = (deviations * offsets).sum(axis=1) / float(offsets @ offsets)
            stats[name] = np.where(flat, 0.0, slope)
        elif name == "kurtosis":
            fourth = np.square(np.square(deviations)).sum(axis=1) / size
            with np.errstate(divide="ignore", invalid="ignore"):
                excess = fourth / (variance * variance) - 3.0
            stats[name] = np.where(flat, 0.0, excess)
    return [stats[name] for name in wanted]


def _correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    size = first.shape[1]
    _, dev_a, var_a, flat_a = _centred(first)
    _, dev_b, var_b, flat_b = _centred(second)
    covariance = (dev_a * dev_b).sum(axis=1) / size
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = covariance / np.sqrt(var_a * var_b)
    return np.where(flat_a | flat_b, 0.0, np.clip(correlation, -1.0, 1.0))


class StationWindows:
    """Incremental features of one station: push samples in time order, get their features.

    The features of each pushed sample are computed from the last `window` samples up to and
    including it, across pushes. Until a signal has `window` values the window holds what there
    is (two values at least, else the features are NaN). A sample without a value for a signal
    carries that signal's last value forward; before its first value the signal is NaN.
    """

    def __init__(self, spec: FeatureSpec, *, chunk_rows: int = CHUNK_ROWS) -> None:
        self.spec = spec
        self.chunk_rows = chunk_rows
        self._keep = spec.max_window - 1
        self._index = {signal: position for position, signal in enumerate(spec.signals)}
        n_signals = len(spec.signals)
        self._tail = np.empty((n_signals, 0), dtype=np.float64)
        self._last = np.full(n_signals, np.nan)
        self._values_seen = np.zeros(n_signals, dtype=np.int64)
        self.samples_seen = 0
        self.last_ts: int | None = None

    def push(self, ts: np.ndarray, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Features (float32, samples x features) of the pushed samples, in push order.

        `ts` are epoch milliseconds, one per sample; `values` maps signal names to one float per
        sample (NaN where the sample lacks it). Signals the spec does not list are ignored.
        """
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        count = ts.size
        spec = self.spec
        features = np.full((count, spec.n_features), np.nan, dtype=np.float32)
        if count == 0:
            return features

        filled = np.empty((len(spec.signals), count), dtype=np.float64)
        for signal, position in self._index.items():
            column = values.get(signal)
            if column is None:
                filled[position] = self._last[position]
                continue
            column = np.asarray(column, dtype=np.float64).reshape(-1)
            if column.size != count:
                raise ValueError(f"{signal}: {column.size} values for {count} timestamps")
            filled[position] = _carry_forward(column, self._last[position])
        # Values each signal has up to and including each pushed sample.
        values_seen = self._values_seen[:, None] + np.cumsum(np.isfinite(filled), axis=1)
        history = np.concatenate([self._tail, filled], axis=1)
        offset = self._tail.shape[1]  # history column of the first pushed sample

        n_signals, n_windows, n_stats = len(spec.signals), len(spec.windows), len(spec.features)
        # The signal features, viewed as rows x signals x windows x statistics (no copy).
        per_signal = features[:, : n_signals * n_windows * n_stats].reshape(
            (count, n_signals, n_windows, n_stats), copy=False
        )
        for w, window in enumerate(spec.windows):
            # Rows from `common` on have full windows for every signal that has any in this push:
            # their windows are reduced together, a few numpy calls per chunk for all signals.
            full_from = (values_seen < window).sum(axis=1)  # `values_seen` never decreases
            group = np.flatnonzero(full_from < count)
            common = int(full_from[group].max()) if group.size else count
            batches = []
            if group.size:
                together = values_seen[group].min(axis=0)
                batch = self._batches(history[group], together, window, offset, common, count)
                batches.append((group, batch))
            for s in range(n_signals):  # the start of each signal, and signals without full rows
                stop = common if s in group else count
                batch = self._batches(history[s : s + 1], values_seen[s], window, offset, 0, stop)
                batches.append((np.array([s]), batch))
            for signals, batch in batches:
                for rows, windows in batch:
                    stats = np.stack(_signal_stats(windows, spec.features), axis=-1)
                    stats = stats.reshape(signals.size, -1, n_stats).swapaxes(0, 1)
                    per_signal[rows, signals, w] = stats  # rows x signals x statistics

        base = n_signals * n_windows * n_stats
        for c, (a, b) in enumerate(spec.correlations):
            pair = history[[self._index[a], self._index[b]]]
            seen = np.minimum(values_seen[self._index[a]], values_seen[self._index[b]])
            for w, window in enumerate(spec.windows):
                for rows, windows in self._batches(pair, seen, window, offset, 0, count):
                    half = windows.shape[0] // 2
                    features[rows, base + c * n_windows + w] = _correlation(
                        windows[:half], windows[half:]
                    )

        self._tail = history[:, -self._keep :].copy()
        self._last = filled[:, -1].copy()
        self._values_seen = values_seen[:, -1].copy()
        self.samples_seen += count
        self.last_ts = int(ts[-1])
        return features

    def _batches(
        self, series: np.ndarray, seen: np.ndarray, window: int, offset: int, start: int, stop: int
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (rows, windows) for the pushed rows start..stop-1 of the series (G x history).

        `windows` holds G blocks of len(rows) windows each, one per row, contiguous, so that
        every window is reduced in the same order whichever batch it comes in. A row where the
        series have fewer than `window` values (`seen`) gets the shorter window there is, one
        row at a time (only at the start of a signal); full windows come a chunk at a time.
        """
        if series.shape[0] == 0 or start >= stop:
            return
        partial_from = max(start, int(np.searchsorted(seen, MIN_WINDOW)))
        full_from = min(max(start, int(np.searchsorted(seen, window))), stop)
        for row in range(partial_from, full_from):
            end = offset + row + 1
            yield slice(row, row + 1), np.ascontiguousarray(series[:, end - int(seen[row]) : end])
        if full_from >= stop:
            return
        series = np.ascontiguousarray(series)
        step = max(1, self.chunk_rows // series.shape[0])
        item = series.strides[1]
        # views[g, j] is series[g, j : j + window], the window ending at history column j+window-1
        views = as_strided(
            series,
            shape=(series.shape[0], series.shape[1] - window + 1, window),
            strides=(series.strides[0], item, item),
            writeable=False,
        )
        for first_row in range(full_from, stop, step):
            last_row = min(first_row + step, stop)
            first = offset + first_row - window + 1
            windows = views[:, first : first + last_row - first_row]
            yield slice(first_row, last_row), np.ascontiguousarray(windows).reshape(-1, window)


def to_epoch_ms(ts: int | float | dt.datetime) -> int:
    """Epoch milliseconds of a sample time; naive datetimes are taken as UTC."""
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)
        return (ts - _EPOCH) // _MILLISECOND
    return int(ts)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan
    return float(value)


def dataset(
    spec: FeatureSpec,
    samples: Iterable[tuple[int | dt.datetime, Mapping[str, Any]]],
    *,
    batch_rows: int = 50_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (epoch ms) and features of one station's samples, as the live scorer sees them.

    `samples` yields (ts, signals) in time order, e.g. telemetry rows as
    ``Sample.objects.filter(...).order_by("ts", "seq").values_list("ts", "signals")``; a value
    that is missing or not a number is carried forward like a missing sample value. Rows are
    pushed in batches, which (see StationWindows) gives the same features as pushing them live.
    For samples already in arrays, push them straight into a `StationWindows`.
    """
    windows = StationWindows(spec)
    all_ts: list[np.ndarray] = []
    all_features: list[np.ndarray] = []
    batch_ts: list[int] = []
    batch_values: dict[str, list[float]] = {signal: [] for signal in spec.signals}

    def flush() -> None:
        if batch_ts:
            ts = np.asarray(batch_ts, dtype=np.int64)
            columns = {s: np.asarray(v, dtype=np.float64) for s, v in batch_values.items()}
            all_ts.append(ts)
            all_features.append(windows.push(ts, columns))
            batch_ts.clear()
            for column in batch_values.values():
                column.clear()

    for ts, signals in samples:
        batch_ts.append(to_epoch_ms(ts))
        for signal, column in batch_values.items():
            column.append(_number(signals.get(signal)))
        if len(batch_ts) >= batch_rows:
            flush()
    flush()
    if not all_ts:
        return np.empty(0, dtype=np.int64), np.empty((0, spec.n_features), dtype=np.float32)
    return np.concatenate(all_ts), np.concatenate(all_features)
