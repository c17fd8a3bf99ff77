"""Statistical process control of the telemetry stream: control limits and the Nelson rules.

Pure numpy, no I/O: the live scorer, the `spc_limits` command and the tests run the same code.

Charts. A station's signal is charted either as individuals (I-MR: a sample is a point,
subgroup size 1) or as means of subgroups of n consecutive samples (X̄-R, n = 2…10). Each has a
location chart (X̄ or I) and a spread chart (R or MR). By default subgroups (individuals) are
back to back; with an `interval` K > n only the first n samples of every K are charted (one
subgroup every K samples), which is how a 50 Hz signal gets a chart of a point a minute.
Limits come from a baseline period the quality engineer judged normal (`compute_limits`):

- X̄-R: centre X̿ (mean of the subgroup means), R̄ (mean range); X̄ limits X̿ ± A2·R̄, R limits
  D3·R̄ and D4·R̄; process sigma R̄/d2.
- I-MR: centre X̄ (mean of the individuals), MR̄ (mean moving range of consecutive samples);
  I limits X̄ ± 3·MR̄/d2 with d2 = 1.128 (n = 2), MR limits 0 and D4·MR̄ = 3.267·MR̄; process
  sigma MR̄/1.128.

The zones the Nelson rules use are thirds of the distance from the centre line to the control
limit: one sigma of the charted point (sigma/√n for X̄, sigma for I).

Rules. Nelson's eight rules are evaluated on the X̄ (or I) chart, and rule 1 on the R (or MR)
chart. Each point is judged with the points before it, so `ChartStream` keeps the last 14
points, the unfinished subgroup, the last individual and whether each rule held at the last
point: the violations of a stream are the same however its samples are batched
(tests/foresight/test_spc_rules.py proves it over random splits).

Debounce. A rule fires at the first point that completes its pattern and then stays quiet while
the pattern keeps holding at every following point (ten points on one side fire rule 2 once, at
the ninth); it fires again only after a point at which the pattern no longer held. Each rule
and chart is debounced on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

# Control chart constants for subgroups of n: the standard table values, to the three decimals
# the factor tables of the usual SPC references print them (e.g. Montgomery, "Introduction to
# Statistical Quality Control"; ASTM E2587): n → (A2, D3, D4, d2).
CONSTANTS: dict[int, tuple[float, float, float, float]] = {
    2: (1.880, 0.0, 3.267, 1.128),
    3: (1.023, 0.0, 2.574, 1.693),
    4: (0.729, 0.0, 2.282, 2.059),
    5: (0.577, 0.0, 2.114, 2.326),
    6: (0.483, 0.0, 2.004, 2.534),
    7: (0.419, 0.076, 1.924, 2.704),
    8: (0.373, 0.136, 1.864, 2.847),
    9: (0.337, 0.184, 1.816, 2.970),
    10: (0.308, 0.223, 1.777, 3.078),
}
MAX_SUBGROUP = max(CONSTANTS)
# A moving range is a range of two consecutive individuals: the n = 2 constants apply.
MR_D2 = CONSTANTS[2][3]
MR_D4 = CONSTANTS[2][2]
# Fewer baseline points than this give limits too uncertain to judge a process by (the usual
# advice is 20 to 25 subgroups).
MIN_BASELINE_POINTS = 20

XBAR_R = "xbar_r"
I_MR = "i_mr"
CHARTS_OF = {XBAR_R: ("xbar", "r"), I_MR: ("i", "mr")}

RULE_NAMES: dict[int, str] = {
    1: "one point beyond 3 sigma",
    2: "nine points in a row on one side of the centre line",
    3: "six points in a row steadily increasing or decreasing",
    4: "fourteen points in a row alternating up and down",
    5: "two of three points in a row beyond 2 sigma on the same side",
    6: "four of five points in a row beyond 1 sigma on the same side",
    7: "fifteen points in a row within 1 sigma of the centre line",
    8: "eight points in a row beyond 1 sigma, on both sides of the centre line",
}
# How many points each rule looks at, the current one included.
RULE_WINDOWS = {1: 1, 2: 9, 3: 6, 4: 14, 5: 3, 6: 5, 7: 15, 8: 8}
ALL_RULES = tuple(RULE_NAMES)
TAIL = max(RULE_WINDOWS.values()) - 1
# Rows of the debounce state: rules 1-8 on the location chart, then rule 1 on the spread chart.
SPREAD_RULE_ROW = 8

# Samples are ordered by (ts, seq) packed into one int64: seq takes the low 20 bits (a station
# sending more than a million samples in one millisecond is not a PLC), ts in ms the rest (good
# until the year 2248).
_SEQ_BITS = 20
_SEQ_MAX = (1 << _SEQ_BITS) - 1
_NOTHING_YET = np.iinfo(np.int64).min


class SpcError(ValueError):
    """Limits that cannot be computed from the baseline; the message says why."""


def rule_code(rule: int) -> str:
    """How a rule is stored on an alert: nelson_1 … nelson_8."""
    return f"nelson_{rule}"


def chart_kind(subgroup_size: int) -> str:
    return I_MR if subgroup_size == 1 else XBAR_R


def parse_rules(text: str) -> tuple[int, ...]:
    """ "1,2,5,6" → (1, 2, 5, 6); "all" → every rule. Refuses anything else."""
    if text.strip().lower() == "all":
        return ALL_RULES
    try:
        rules = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        rules = []
    if not rules or any(rule not in RULE_NAMES for rule in rules):
        raise SpcError(f"rules are numbers 1 to 8 separated by commas, or all; not {text!r}")
    return tuple(rules)


def rules_text(rules: Iterable[int]) -> str:
    return ",".join(str(rule) for rule in sorted(rules))


def check_subgroup_size(subgroup_size: int) -> int:
    if subgroup_size != 1 and subgroup_size not in CONSTANTS:
        raise SpcError(
            f"the subgroup size is 1 (individuals, I-MR) or 2 to {MAX_SUBGROUP} (X̄-R), "
            f"not {subgroup_size}"
        )
    return subgroup_size


@dataclass(frozen=True)
class Limits:
    """The control limits of one station's signal, and where they came from.

    `centre`, `ucl`, `lcl` are the location chart's (X̄ or I); `range_*` the spread chart's
    (R or MR); `sigma` the process standard deviation estimated from the ranges; `rules` the
    Nelson rules that raise violations (rule 1 on both charts). `id`, `station_id` and `signal`
    identify stored limits (0 and "" for limits not stored).
    """

    subgroup_size: int
    centre: float
    sigma: float
    ucl: float
    lcl: float
    range_centre: float
    range_ucl: float
    range_lcl: float
    baseline_samples: int = 0
    baseline_points: int = 0
    rules: tuple[int, ...] = ALL_RULES
    interval: int = 0  # samples from one subgroup's start to the next; 0: the subgroup size
    id: int = 0
    station_id: int = 0
    signal: str = ""

    @property
    def kind(self) -> str:
        return chart_kind(self.subgroup_size)

    @property
    def charts(self) -> tuple[str, str]:
        """(location chart, spread chart): ("xbar", "r") or ("i", "mr")."""
        return CHARTS_OF[self.kind]

    @property
    def point_sigma(self) -> float:
        """One sigma of a charted point: the width of a zone."""
        return (self.ucl - self.centre) / 3.0

    @property
    def every(self) -> int:
        """A subgroup (or individual) starts every this many samples of the signal."""
        return self.interval or self.subgroup_size

    @property
    def rule_mask(self) -> np.ndarray:
        """Which rows of the debounce state may fire: rules 1-8, then the spread chart's."""
        mask = np.zeros(SPREAD_RULE_ROW + 1, dtype=bool)
        mask[[rule - 1 for rule in self.rules]] = True
        mask[SPREAD_RULE_ROW] = 1 in self.rules
        return mask

    def identified(self, *, id: int, station_id: int, signal: str) -> Limits:
        return replace(self, id=id, station_id=station_id, signal=signal)


