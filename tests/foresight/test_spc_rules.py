"""SPC without a database: control limits against hand-worked examples, each Nelson rule on a
sequence built to trigger it once and only it, debouncing, and violations that do not depend
on how the stream is batched (compared with a plain point-by-point reading of the rules)."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foresight import spc
from foresight.spc import ChartStream, Limits, SpcMonitor, compute_limits, location_rules

# An I-MR chart with centre 0 and sigma 1: zones at ±1, ±2, limits at ±3; the MR chart's centre
# is MR̄ = 1.128 (sigma x d2) and its UCL D4 x MR̄ = 3.267 x 1.128 = 3.685.
UNIT_CHART = Limits(
    subgroup_size=1,
    centre=0.0,
    sigma=1.0,
    ucl=3.0,
    lcl=-3.0,
    range_centre=1.128,
    range_ucl=3.267 * 1.128,
    range_lcl=0.0,
    id=1,
    station_id=7,
    signal="torque",
)

# Background that breaks no rule: sides alternate every three points (rule 2), no run of six
# moving one way (3), the direction holds for two steps at a time (4), one point in six beyond
# 1 sigma on each side (5, 6, 8), at most two in a row within 1 sigma (7), steps of at most 1
# (the MR chart).
CALM = [0.5, 1.5, 0.5, -0.5, -1.5, -0.5]
BEFORE, AFTER = CALM * 4, CALM * 4

# Each pattern, dropped between the calm stretches, completes its rule's pattern exactly once.
PATTERNS = {
    1: [0.5, 3.5, 0.5, -0.5],  # one point beyond +3 sigma
    2: [0.4, 0.6, 0.3, 0.7, 0.5, 0.2, 0.6, 0.4, 0.5],  # nine above the centre, within 1 sigma
    3: [-0.8, -0.5, -0.2, 0.1, 0.4, 0.7],  # six rising
    4: [1.2, -0.2] * 7,  # fourteen alternating (one beyond 1 sigma in two: not rule 7)
    5: [-0.5, 2.5, 0.4, 2.5, -0.5],  # two of three beyond +2 sigma
    6: [1.5, 1.5, 0.5, 1.5, 1.5],  # four of five beyond +1 sigma
    7: [0.5, 0.2, -0.2, -0.5, -0.2, 0.2] * 2 + [0.5, 0.2, -0.2],  # fifteen within 1 sigma
    8: [1.5, -1.5] * 4,  # eight beyond 1 sigma on both sides
}


def chart(points: list[float], limits: Limits = UNIT_CHART) -> list[spc.Violation]:
    values = np.asarray(points, dtype=np.float64)
    ts = 1_000_000 + 100 * np.arange(values.shape[0], dtype=np.int64)
    return ChartStream(limits).push(ts, np.zeros_like(ts), values)


def fired(violations: list[spc.Violation]) -> list[tuple[str, int]]:
    return [(violation.chart, violation.rule) for violation in violations]


# -- each rule, alone -------------------------------------------------------------------------


def test_the_calm_background_breaks_no_rule():
    assert chart(CALM * 20) == []


@pytest.mark.parametrize("rule", sorted(PATTERNS))
def test_each_nelson_rule_fires_once_on_its_own_pattern_and_no_other_rule_fires(rule):
    violations = chart(BEFORE + PATTERNS[rule] + AFTER)

    assert fired(violations) == [("i", rule)]
    (violation,) = violations
    # The point completing the pattern lies inside it (or on its last calm neighbour for the
    # patterns that the calm stretch extends by one point).
    assert len(BEFORE) <= violation.index <= len(BEFORE) + len(PATTERNS[rule])
    assert violation.rule_code == f"nelson_{rule}"
    assert violation.rule_name == spc.RULE_NAMES[rule]
    assert (violation.centre, violation.ucl, violation.lcl) == (0.0, 3.0, -3.0)


def test_each_violation_names_its_point_and_the_line_the_rule_tested():
    lines = {
        rule: (violation.value, violation.line, violation.ts_ms)
        for rule in PATTERNS
        for violation in chart(BEFORE + PATTERNS[rule] + AFTER)
    }
    first = 1_000_000 + 100 * len(BEFORE)

    assert lines[1] == (3.5, 3.0, first + 100)  # the point, the UCL it crossed
    assert lines[2] == (0.5, 0.0, first + 800)  # the ninth point above the centre line
    assert lines[3] == (0.7, 0.0, first + 500)
    assert lines[5] == (2.5, 2.0, first + 300)  # the upper 2-sigma line
    assert lines[6] == (1.5, 1.0, first + 400)  # the fourth beyond the upper 1-sigma line
    assert lines[8][1] == 1.0


def test_points_below_the_centre_fire_the_same_rules_on_the_lower_lines():
    mirrored = {rule: [-value for value in PATTERNS[rule]] for rule in (1, 5, 6)}
    calm = [-value for value in CALM]

    for rule, pattern in mirrored.items():
        (violation,) = chart(calm * 4 + pattern + calm * 4)
        assert violation.rule == rule
        assert violation.line == {1: -3.0, 5: -2.0, 6: -1.0}[rule]


def test_a_jump_beyond_the_moving_range_limit_fires_rule_1_on_the_mr_chart_only():
    # From -1.5 to +2.5: a moving range of 4.0 > 3.685, the point itself within the limits.
    violations = chart([*BEFORE[:-1], 2.5, 0.5, *AFTER])

    assert fired(violations) == [("mr", 1)]
    assert violations[0].value == pytest.approx(4.0)
    assert violations[0].line == pytest.approx(3.267 * 1.128)
    assert violations[0].centre == 1.128


def test_a_subgroup_range_beyond_the_r_limits_fires_rule_1_on_the_r_chart():
    # X̄-R with n = 7 has a lower range limit (D3 > 0): a subgroup with no spread is out too.
    limits = Limits(
        subgroup_size=7,
        centre=0.0,
        sigma=1.0,
        ucl=3 / math.sqrt(7),
        lcl=-3 / math.sqrt(7),
        range_centre=2.704,
        range_ucl=1.924 * 2.704,
        range_lcl=0.076 * 2.704,
    )
    normal = [-1.5, -0.5, 0.0, 0.5, 1.5, -1.0, 1.0]  # mean 0, range 3
    wide = [-3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0]  # mean 0, range 6 > 5.2
    flat = [0.1] * 7  # mean 0.1, range 0 < 0.206

    violations = chart(normal * 2 + wide + normal + flat + normal, limits)

    assert [(v.chart, v.rule, v.index, v.line) for v in violations] == [
        ("r", 1, 20, limits.range_ucl),
        ("r", 1, 34, limits.range_lcl),
    ]


def test_rules_left_out_of_the_limits_never_fire_and_rule_1_covers_both_charts():
    zones_only = replace(UNIT_CHART, rules=(2, 5, 6))
    without_1 = chart([*BEFORE, 0.5, 3.5, 0.5, *BEFORE[:-1], 2.5, 0.5, *AFTER], zones_only)
    every = chart([*BEFORE, 0.5, 3.5, 0.5, *BEFORE[:-1], 2.5, 0.5, *AFTER])

    assert fired(every) == [("i", 1), ("mr", 1)]
    assert without_1 == []
    assert fired(chart(BEFORE + PATTERNS[5] + AFTER, zones_only)) == [("i", 5)]
    assert fired(chart(BEFORE + PATTERNS[7] + AFTER, zones_only)) == []


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ("all", spc.ALL_RULES),
        ("1,2,5,6", (1, 2, 5, 6)),
        (" 6, 1,1 ", (1, 6)),
        ("ALL", spc.ALL_RULES),
    ],
)
def test_rule_selections_are_read_from_their_text(text, rules):
    assert spc.parse_rules(text) == rules
    assert spc.parse_rules(spc.rules_text(rules)) == rules


@pytest.mark.parametrize("text", ["", "0", "9", "1,x", "one"])
def test_rule_selections_outside_1_to_8_are_refused(text):
    with pytest.raises(spc.SpcError, match="numbers 1 to 8"):
        spc.parse_rules(text)


# -- debounce ---------------------------------------------------------------------------------


def test_a_rule_that_keeps_holding_is_one_violation_until_its_pattern_clears():
    # Three points in a row beyond the UCL: rule 1 holds at each, and fires once, at the first
    # (they are also two of three beyond 2 sigma and, with the next calm point, four of five
    # beyond 1 sigma: rules 5 and 6, once each).
    outside = chart([*BEFORE, 3.1, 3.3, 3.2, *AFTER])
    # Twelve points above the centre: rule 2 holds from the ninth to the twelfth, fires once.
    above = chart([*BEFORE, 0.4, 0.5, 0.3, 0.3, 0.6, 0.6, 0.4, 0.4, 0.5, 0.5, 0.3, 0.3, *AFTER])

    assert [(v.rule, v.index) for v in outside] == [(1, 24), (5, 25), (6, 28)]
    assert [(v.rule, v.index) for v in above] == [(2, 32)]


def test_a_rule_fires_again_after_one_point_clears_it():
    violations = chart([*BEFORE, 0.5, 3.2, 0.5, -0.5, 0.5, 3.2, 0.5, *AFTER])

    assert [(v.rule, v.index) for v in violations] == [(1, 25), (1, 29)]


# -- limits from a baseline, worked by hand ------------------------------------------------------


def test_xbar_r_limits_of_a_small_baseline_match_the_hand_worked_example():
    # Five subgroups of n = 4:
    #   10 12 11 13  mean 11.5  range 3
    #   11 11 12 10  mean 11.0  range 2
    #   12 14 13 13  mean 13.0  range 2
    #    9 11 10 10  mean 10.0  range 2
    #   12 10 11 13  mean 11.5  range 3
    # X̿ = 57 / 5 = 11.4, R̄ = 12 / 5 = 2.4. Table constants for n = 4: A2 0.729, D3 0, D4 2.282,
    # d2 2.059. UCL = 11.4 + 0.729 x 2.4 = 13.1496, LCL = 11.4 - 1.7496 = 9.6504;
    # R chart: UCL = 2.282 x 2.4 = 5.4768, LCL = 0; sigma = 2.4 / 2.059 = 1.16561…
    # Two samples of an unfinished sixth subgroup and a missing value (NaN) are left out.
    values = [10, 12, 11, 13, 11, np.nan, 11, 12, 10, 12, 14, 13, 13, 9, 11, 10, 10]
    values += [12, 10, 11, 13, 99, 99]

    limits = compute_limits(np.array(values, dtype=float), 4, min_points=5)

    assert limits.kind == "xbar_r"
    assert limits.centre == pytest.approx(11.4)
    assert limits.range_centre == pytest.approx(2.4)
    assert limits.ucl == pytest.approx(13.1496)
    assert limits.lcl == pytest.approx(9.6504)
    assert limits.range_ucl == pytest.approx(5.4768)
    assert limits.range_lcl == 0.0
    assert limits.sigma == pytest.approx(2.4 / 2.059)
    assert (limits.baseline_samples, limits.baseline_points) == (22, 5)


def test_xbar_r_limits_with_seven_per_subgroup_have_a_lower_range_limit():
    # Twenty subgroups of n = 7: the samples 0…6 (mean 3, range 6) and 1…7 shifted by 0.5
    # (mean 4.5, range 6), alternating. X̿ = (3 + 4.5) / 2 = 3.75, R̄ = 6.
    # A2 0.419, D3 0.076, D4 1.924: X̄ limits 3.75 ± 2.514, R limits 0.456 and 11.544.
    subgroups = [np.arange(7.0) + (1.5 if i % 2 else 0.0) for i in range(20)]

    limits = compute_limits(np.concatenate(subgroups), 7)

    assert limits.centre == pytest.approx(3.75)
    assert (limits.ucl, limits.lcl) == (pytest.approx(6.264), pytest.approx(1.236))
    assert (limits.range_lcl, limits.range_ucl) == (pytest.approx(0.456), pytest.approx(11.544))


def test_i_mr_limits_of_a_small_baseline_match_the_hand_worked_example():
    # Individuals 5, 7, 6, 8, 4: X̄ = 30 / 5 = 6. Moving ranges 2, 1, 2, 4: MR̄ = 9 / 4 = 2.25.
    # sigma = MR̄ / d2 = 2.25 / 1.128 = 1.994681; I chart 6 ± 3 x 1.994681 = 6 ± 5.984043,
    # so UCL 11.984043 and LCL 0.015957; MR chart UCL = D4 x MR̄ = 3.267 x 2.25 = 7.35075, LCL 0.
    limits = compute_limits(np.array([5.0, 7.0, 6.0, 8.0, 4.0]), 1, min_points=5)

    assert limits.kind == "i_mr"
    assert limits.centre == pytest.approx(6.0)
    assert limits.range_centre == pytest.approx(2.25)
    assert limits.sigma == pytest.approx(1.994681, abs=1e-6)
    assert limits.ucl == pytest.approx(11.984043, abs=1e-6)
    assert limits.lcl == pytest.approx(0.015957, abs=1e-6)
    assert limits.range_ucl == pytest.approx(7.35075)
    assert limits.range_lcl == 0.0


def test_limits_with_an_interval_chart_the_first_samples_of_every_interval():
    # The I-MR example above, each individual followed by two samples that are not charted
    # (one every 3): the same limits. Subgroups of 2 every 5 from 0, 1, …: (0, 1), (5, 6), …
    # have means 0.5, 5.5, …, 95.5 (their mean 48) and ranges 1.
    spaced = np.array([[value, 99.0, -99.0] for value in (5.0, 7.0, 6.0, 8.0, 4.0)]).ravel()
    individuals = compute_limits(spaced, 1, interval=3, min_points=5)
    pairs = compute_limits(np.arange(100.0), 2, interval=5)

    assert individuals.ucl == pytest.approx(11.984043, abs=1e-6)
    assert (individuals.every, individuals.baseline_samples) == (3, 5)
    assert (pairs.centre, pairs.range_centre, pairs.baseline_points) == (48.0, 1.0, 20)
    assert pairs.ucl == pytest.approx(48.0 + 1.880)


def test_a_chart_with_an_interval_judges_only_the_samples_it_charts():
    spaced = replace(UNIT_CHART, interval=4)
    # Every sample between the charted ones is far out; only the charted points matter.
    points = BEFORE + PATTERNS[1] + AFTER
    samples = np.array([[value, 50.0, -50.0, 50.0] for value in points]).ravel()

    violations = chart(list(samples), spaced)

    assert [(v.rule, v.index, v.value) for v in violations] == [(1, 4 * 25, 3.5)]


@pytest.mark.parametrize(
    ("values", "subgroup", "problem"),
    [
        (np.arange(19.0), 1, "holds 19 samples; at least 20"),
        (np.arange(99.0), 5, "holds 19 subgroups of 5; at least 20"),
        (np.full(40, 7.0), 1, "never varies"),
        (np.repeat(np.arange(20.0), 2), 2, "never varies within a subgroup"),
        (np.arange(40.0), 11, "not 11"),
        (np.arange(40.0), 0, "not 0"),
        (np.arange(200.0), (5, 3), "cannot start every 3 samples"),
    ],
)
def test_limits_are_refused_from_baselines_that_cannot_give_them(values, subgroup, problem):
    subgroup, interval = subgroup if isinstance(subgroup, tuple) else (subgroup, 0)
    with pytest.raises(spc.SpcError, match=problem):
        compute_limits(values, subgroup, interval=interval)


def test_every_subgroup_size_has_its_table_constants_consistent_with_d2():
    # A2 = 3 / (d2 √n) to the table's three decimals; D4 = 1 + 3 d3 / d2 needs d3, so only
    # their order is checked here.
    for n, (a2, d3, d4, d2) in spc.CONSTANTS.items():
        assert a2 == pytest.approx(3 / (d2 * math.sqrt(n)), abs=0.0015)
        assert 0.0 <= d3 < 1.0 < d4


def test_baseline_points_beyond_their_own_limits_are_counted():
    rng = np.random.default_rng(3)
    values = rng.normal(50.0, 1.0, 500)
    values[[100, 300]] = [80.0, 20.0]
    limits = compute_limits(values, 1)

    assert spc.points_outside(values, limits) >= 2
    assert spc.points_outside(rng.normal(50.0, 1.0, 500) * 0 + limits.centre, limits) == 0


# -- batching and the reading of the rules ------------------------------------------------------


def reference_rules(points: list[float], limits: Limits) -> list[set[int]]:
    """The rules read literally, point by point: which hold at each point."""
    sigma = limits.point_sigma
    z = [(value - limits.centre) / sigma for value in points]
    held = []
    for j in range(len(points)):

        def last(k, j=j):
            return z[j - k + 1 : j + 1] if j >= k - 1 else None

        rules = set()
        if points[j] > limits.ucl or points[j] < limits.lcl:
            rules.add(1)
        if (w := last(9)) and (all(v > 0 for v in w) or all(v < 0 for v in w)):
            rules.add(2)
        if w := last(6):
            steps = [b - a for a, b in itertools.pairwise(w)]
            if all(s > 0 for s in steps) or all(s < 0 for s in steps):
                rules.add(3)
        if w := last(14):
            steps = [b - a for a, b in itertools.pairwise(w)]
            if all(a * b < 0 for a, b in itertools.pairwise(steps)):
                rules.add(4)
        if (w := last(3)) and (sum(v > 2 for v in w) >= 2 or sum(v < -2 for v in w) >= 2):
            rules.add(5)
        if (w := last(5)) and (sum(v > 1 for v in w) >= 4 or sum(v < -1 for v in w) >= 4):
            rules.add(6)
        if (w := last(15)) and all(abs(v) < 1 for v in w):
            rules.add(7)
        if (
            (w := last(8))
            and all(abs(v) > 1 for v in w)
            and any(v > 1 for v in w)
            and any(v < -1 for v in w)
        ):
            rules.add(8)
        held.append(rules)
    return held


points_strategy = st.lists(
    st.one_of(
        st.sampled_from([-3.5, -2.5, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5, 3.5]),
        st.floats(-4, 4, allow_nan=False),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(points_strategy)
def test_the_vectorised_rules_agree_with_the_rules_read_point_by_point(points):
    held = location_rules(np.array(points, dtype=float), UNIT_CHART)

    assert [{r + 1 for r in range(8) if held[r, j]} for j in range(len(points))] == (
        reference_rules(points, UNIT_CHART)
    )


def stream_of(data, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    values = rng.normal(0.0, 1.0, size)
    values += np.where(rng.random(size) < 0.03, rng.choice([-5.0, 5.0], size), 0.0)  # spikes
    values += np.repeat(rng.normal(0, 0.7, size // 25 + 1), 25)[:size]  # level shifts
    values[rng.random(size) < 0.1] = np.nan  # samples without the signal
    ts = 1_700_000_000_000 + 10 * np.arange(size, dtype=np.int64)
    return ts, np.zeros(size, dtype=np.int64), values


def as_tuples(violations: list[spc.Violation]) -> list[tuple]:
    return [(v.chart, v.rule, v.ts_ms, v.seq, v.value, v.line, v.index) for v in violations]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_violations_are_the_same_whatever_the_batching(data):
    n = data.draw(st.sampled_from([1, 2, 3, 5, 8, 10]), label="subgroup size")
    every = data.draw(st.sampled_from([0, n, n + 1, 3 * n + 2]), label="interval")
    size = data.draw(st.integers(0, 700), label="samples")
    ts, seq, values = stream_of(data, size)
    limits = Limits(
        subgroup_size=n,
        centre=0.0,
        sigma=1.0,
        ucl=3 / math.sqrt(n),
        lcl=-3 / math.sqrt(n),
        range_centre=spc.CONSTANTS.get(n, (0, 0, 0, 1.128))[3],
        range_ucl=3.0 * max(1.0, math.sqrt(n)),
        range_lcl=0.2 if n >= 7 else 0.0,
        interval=every,
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, size), max_size=25), label="cuts"))

    whole = ChartStream(limits).push(ts, seq, values)
    stream, pieces, start = ChartStream(limits), [], 0
    for end in [*cuts, size]:
        for violation in stream.push(ts[start:end], seq[start:end], values[start:end]):
            pieces.append((violation, start))
        start = max(start, end)

    assert as_tuples(whole) == [
        (v.chart, v.rule, v.ts_ms, v.seq, v.value, v.line, v.index + offset) for v, offset in pieces
    ]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_station_s_charts_judged_together_equal_each_chart_alone_whatever_the_batching(data):
    size = data.draw(st.integers(0, 400), label="samples")
    sizes = data.draw(
        st.lists(st.sampled_from([1, 2, 4, 5, 9]), min_size=1, max_size=4), label="subgroups"
    )
    charts = {}
    for number, n in enumerate(sizes):
        _, _, values = stream_of(data, size)
        limits = Limits(
            interval=data.draw(st.sampled_from([0, n + 3]), label="interval"),
            subgroup_size=n,
            centre=0.0,
            sigma=1.0,
            ucl=3 / math.sqrt(n),
            lcl=-3 / math.sqrt(n),
            range_centre=1.0,
            range_ucl=3.0,
            range_lcl=0.0,
            id=number + 1,
            station_id=3,
            signal=f"signal_{number}",
        )
        charts[limits.signal] = (limits, values)
    ts = 1_700_000_000_000 + 10 * np.arange(size, dtype=np.int64)
    seq = np.zeros(size, dtype=np.int64)
    cuts = sorted(data.draw(st.lists(st.integers(0, size), max_size=15), label="cuts"))

    alone = []
    for limits, values in charts.values():
        alone += ChartStream(limits).push(ts, seq, values)
    monitor, together, start = SpcMonitor(), [], 0
    monitor.use([limits for limits, _ in charts.values()])
    for end in [*cuts, size]:
        piece = slice(start, max(start, end))
        batch = {signal: values[piece] for signal, (_, values) in charts.items()}
        for violation in monitor.push(3, ts[piece], seq[piece], batch):
            together.append((violation, start))
        start = max(start, end)

    def key(item: tuple) -> tuple:
        return (item[2], item[3], item[7], item[0], item[1])

    assert sorted(
        [(v.chart, v.rule, v.ts_ms, v.seq, v.value, v.line, v.index, v.signal) for v in alone],
        key=key,
    ) == [
        (v.chart, v.rule, v.ts_ms, v.seq, v.value, v.line, v.index + offset, v.signal)
        for v, offset in together
    ]


# -- the monitor ------------------------------------------------------------------------------


def test_the_monitor_leaves_out_samples_it_has_charted_already():
    monitor = SpcMonitor()
    monitor.use([UNIT_CHART])
    points = np.array(BEFORE + PATTERNS[1] + AFTER)
    ts = 1_000 * np.arange(points.shape[0], dtype=np.int64)
    seq = np.zeros_like(ts)
    half = 26  # just after the point beyond the UCL

    first = monitor.push(7, ts[:half], seq[:half], {"torque": points[:half]})
    # A redelivery of the first half arrives with the second half.
    again = np.concatenate((np.arange(half), np.arange(half, points.shape[0])))
    second = monitor.push(7, ts[again], seq[again], {"torque": points[again]})

    assert fired(first) == [("i", 1)]
    assert second == []


def test_the_monitor_names_the_triggering_sample_and_keeps_history_of_unchanged_limits():
    monitor = SpcMonitor()
    monitor.use([UNIT_CHART])
    values = np.array(BEFORE + PATTERNS[2] + AFTER)
    angle = np.where(np.arange(values.shape[0]) % 2, np.nan, 30.0)
    ts = 1_000 * np.arange(values.shape[0], dtype=np.int64)
    seq = np.zeros_like(ts)
    split = len(BEFORE) + 4  # inside the nine-point run

    before = monitor.push(7, ts[:split], seq[:split], {"torque": values[:split]})
    monitor.use([UNIT_CHART], station_ids=[7])  # a reload with the same limits
    monitor.use([], station_ids=[8])  # another station's reload changes nothing here
    (violation,) = monitor.push(
        7, ts[split:], seq[split:], {"torque": values[split:], "angle": angle[split:]}
    )

    assert before == []
    assert (violation.rule, violation.station_id, violation.signal) == (2, 7, "torque")
    assert violation.index == len(BEFORE) + 8 - split
    expected = {"torque": 0.5} if (len(BEFORE) + 8) % 2 else {"torque": 0.5, "angle": 30.0}
    assert violation.triggering == expected


def test_new_limits_start_a_fresh_chart_and_removed_limits_stop_charting():
    monitor = SpcMonitor()
    monitor.use([UNIT_CHART])
    values = np.array(PATTERNS[2][:5])
    ts = np.arange(5, dtype=np.int64)
    monitor.push(7, ts, np.zeros_like(ts), {"torque": values})

    monitor.use([UNIT_CHART.identified(id=2, station_id=7, signal="torque")])
    later = np.array(PATTERNS[2][5:])  # four more above: nine in all, but not on the new chart
    rest = 10 + np.arange(later.shape[0], dtype=np.int64)
    assert monitor.push(7, rest, np.zeros_like(rest), {"torque": later}) == []

    monitor.use([])
    assert monitor.limits_of(7) == []
    assert monitor.push(7, rest + 100, np.zeros_like(rest), {"torque": later + 9}) == []


# -- what a process in control raises, and what it costs ------------------------------------------


def test_false_alarm_rates_of_a_process_in_control_match_the_textbook(capsys):
    """A normally distributed process that never changes: rule 1 alone fires on 0.27 % of the
    points (the textbook average run length of 370); every rule together far more often. The
    printed table is the one in docs/spc.md (`pytest -s -k false_alarm`)."""
    rng = np.random.default_rng(2026)
    rows = []
    for n in (1, 5):
        limits = replace(compute_limits(rng.normal(0, 1, 200_000), n), station_id=1, signal="x")
        monitor = SpcMonitor()
        monitor.use([limits])
        size = 400_000 * n
        values = rng.normal(0, 1, size)
        ts = np.arange(size, dtype=np.int64)
        seq = np.zeros(size, dtype=np.int64)
        fired_count: dict[tuple[str, int], int] = {}
        started = time.perf_counter()
        for start in range(0, size, 1_000):
            piece = slice(start, start + 1_000)
            for v in monitor.push(1, ts[piece], seq[piece], {"x": values[piece]}):
                fired_count[(v.chart, v.rule)] = fired_count.get((v.chart, v.rule), 0) + 1
        seconds = time.perf_counter() - started
        points = size // n
        location = limits.charts[0]
        rates = {key: count / points for key, count in sorted(fired_count.items())}
        rows.append((n, points, rates, size / seconds))
        assert 0.0020 < rates[(location, 1)] < 0.0035  # 0.27 %: beyond 3 sigma
        assert sum(rates.values()) > 5 * rates[(location, 1)]
    with capsys.disabled():
        for n, points, rates, speed in rows:
            total = sum(rates.values())
            print(
                f"\nn={n}: {points:,} points, one violation per {1 / total:.0f} points "
                f"({speed:,.0f} samples/s, one signal, batches of 1,000)"
            )
            for (chart_name, rule), rate in rates.items():
                print(f"  {chart_name:>4} rule {rule}: {rate:.3%} of points (1 in {1 / rate:,.0f})")


def test_charting_four_signals_costs_less_than_scoring_the_same_samples(capsys):
    """The live scorer charts a station's samples right after scoring them: CPU per sample of
    both, measured in the same run (a shared machine is noisy; the ratio is what holds). Twelve
    stations, four signals each (two I-MR, two X̄-R of 5), a hundred samples per station and
    batch, data in control (about one violation per 45 points, every rule on)."""
    from foresight.scoring import StationScorer

    rng = np.random.default_rng(11)
    signals = ["torque", "angle", "current", "temperature"]
    monitor = SpcMonitor()
    monitor.use(
        [
            replace(
                compute_limits(rng.normal(0, 1, 2_000), 1 if index % 2 == 0 else 5),
                id=station * 4 + index + 1,
                station_id=station,
                signal=signal,
            )
            for station in range(12)
            for index, signal in enumerate(signals)
        ]
    )
    scorers = [StationScorer(station, signals=signals) for station in range(12)]
    batches = [{signal: rng.normal(0, 1, 100) for signal in signals} for _ in range(10)]
    raw = [[{k: float(v[i]) for k, v in batch.items()} for i in range(100)] for batch in batches]
    scoring = charting = 0.0
    samples = 0
    for round_number in range(60):
        ts = 100 * round_number + np.arange(100, dtype=np.int64)
        seq = np.zeros(100, dtype=np.int64)
        for station in range(12):
            pick = (round_number + station) % len(batches)
            started = time.perf_counter()
            scorers[station].score(ts, seq, batches[pick], raw[pick])
            scored = time.perf_counter()
            monitor.push(station, ts, seq, batches[pick])
            charting += time.perf_counter() - scored
            scoring += scored - started
            samples += 100

    with capsys.disabled():
        print(
            f"\nper sample: baseline scoring {scoring / samples * 1e6:.1f} µs, SPC of four "
            f"signals {charting / samples * 1e6:.1f} µs (ratio {charting / scoring:.2f})"
        )
    assert charting < 1.5 * scoring
