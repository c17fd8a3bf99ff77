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

How a window is computed. Every window length in a spec is a whole number of pieces of
`gcd(windows)` samples (20 for the default windows [20, 100]). When a sample arrives, the moments
of the piece ending with it are computed from its samples in two passes: deviations from the
piece's last value (exact for a signal that barely moves around a high level, a PLC holding a
result register), their mean, then the sums of powers of the deviations from that mean. A
longer window ending with the sample is its last pieces (100 = the pieces ending 80, 60, 40, 20
and 0 samples back), and the exact identities for moments about a moved centre (the pairwise
updates of Chan et al. and Pébay) combine the pieces' moments into the window's. So each sample
costs one pass over its piece plus a few operations per piece of each longer window, instead of
passes over every window, and nothing is a running sum over the stream: raw power sums would lose
the spread of a signal that barely moves to cancellation, and running sums would make the
rounding depend on where a push (or the stream) started.

What makes the features bit-identical however samples are batched: every number depends only
on the samples of its window, never on where the stream or the push started, and it is computed
with the same operations in the same order whatever else is in the batch: element-wise numpy
operations, exact minima and maxima, and sums over a window's samples or pieces added pairwise
in an order fixed by their count (`_fold_sum`), never by numpy reductions whose order follows
the array's shape. Pushes are processed `chunk_rows` samples at a time, with no per-sample
Python; the windows at the very start of a signal (fewer values than the window) are redone one
by one from the values there are.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

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
# Samples processed at once: their temporaries (about 20 x 5 x signals float64 each) stay within
# a core's L2 cache. Also the size of a station's buffers beyond the longest window.
CHUNK_ROWS = 256
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