def check_interval(interval: int, subgroup_size: int) -> int:
    if interval and interval < subgroup_size:
        raise SpcError(
            f"subgroups of {subgroup_size} cannot start every {interval} samples: the interval "
            f"is at least the subgroup size"
        )
    return interval


def charted_samples(values: np.ndarray, subgroup_size: int, interval: int = 0) -> np.ndarray:
    """The samples a chart takes from a series (NaN left out): with an interval K, the first
    n of every K."""
    samples = np.asarray(values, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if interval > subgroup_size:
        samples = samples[np.arange(samples.shape[0]) % interval < subgroup_size]
    return samples


def compute_limits(
    values: np.ndarray,
    subgroup_size: int,
    *,
    interval: int = 0,
    min_points: int = MIN_BASELINE_POINTS,
) -> Limits:
    """Limits from a baseline: `values` are one signal's samples in time order (NaN, a sample
    without the signal, is left out). Subgroups are consecutive samples, back to back or the
    first n of every `interval`; an unfinished last subgroup is left out. Moving ranges are
    taken between consecutive charted individuals."""
    check_subgroup_size(subgroup_size)
    check_interval(interval, subgroup_size)
    samples = charted_samples(values, subgroup_size, interval)
    n = subgroup_size
    points = samples.shape[0] // n
    if points < min_points:
        unit = "samples" if n == 1 else f"subgroups of {n}"
        raise SpcError(
            f"the baseline holds {points} {unit}; at least {min_points} are needed for limits "
            f"worth judging a process by"
        )
    if n == 1:
        centre = float(samples.mean())
        moving_range = float(np.abs(np.diff(samples)).mean())
        if not moving_range > 0:
            raise SpcError("the baseline never varies (mean moving range 0): no limits")
        sigma = moving_range / MR_D2
        return Limits(
            subgroup_size=1,
            centre=centre,
            sigma=sigma,
            ucl=centre + 3.0 * sigma,
            lcl=centre - 3.0 * sigma,
            range_centre=moving_range,
            range_ucl=MR_D4 * moving_range,
            range_lcl=0.0,
            baseline_samples=int(samples.shape[0]),
            baseline_points=points,
            interval=interval or 1,
        )
    a2, d3, d4, d2 = CONSTANTS[n]
    groups = samples[: points * n].reshape(points, n)
    grand_mean = float(groups.mean(axis=1).mean())
    mean_range = float((groups.max(axis=1) - groups.min(axis=1)).mean())
    if not mean_range > 0:
        raise SpcError("the baseline never varies within a subgroup (mean range 0): no limits")
    return Limits(
        subgroup_size=n,
        centre=grand_mean,
        sigma=mean_range / d2,
        ucl=grand_mean + a2 * mean_range,
        lcl=grand_mean - a2 * mean_range,
        range_centre=mean_range,
        range_ucl=d4 * mean_range,
        range_lcl=d3 * mean_range,
        baseline_samples=int(samples.shape[0]),
        baseline_points=points,
        interval=interval or n,
    )


def points_outside(values: np.ndarray, limits: Limits) -> int:
    """How many points of a baseline (samples in time order, NaN left out) lie beyond the
    limits on either chart: limits from a baseline that was itself out of control are worth a
    second look."""
    n = limits.subgroup_size
    samples = charted_samples(values, n, limits.interval)
    if n == 1:
        points = samples
        spread = np.concatenate(([np.nan], np.abs(np.diff(samples))))
    else:
        groups = samples[: samples.shape[0] // n * n].reshape(-1, n)
        points = groups.mean(axis=1)
        spread = groups.max(axis=1) - groups.min(axis=1)
    outside = (points > limits.ucl) | (points < limits.lcl)
    outside |= (spread > limits.range_ucl) | (spread < limits.range_lcl)
    return int(outside.sum())


@dataclass(frozen=True)
class Violation:
    """A rule that fired: which one, on which chart, at which point, against which limits.

    `ts_ms`/`seq` are the point's sample (the last sample of its subgroup); `value` the point
    (X̄, R, I or MR); `line` the line the rule tests against (the control limit crossed, the
    2- or 1-sigma zone boundary on the violated side, the upper 1-sigma line for rules 7 and 8,
    the centre line for rules 2-4); `index` the position of the point's sample in the pushed
    batch; `triggering` that sample's signals.
    """

    station_id: int
    signal: str
    limits_id: int
    chart: str
    rule: int
    ts_ms: int
    seq: int
    value: float
    line: float
    centre: float
    ucl: float
    lcl: float
    subgroup_size: int
    index: int
    triggering: dict[str, float] = field(default_factory=dict)

    @property
    def rule_code(self) -> str:
        return rule_code(self.rule)

    @property
    def rule_name(self) -> str:
        return RULE_NAMES[self.rule]

    @property
    def description(self) -> str:
        return (
            f"Nelson rule {self.rule} ({self.rule_name}) on the {self.chart.upper()} chart of "
            f"{self.signal}: {self.value:.6g} (centre {self.centre:.6g}, limits "
            f"{self.lcl:.6g} … {self.ucl:.6g})"
        )


# Rows of the flags whose running counts the rules read (one cumulative sum for all of them).
_ABOVE, _BELOW, _ABOVE_2, _BELOW_2, _ABOVE_1, _BELOW_1, _INSIDE_1, _OUTSIDE_1 = range(8)
_RISING, _FALLING, _TURNING = 8, 9, 10  # the step into the point rises / falls / turns
_CHARTED = 11  # a point, not padding
_LIMIT_ROWS = ("centre", "point_sigma", "ucl", "lcl")


def location_rules(points: np.ndarray, limits: Limits) -> np.ndarray:
    """Whether each Nelson rule's pattern holds at each point: a (8, len) boolean array, row
    r-1 for rule r, judged with the points before it in `points` only (a pattern reaching
    back before the first point does not hold)."""
    return _rules(np.asarray(points, dtype=np.float64)[None, :], [limits])[:, 0, :]


def _rules(charted: np.ndarray, limits: list[Limits]) -> np.ndarray:
    """`location_rules` of several charts at once, one per row of `charted` (rows left-padded
    with NaN, which breaks every pattern): a (8, charts, len) array. One pass of numpy calls
    for all of a station's charts: at a hundred points per chart and batch, the cost is in the
    number of calls, not in the points."""
    charts, length = charted.shape
    held = np.zeros((8, charts, length), dtype=bool)
    if length == 0:
        return held
    centre, sigma, ucl, lcl = (
        np.array([[getattr(item, name)] for item in limits]) for name in _LIMIT_ROWS
    )
    z = (charted - centre) / sigma
    flags = np.zeros((12, charts, length), dtype=bool)
    np.greater(z, 0, out=flags[_ABOVE])
    np.less(z, 0, out=flags[_BELOW])
    np.greater(z, 2, out=flags[_ABOVE_2])
    np.less(z, -2, out=flags[_BELOW_2])
    np.greater(z, 1, out=flags[_ABOVE_1])
    np.less(z, -1, out=flags[_BELOW_1])
    distance = np.abs(z)
    np.less(distance, 1, out=flags[_INSIDE_1])
    np.greater(distance, 1, out=flags[_OUTSIDE_1])
    np.isfinite(charted, out=flags[_CHARTED])
    if length >= 2:
        step = np.sign(charted[:, 1:] - charted[:, :-1])
        np.greater(step, 0, out=flags[_RISING, :, 1:])
        np.less(step, 0, out=flags[_FALLING, :, 1:])
        np.less(step[:, :-1] * step[:, 1:], 0, out=flags[_TURNING, :, 2:])
    running = np.zeros((12, charts, length + 1), dtype=np.int32)
    np.cumsum(flags, axis=2, out=running[:, :, 1:])

    def count(rows, window: int) -> np.ndarray:
        """How many flags of `rows` hold in the window ending at each point from the
        window-th on."""
        return running[rows, :, window:] - running[rows, :, :-window]

    held[0] = (charted > ucl) | (charted < lcl)
    # "k of n" rules need n points: padding counts as no point beyond, so it is checked.
    if length >= 3:
        held[4, :, 2:] = (count(slice(_ABOVE_2, _BELOW_2 + 1), 3) >= 2).any(axis=0)
        held[4, :, 2:] &= count(_CHARTED, 3) == 3
    if length >= 5:
        held[5, :, 4:] = (count(slice(_ABOVE_1, _BELOW_1 + 1), 5) >= 4).any(axis=0)
        held[5, :, 4:] &= count(_CHARTED, 5) == 5
        # Five steps of the same direction into the point: six points (the step into the
        # first point of a row is never counted).
        held[2, :, 4:] = (count(slice(_RISING, _FALLING + 1), 5) == 5).any(axis=0)
    if length >= 8:
        eight = count(slice(_ABOVE_1, _OUTSIDE_1 + 1), 8)  # above 1, below 1, inside, outside
        held[7, :, 7:] = (eight[3] == 8) & (eight[0] > 0) & (eight[1] > 0)
    if length >= 9:
        held[1, :, 8:] = (count(slice(_ABOVE, _BELOW + 1), 9) == 9).any(axis=0)
    if length >= 12:
        # Twelve turns in a row: fourteen points (the first two of a row never turn).
        held[3, :, 11:] = count(_TURNING, 12) == 12
    if length >= 15:
        held[6, :, 14:] = count(_INSIDE_1, 15) == 15
    return held


@dataclass
class _Batch:
    """A chart's new points of one push, before the rules judge them."""

    points: np.ndarray  # X̄ or I
    spread: np.ndarray  # R or MR (NaN: the first individual ever has no moving range)
    where: np.ndarray  # index in the batch of each point's (last) sample
    charted: np.ndarray  # the kept tail, then the new points


class ChartStream:
    """The X̄-R (or I-MR) chart of one station's signal, fed sample batches in time order."""

    def __init__(self, limits: Limits) -> None:
        check_subgroup_size(limits.subgroup_size)
        check_interval(limits.interval, limits.subgroup_size)
        if not limits.point_sigma > 0:
            raise SpcError("limits with a zero or negative width judge nothing")
        self.limits = limits
        self._pending = np.empty(0, dtype=np.float64)  # the unfinished subgroup
        self._tail = np.empty(0, dtype=np.float64)  # the last TAIL location points
        self._last_individual = math.nan
        self._seen = 0  # samples of the signal so far: where the interval stands
        self._held = np.zeros(SPREAD_RULE_ROW + 1, dtype=bool)  # at the last point
        self._may_fire = limits.rule_mask[:, None]
        self.points = 0

    def push(self, ts_ms: np.ndarray, seq: np.ndarray, samples: np.ndarray) -> list[Violation]:
        """Chart the batch's samples of this signal (NaN: a sample without it)."""
        batch = self.take(samples)
        if batch is None:
            return []
        held = location_rules(batch.charted, self.limits)
        return self.judge(batch, held[:, -batch.points.shape[0] :], ts_ms, seq)

    def take(self, samples: np.ndarray) -> _Batch | None:
        """The new points of a batch's samples (None: no point completed)."""
        finite = np.isfinite(samples)
        if finite.all():
            values, present = samples, None
        else:
            present = np.flatnonzero(finite)
            values = samples[present]
        n, every = self.limits.subgroup_size, self.limits.every
        if every > n:
            taken = (self._seen + np.arange(values.shape[0])) % every < n
            self._seen = (self._seen + values.shape[0]) % every
            present = np.flatnonzero(taken) if present is None else present[taken]
            values = values[taken]
        if n == 1:
            if values.shape[0] == 0:
                return None
            points = values
            previous = np.empty_like(values)
            previous[0] = self._last_individual  # NaN before the first individual ever
            previous[1:] = values[:-1]
            spread = np.abs(values - previous)
            where = np.arange(values.shape[0]) if present is None else present
            self._last_individual = float(values[-1])
        else:
            joined = np.concatenate((self._pending, values))
            count = joined.shape[0] // n
            # The sample completing a subgroup is always one of this batch.
            ends = np.arange(n - 1, count * n, n) - self._pending.shape[0]
            self._pending = joined[count * n :].copy()
            if count == 0:
                return None
            groups = joined[: count * n].reshape(count, n)
            points = groups.mean(axis=1)
            spread = groups.max(axis=1) - groups.min(axis=1)
            where = ends if present is None else present[ends]
        return _Batch(points, spread, where, np.concatenate((self._tail, points)))

    def judge(
        self,
        batch: _Batch,
        held: np.ndarray,
        ts_ms: np.ndarray,
        seq: np.ndarray,
        *,
        sample: Callable[[int], dict[str, float]] | None = None,
    ) -> list[Violation]:
        """Debounce the rules that hold at the new points (`held`: 8 x points, the location
        chart's) and add the spread chart's rule 1; returns the violations, with the signals
        of their sample when `sample` gives them."""
        limits = self.limits
        points, spread = batch.points, batch.spread
        every = np.empty((SPREAD_RULE_ROW + 1, points.shape[0]), dtype=bool)
        every[:SPREAD_RULE_ROW] = held
        every[SPREAD_RULE_ROW] = (spread > limits.range_ucl) | (spread < limits.range_lcl)
        # A rule left out of the limits' selection is judged like the others but never fires.
        fired = every & self._may_fire
        fired[:, 0] &= ~self._held
        fired[:, 1:] &= ~every[:, :-1]
        self._held = every[:, -1].copy()
        self._tail = batch.charted[-TAIL:].copy()
        self.points += points.shape[0]
        if not fired.any():
            return []
        location, spread_chart = limits.charts
        offset = batch.charted.shape[0] - points.shape[0]
        violations = []
        for column, row in zip(*np.nonzero(fired.T), strict=True):  # in time order
            index = int(batch.where[column])
            if row == SPREAD_RULE_ROW:
                value = float(spread[column])
                chart, rule = spread_chart, 1
                centre, ucl, lcl = limits.range_centre, limits.range_ucl, limits.range_lcl
                line = ucl if value > ucl else lcl
            else:
                value = float(points[column])
                chart, rule = location, int(row) + 1
                centre, ucl, lcl = limits.centre, limits.ucl, limits.lcl
                line = _line(rule, value, batch.charted, column + offset, limits)
            violations.append(
                Violation(
                    station_id=limits.station_id,
                    signal=limits.signal,
                    limits_id=limits.id,
                    chart=chart,
                    rule=rule,
                    ts_ms=int(ts_ms[index]),
                    seq=int(seq[index]),
                    value=value,
                    line=line,
                    centre=centre,
                    ucl=ucl,
                    lcl=lcl,
                    subgroup_size=limits.subgroup_size,
                    index=index,
                    triggering=sample(index) if sample else {},
                )
            )
        return violations


def _line(rule: int, value: float, charted: np.ndarray, at: int, limits: Limits) -> float:
    """The line a location rule tested, on the side where its pattern held."""
    sigma = limits.point_sigma
    if rule == 1:
        return limits.ucl if value > limits.ucl else limits.lcl
    if rule in (5, 6):
        zone = 2.0 if rule == 5 else 1.0
        window = charted[max(0, at - RULE_WINDOWS[rule] + 1) : at + 1]
        upper = int((window > limits.centre + zone * sigma).sum())
        lower = int((window < limits.centre - zone * sigma).sum())
        return limits.centre + (zone if upper >= lower else -zone) * sigma
    if rule in (7, 8):
        return limits.centre + sigma
    return limits.centre


class SpcMonitor:
    """The SPC charts of every monitored station signal, for the live scorer.

    `use` takes the active limits (all of them, or those of some stations) between batches;
    `push` takes a station's batch as the scorer builds it (ts in epoch ms, seq, signal →
    float64 values with NaN where a sample lacks the signal) and returns the violations to
    raise, in time order, each with the index of its sample in the batch. Samples not newer
    than the newest one already charted for the station (a redelivered message) are left out,
    so a redelivery does not chart a sample twice.
    """

    def __init__(self) -> None:
        self._charts: dict[int, dict[str, ChartStream]] = {}
        self._newest: dict[int, int] = {}

    def use(self, limits: Iterable[Limits], *, station_ids: Iterable[int] | None = None) -> None:
        """Take limits into use. With `station_ids`, only those stations change (a station
        among them without limits stops being charted); without, every station does. A chart
        whose limits did not change keeps its history; new limits start a fresh chart."""
        wanted: dict[int, dict[str, Limits]] = {}
        for item in limits:
            wanted.setdefault(item.station_id, {})[item.signal] = item
        stations = set(self._charts) | set(wanted) if station_ids is None else set(station_ids)
        for station_id in stations:
            current = self._charts.get(station_id, {})
            charts = {}
            for signal, item in wanted.get(station_id, {}).items():
                chart = current.get(signal)
                charts[signal] = chart if chart and chart.limits == item else ChartStream(item)
            if charts:
                self._charts[station_id] = charts
            else:
                self._charts.pop(station_id, None)

    def limits_of(self, station_id: int) -> list[Limits]:
        return [chart.limits for chart in self._charts.get(station_id, {}).values()]

    def push(
        self,
        station_id: int,
        ts_ms: np.ndarray,
        seq: np.ndarray,
        values: Mapping[str, np.ndarray],
    ) -> list[Violation]:
        charts = self._charts.get(station_id)
        if not charts or ts_ms.shape[0] == 0:
            return []
        keys = (ts_ms.astype(np.int64) << _SEQ_BITS) | np.minimum(
            np.maximum(seq.astype(np.int64), 0), _SEQ_MAX
        )
        newest = np.maximum.accumulate(
            np.concatenate(([self._newest.get(station_id, _NOTHING_YET)], keys))
        )
        self._newest[station_id] = int(newest[-1])
        fresh = keys > newest[:-1]
        charted, positions = values, None
        if not fresh.all():
            positions = np.flatnonzero(fresh)
            charted = {name: column[positions] for name, column in values.items()}
        taken = []
        for signal, chart in charts.items():
            column = charted.get(signal)
            if column is not None:
                batch = chart.take(column)
                if batch is not None:
                    if positions is not None:  # back to the pushed batch's positions
                        batch.where = positions[batch.where]
                    taken.append((chart, batch))
        if not taken:
            return []
        # All of the station's charts judged in one pass, each row right-aligned.
        width = max(batch.charted.shape[0] for _, batch in taken)
        rows = np.full((len(taken), width), np.nan)
        for row, (_, batch) in enumerate(taken):
            rows[row, width - batch.charted.shape[0] :] = batch.charted
        held = _rules(rows, [chart.limits for chart, _ in taken])
        violations: list[Violation] = []
        for row, (chart, batch) in enumerate(taken):
            new = held[:, row, width - batch.points.shape[0] :]
            violations.extend(
                chart.judge(batch, new, ts_ms, seq, sample=lambda index: _sample(values, index))
            )
        violations.sort(key=lambda v: (v.ts_ms, v.seq, v.signal, v.chart, v.rule))
        return violations


def _sample(values: Mapping[str, np.ndarray], index: int) -> dict[str, float]:
    """The signals of one sample of the batch (those it has)."""
    sample = {}
    for name, column in values.items():
        value = float(column[index])
        if math.isfinite(value):
            sample[name] = value
    return sample