def _carry_forward(filled: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Missing values (NaN, ±inf) take the last value before them in their signal's row, the
    signal's `last` value for leading ones."""
    valid = np.isfinite(filled)
    if valid.all():
        return filled
    positions = np.where(valid, np.arange(filled.shape[1]), -1)
    np.maximum.accumulate(positions, axis=1, out=positions)
    carried = filled[np.arange(filled.shape[0])[:, None], positions]
    np.copyto(carried, last[:, None], where=positions < 0)
    return carried


def _pieces_view(
    table: np.ndarray, column: int, shape: tuple[int, int, int], step: int
) -> np.ndarray:
    """`view[k, r, i] = table[r, column + i + k * step]` of a C-contiguous 2-D table, no copy:
    the k-th piece (oldest first) of the window of row r that ends `shape[0] - 1` steps on."""
    item = table.itemsize
    strides = (step * item, table.strides[0], item)
    return np.ndarray(shape, dtype=table.dtype, buffer=table, offset=column * item, strides=strides)


def _fold_sum(terms: np.ndarray, out: np.ndarray, *, scratch: bool = False) -> None:
    """`out` = the sum of `terms` over its first axis, added pairwise by halving.

    The order of the additions depends only on the length of that axis, so each window is
    summed the same way whatever else is in the batch (numpy's own reductions choose their order
    from the array's shape and strides). `terms` is left as it was unless it is `scratch`.
    """
    length = terms.shape[0]
    if length > 2 and not scratch:  # halve into a new array
        half = length // 2
        folded = terms[:half] + terms[length - half : length]
        if length % 2:  # the middle term of an odd length joins the first
            folded[0] += terms[half]
        terms, length = folded, half
    while length > 2:
        half = length // 2
        terms[:half] += terms[length - half : length]
        if length % 2:
            terms[0] += terms[half]
        length = half
    if length == 2:
        np.add(terms[0], terms[1], out=out)
    else:
        out[...] = terms[0]


def _sliding_min(table: np.ndarray, column: int, window: int, out: np.ndarray) -> None:
    """`out[r, i]` = the minimum of `table[r, column + i : column + i + window]` for the first
    rows of a C-contiguous table. A minimum is exact, so how it is found changes nothing: one
    reduction for a few windows, from minima of doubling spans for many."""
    rows, ends = out.shape
    if ends <= 2 * window:
        np.minimum.reduce(_pieces_view(table, column, (window, rows, ends), 1), axis=0, out=out)
        return
    span, spans = 1, table[:rows, column : column + ends + window - 1]
    while 2 * span <= window:
        spans = np.minimum(spans[:, :-span], spans[:, span:])
        span *= 2
    np.minimum(spans[:, :ends], spans[:, window - span : window - span + ends], out=out)


def _centred_index(length: int) -> np.ndarray:
    """Sample positions in a window of `length`, measured from its centre."""
    return np.arange(length, dtype=np.float64) - (length - 1) / 2.0


class _Layout:
    """The moments of the windows of S signals and P signal pairs, as rows of a table with one
    column per window end.

    Moments are about the window's own mean; `ref` is the window's last value and `shift` the
    mean minus `ref`, so that mean = ref + shift loses nothing to a high level. The third
    moment is kept times 4 (as the fourth moment of a longer window needs it) and the maximum
    negated, so that one minimum finds both extremes.
    """

    def __init__(self, signals: int, pairs: Sequence[tuple[int, int]]) -> None:
        s, p = signals, len(pairs)
        self.signals, self.pairs, self.total = s, p, 8 * s + p
        self.pair_list = list(pairs)  # (signal a, signal b) per correlation
        self.ref = slice(0, s)
        self.shift = slice(s, 2 * s)
        self.third = slice(2 * s, 3 * s)  # 4 x the sum of cubed deviations
        self.squares = slice(3 * s, 4 * s)  # sum of squared deviations
        self.products = slice(3 * s, 4 * s + p)  # squares, then each pair's sum of products
        self.fourth = slice(4 * s + p, 5 * s + p)
        self.trend = slice(5 * s + p, 6 * s + p)  # sum of deviation x centred sample index
        self.extremes = slice(6 * s + p, 8 * s + p)  # minimum, then maximum negated
        self.summed = slice(2 * s, 6 * s + p)  # third .. trend: summed over samples together
        self.kept = slice(3 * s, 6 * s + p)  # products, fourth, trend: what a window reports

    def multiply_pairs(self, deviations: np.ndarray, out: np.ndarray) -> None:
        """`out` (... x S + P x ...) = each signal's squared deviations, then each pair's
        products, along the second axis of `deviations` (... x S x ...)."""
        s = self.signals
        np.multiply(deviations, deviations, out=out[:, :s])
        for c, (a, b) in enumerate(self.pair_list):
            np.multiply(deviations[:, a], deviations[:, b], out=out[:, s + c])


def _window_moments(
    windows: np.ndarray, last: np.ndarray, offsets: np.ndarray, layout: _Layout, out: np.ndarray
) -> None:
    """Moments of windows of S signals (`windows[k, s, i]`: the k-th sample of signal s's i-th
    window, any strides) into rows `ref` to `trend` of `out` (one column per window); `last`
    is each window's last value and `offsets` the centred sample index (length x 1 x 1). The
    extremes are left to the caller.

    Deviations are taken from the window's last value first: for a signal that barely moves
    around a high level that subtraction is exact, so its spread survives.
    """
    length, s, ends = windows.shape
    out[layout.ref] = last
    deviations = np.subtract(windows, last, out=np.empty((length, s, ends)))
    shift = out[layout.shift]
    _fold_sum(deviations, shift)
    shift /= length
    deviations -= shift
    # in the order of layout.summed: cubes, squares, pair products, fourth powers, trend
    powers = np.empty((length, layout.total - 4 * s, ends))
    squares = powers[:, s : 2 * s]
    layout.multiply_pairs(deviations, powers[:, s : -2 * s])
    np.multiply(squares, deviations, out=powers[:, :s])
    np.multiply(squares, squares, out=powers[:, -2 * s : -s])
    np.multiply(deviations, offsets, out=powers[:, -s:])
    _fold_sum(powers, out[layout.summed], scratch=True)
    out[layout.third] *= 4.0


def _combine_pieces(
    table: np.ndarray,
    first: int,
    pieces: int,
    piece: int,
    layout: _Layout,
    *,
    weights: np.ndarray,
    shift: np.ndarray,
    kept: np.ndarray,
    extremes: np.ndarray,
) -> None:
    """Moments of windows of `pieces` x `piece` samples from the moments of their pieces.

    The window ending at table column j (j >= `first`) is the pieces ending at columns
    j - (pieces - 1) x piece, ..., j. The exact identities for moments about a moved centre
    (the pairwise updates of Chan et al. and Pébay) turn the pieces' moments about their own
    means into the window's about its mean; each piece's mean is taken relative to the window's
    last value, so their deviations are as exact as the samples'. `weights` (pieces x 1 x 1)
    are each piece's size times its centre's distance from the window's. Results (rows x ends)
    go to `shift`, `kept` and `extremes`.
    """
    s, p = layout.signals, layout.pairs
    ends = shift.shape[1]
    view = _pieces_view(table, first - (pieces - 1) * piece, (pieces, layout.total, ends), piece)
    delta = np.subtract(
        view[:, layout.ref],
        table[layout.ref, first : first + ends],
        out=np.empty((pieces, s, ends)),
    )
    delta += view[:, layout.shift]  # piece mean minus the window's last value
    _fold_sum(delta, shift)
    shift /= pieces
    delta -= shift  # piece mean minus window mean
    # what each piece adds to the window's moments besides its own (layout.kept):
    # n d^2 and n d_a d_b, then 4 d M3 + 6 d^2 M2 + n d^4, then the trend of the piece means
    terms = np.empty((pieces, layout.total - 5 * s, ends))
    products = terms[:, : s + p]
    layout.multiply_pairs(delta, products)
    products *= piece
    fourth = terms[:, s + p : 2 * s + p]
    np.multiply(view[:, layout.squares], 6.0, out=fourth)
    fourth += products[:, :s]
    fourth *= delta
    fourth += view[:, layout.third]
    fourth *= delta
    np.multiply(delta, weights, out=terms[:, 2 * s + p :])
    terms += view[:, layout.kept]
    _fold_sum(terms, kept, scratch=True)
    np.minimum.reduce(view[:, layout.extremes], axis=0, out=extremes)


def _statistics(
    shift: np.ndarray,
    last: np.ndarray,
    kept: np.ndarray,
    extremes: np.ndarray,
    sizes: np.ndarray,
    wanted: Sequence[str],
    layout: _Layout,
    *,
    out: np.ndarray,
    correlation: np.ndarray,
) -> None:
    """The wanted statistics into `out` (statistics x windows x S x ends) and the pairs'
    correlations into `correlation` (windows x P x ends), from the moments of the windows
    (windows x rows x ends); `sizes` holds each window's samples, then the sum of its squared
    centred sample indices (windows x 2 x 1)."""
    s, p = layout.signals, layout.pairs
    size, index_spread = sizes[:, :1], sizes[:, 1:]
    slot = {name: out[k] for k, name in enumerate(wanted)}
    mean = np.add(shift, last, out=slot.get("mean"))
    variance = kept[:, :s] / size
    level = np.abs(mean)
    level += 1.0
    level *= FLAT_RELATIVE_STD
    flat = variance <= np.square(level, out=level)
    np.copyto(variance, 0.0, where=flat)
    divisor = variance + flat  # 1 where flat (those report 0): no division by zero
    for name, target in slot.items():
        if name == "std":
            np.sqrt(variance, out=target)
        elif name == "rms":
            np.multiply(mean, mean, out=target)
            target += variance
            np.sqrt(target, out=target)
        elif name == "min":
            target[...] = extremes[:, :s]
        elif name == "max":
            np.multiply(extremes[:, s:], -1.0, out=target)
        elif name == "slope":
            # Least squares against the sample index: units per sample (x rate = per second).
            np.divide(kept[:, 2 * s + p :], index_spread, out=target)
            np.copyto(target, 0.0, where=flat)
        elif name == "kurtosis":
            np.divide(kept[:, s + p : 2 * s + p], size, out=target)
            target /= np.square(divisor)
            target -= 3.0
            np.copyto(target, 0.0, where=flat)
    if p:
        np.divide(kept[:, s : s + p], size, out=correlation)
        for c, (a, b) in enumerate(layout.pair_list):
            pair = correlation[:, c]
            pair /= np.sqrt(divisor[:, a] * divisor[:, b])
            np.copyto(pair, 0.0, where=flat[:, a] | flat[:, b])
        np.minimum(correlation, 1.0, out=correlation)
        np.maximum(correlation, -1.0, out=correlation)


def _sizes(windows: Iterable[int]) -> np.ndarray:
    """Samples per window and the sum of their squared centred indices (windows x 2 x 1)."""
    return np.array([[[n], [(n**3 - n) / 12.0]] for n in windows], dtype=np.float64)


def _short_windows_of(
    series: np.ndarray,
    ends: np.ndarray,
    lengths: np.ndarray,
    width: int,
    wanted: Sequence[str],
    pairs: Sequence[tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray]:
    """Statistics (wanted x signals x windows) and pair correlations (pairs x windows) of
    windows of some signals (`series`: signals x samples) that end at the columns `ends` and
    hold `lengths` samples, fewer than `width`: the windows at the start of a signal.

    All of them at once, each padded to `width` samples that add nothing (zero deviations,
    neutral extremes), so that a window's numbers depend only on its samples, as elsewhere.
    """
    signals, count = series.shape[0], ends.size
    layout = _Layout(signals, pairs)
    position = np.arange(width)[:, None]
    inside = position < lengths  # width x windows
    samples = series[:, np.where(inside, ends - lengths + 1 + position, ends)].transpose(1, 0, 2)
    inside = inside[:, None, :]
    table = np.empty((layout.total, count))
    last = table[layout.ref]
    last[...] = series[:, ends]
    deviations = np.where(inside, samples - last, 0.0)
    shift = table[layout.shift]
    _fold_sum(deviations, shift)
    shift /= lengths
    deviations -= shift
    deviations *= inside
    powers = np.empty((width, layout.total - 4 * signals, count))  # as in _window_moments
    squares = powers[:, signals : 2 * signals]
    layout.multiply_pairs(deviations, powers[:, signals : -2 * signals])
    np.multiply(squares, deviations, out=powers[:, :signals])
    np.multiply(squares, squares, out=powers[:, -2 * signals : -signals])
    offsets = np.where(inside, position[:, None] - (lengths - 1) / 2.0, 0.0)
    np.multiply(deviations, offsets, out=powers[:, -signals:])
    _fold_sum(powers, table[layout.summed], scratch=True)
    extremes = table[layout.extremes]
    np.min(np.where(inside, samples, np.inf), axis=0, out=extremes[:signals])
    np.max(np.where(inside, samples, -np.inf), axis=0, out=extremes[signals:])
    extremes[signals:] *= -1.0  # kept negated, as in every table of moments
    sizes = np.stack([lengths, (lengths**3.0 - lengths) / 12.0])[None]  # 1 x 2 x windows
    out = np.empty((len(wanted), 1, signals, count))
    correlation = np.empty((1, len(pairs), count))
    _statistics(
        table[None, layout.shift],
        last,
        table[None, layout.kept],
        extremes[None],
        sizes,
        wanted,
        layout,
        out=out,
        correlation=correlation,
    )
    return out[:, 0], correlation[0]


class StationWindows:
    """Incremental features of one station: push samples in time order, get their features.

    The features of each pushed sample are computed from the last `window` samples up to and
    including it, across pushes. Until a signal has `window` values the window holds what there
    is (two values at least, else the features are NaN). A sample without a value for a signal
    carries that signal's last value forward; before its first value the signal is NaN.
    """

    def __init__(self, spec: FeatureSpec, *, chunk_rows: int = CHUNK_ROWS) -> None:
        self.spec = spec
        self.chunk_rows = max(1, chunk_rows)
        self._index = {signal: position for position, signal in enumerate(spec.signals)}
        n_signals = len(spec.signals)
        pairs = [(self._index[a], self._index[b]) for a, b in spec.correlations]
        layout = self._layout = _Layout(n_signals, pairs)
        # Every window is a whole number of pieces: a piece's moments are summed from its
        # samples once, when its last sample arrives, and reused by every longer window.
        piece = self._piece = math.gcd(*spec.windows)
        self._offsets = _centred_index(piece)[:, None, None]
        self._one_piece = spec.windows.index(piece) if piece in spec.windows else None
        # per longer window: its pieces, and each piece's size x its centre's distance from
        # the window's centre
        self._pieces = [
            (w, window // piece, _centred_index(window // piece)[:, None, None] * piece * piece)
            for w, window in enumerate(spec.windows)
            if window != piece
        ]
        self._sizes = _sizes(spec.windows)
        # The samples (then negated, for the maxima) and the moments of the piece ending at
        # each sample, in buffers that pushes fill from the left: `_keep` columns before the
        # first pushed sample are what its windows need, and move to the front when the
        # buffers are full. NaN before the first value of a signal: a window reaching there is
        # NaN, then redone from the values there are.
        self._keep = spec.max_window - 1
        self._keep_pieces = spec.max_window - piece
        self._samples = np.full((2 * n_signals, self._keep + self.chunk_rows), np.nan)
        self._moments = np.full((layout.total, self._keep_pieces + self.chunk_rows), np.nan)
        self._used = 0  # columns filled after the first `_keep` (`_keep_pieces`)
        self._last = np.full(n_signals, np.nan)
        self._values_seen = np.zeros(n_signals, dtype=np.int64)
        self._all_full = False  # every signal has its longest window: no short windows left
        self.samples_seen = 0
        self.last_ts: int | None = None

    def push(
        self, ts: np.ndarray, values: Mapping[str, np.ndarray], *, dtype: DTypeLike = np.float32
    ) -> np.ndarray:
        """Features (samples x features) of the pushed samples: float32 (what models take)
        unless `dtype` asks for float64, which keeps every digit of the arithmetic.

        `ts` are epoch milliseconds, one per sample; `values` maps signal names to one float per
        sample (NaN where the sample lacks it). Signals the spec does not list are ignored.
        """
        ts = np.asarray(ts, dtype=np.int64).reshape(-1)
        count = ts.size
        spec = self.spec
        features = np.empty((count, spec.n_features), dtype=dtype)
        if count == 0:
            return features

        filled = _carry_forward(self._columns(values, count), self._last)
        values_seen = None  # values each signal has up to each pushed sample, while it matters
        if not self._all_full:
            values_seen = self._values_seen[:, None] + np.cumsum(np.isfinite(filled), axis=1)
        for start in range(0, count, self.chunk_rows):
            stop = min(start + self.chunk_rows, count)
            self._push_chunk(
                filled[:, start:stop],
                None if values_seen is None else values_seen[:, start:stop],
                features[start:stop],
            )

        self._last = filled[:, -1].copy()
        if values_seen is None:  # every signal had values: each sample brings one more
            self._values_seen += count
        else:
            self._values_seen = values_seen[:, -1].copy()
            self._all_full = bool(self._values_seen.min() >= spec.max_window)
        self.samples_seen += count
        self.last_ts = int(ts[-1])
        return features

    def _columns(self, values: Mapping[str, np.ndarray], count: int) -> np.ndarray:
        """The pushed values as signals x samples, NaN for a signal the push lacks."""
        columns = [values.get(signal) for signal in self.spec.signals]
        if all(column is not None for column in columns):
            try:
                filled = np.array(columns, dtype=np.float64)
            except ValueError:  # columns of different lengths: said below
                pass
            else:
                if filled.shape == (len(columns), count):
                    return filled
        filled = np.full((len(columns), count), np.nan)
        for position, (signal, column) in enumerate(zip(self.spec.signals, columns, strict=True)):
            if column is not None:
                column = np.asarray(column, dtype=np.float64).reshape(-1)
                if column.size != count:
                    raise ValueError(f"{signal}: {column.size} values for {count} timestamps")
                filled[position] = column
        return filled

    def _push_chunk(
        self, filled: np.ndarray, values_seen: np.ndarray | None, features: np.ndarray
    ) -> None:
        spec, layout, keep, piece = self.spec, self._layout, self._keep, self._piece
        n_signals, count = filled.shape
        n_windows, n_stats = len(spec.windows), len(spec.features)
        samples, moments = self._samples, self._moments
        if self._used + count > self.chunk_rows:  # full: keep the tail, start again after it
            used = self._used
            samples[:, :keep] = samples[:, used : used + keep]
            moments[:, : self._keep_pieces] = moments[:, used : used + self._keep_pieces]
            self._used = 0
        first = keep + self._used  # column of the first pushed sample
        samples[:n_signals, first : first + count] = filled
        # times -1 rather than np.negative, which in numpy 2.4.6 misreads a strided one-column input
        np.multiply(filled, -1.0, out=samples[n_signals:, first : first + count])
        first_piece = self._keep_pieces + self._used  # likewise in `moments`
        pushed = moments[:, first_piece : first_piece + count]

        # Every window's moments (windows x rows x pushed samples): the window of one piece
        # is the piece's own.
        windows = np.empty((n_windows, layout.total, count))
        one_piece = pushed if self._one_piece is None else windows[self._one_piece]
        start = first - piece + 1  # column where the piece of the first pushed sample starts
        _window_moments(
            _pieces_view(samples, start, (piece, n_signals, count), 1),
            samples[:n_signals, first : first + count],
            self._offsets,
            layout,
            one_piece,
        )
        _sliding_min(samples, start, piece, one_piece[layout.extremes])
        if self._one_piece is not None:
            pushed[...] = one_piece
        for w, pieces, weights in self._pieces:
            _combine_pieces(
                moments,
                first_piece,
                pieces,
                piece,
                layout,
                weights=weights,
                shift=windows[w, layout.shift],
                kept=windows[w, layout.kept],
                extremes=windows[w, layout.extremes],
            )
        stats = np.empty((n_stats, n_windows, n_signals, count))
        correlation = np.empty((n_windows, layout.pairs, count))
        _statistics(
            windows[:, layout.shift],
            pushed[layout.ref],
            windows[:, layout.kept],
            windows[:, layout.extremes],
            self._sizes,
            spec.features,
            layout,
            out=stats,
            correlation=correlation,
        )

        base = n_signals * n_windows * n_stats
        # The features viewed as rows x signals x windows x statistics, then rows x pairs x
        # windows (no copy).
        per_signal = features[:, :base].reshape((count, n_signals, n_windows, n_stats), copy=False)
        per_signal[...] = stats.transpose(3, 2, 1, 0)
        per_pair = features[:, base:].reshape((count, layout.pairs, n_windows), copy=False)
        per_pair[...] = correlation.transpose(2, 1, 0)
        if values_seen is not None:
            self._short_windows(
                samples[:n_signals, : first + count], values_seen, per_signal, per_pair
            )
        self._used += count

    def _short_windows(
        self,
        history: np.ndarray,
        values_seen: np.ndarray,
        per_signal: np.ndarray,
        per_pair: np.ndarray,
    ) -> None:
        """Redo the windows that reach back before a signal's first value from the values
        there are (`history` ends with the pushed samples): rows at the start of a signal only
        (with fewer than two values they stay NaN)."""
        spec, layout = self.spec, self._layout
        starting = (values_seen[:, 0] < spec.max_window) & (values_seen[:, -1] >= MIN_WINDOW)
        if not starting.any():
            return
        # the window of pushed row i ends at history column first + i
        first = history.shape[1] - values_seen.shape[1]
        for s in np.flatnonzero(starting):
            seen = values_seen[s]
            for w, window in enumerate(spec.windows):
                rows = np.flatnonzero((seen >= MIN_WINDOW) & (seen < window))
                if rows.size:
                    stats, _ = _short_windows_of(
                        history[s : s + 1], first + rows, seen[rows], window, spec.features, []
                    )
                    per_signal[rows, s, w] = stats[:, 0].T
        for c, (a, b) in enumerate(layout.pair_list):
            seen = np.minimum(values_seen[a], values_seen[b])
            for w, window in enumerate(spec.windows):
                rows = np.flatnonzero((seen >= MIN_WINDOW) & (seen < window))
                if rows.size:
                    _, correlation = _short_windows_of(
                        history[[a, b]], first + rows, seen[rows], window, (), [(0, 1)]
                    )
                    per_pair[rows, c, w] = correlation[0]


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
