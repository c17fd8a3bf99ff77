"""The SQL computation of OEE agrees with a plain Python one on a messy, seeded random history:
stops across shift changes and breaks, stops around the micro-stop threshold, planned
downtime, counts of one unit a minute and long counts across shift changes.

The Python below is written from the definitions in docs/oee.md with lists and fractions, not
from the SQL: two implementations that must agree to the last rounded digit.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest

from mes.models import DowntimeEvent, ProductionCount, ScrapReason
from tests.mes.test_oee import cell, shift, view

pytestmark = pytest.mark.django_db

MICROSTOP = dt.timedelta(seconds=120)
IDEAL = Fraction(45)  # seconds per unit


def seconds(span: dt.timedelta) -> Fraction:
    return Fraction(span // dt.timedelta(microseconds=1), 1_000_000)


def subtract(pieces: list[tuple], cuts: list[tuple]) -> list[tuple]:
    """The parts of `pieces` not covered by any of `cuts` (all [start, end) pairs)."""
    for cut_start, cut_end in cuts:
        remaining = []
        for start, end in pieces:
            if cut_end <= start or cut_start >= end:
                remaining.append((start, end))
                continue
            if start < cut_start:
                remaining.append((start, cut_start))
            if cut_end < end:
                remaining.append((cut_end, end))
        pieces = remaining
    return pieces


def overlap(start, end, pieces) -> Fraction:
    return sum(
        (seconds(min(end, b) - max(start, a)) for a, b in pieces if min(end, b) > max(start, a)),
        Fraction(0),
    )


def units_by(units: int, start, end, instant) -> int:
    """Units of a count made evenly over [start, end] done by `instant`."""
    if instant >= end:
        return units
    if instant <= start:
        return 0
    return int(units * seconds(instant - start) / seconds(end - start))


def rounded(value: Fraction, places: str) -> Decimal:
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(
        Decimal(places), rounding=ROUND_HALF_UP
    )


def random_history(rng: random.Random):
    c = cell(ideal_cycle="45.00", microstop_seconds=120)
    shifts = []
    for day in ("2025-05-05", "2025-05-06"):
        next_day = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
        shifts += [
            shift(c.line, day, "06:00", "14:00", name="Early", breaks=[(day, "10:00", 30)]),
            shift(c.line, day, "14:00", "22:00", name="Late", breaks=[(day, "18:00", 30)]),
            shift(c.line, day, "22:00", "06:00", name="Night", breaks=[(next_day, "02:00", 30)]),
        ]
    begin, finish = shifts[0].starts_at, shifts[-1].ends_at
    stops = []
    at = begin + dt.timedelta(minutes=rng.randint(1, 40))
    while at < finish:
        length = rng.choice(
            [
                dt.timedelta(seconds=rng.randint(5, 119)),
                MICROSTOP,
                dt.timedelta(seconds=rng.randint(121, 3600)),
            ]
        )
        planned = rng.random() < 0.15
        stops.append(
            DowntimeEvent.objects.create(
                station=c.station, started_at=at, ended_at=at + length, planned=planned
            )
        )
        at += length + dt.timedelta(minutes=rng.randint(5, 120))
    scrap_reason = ScrapReason.objects.create(code="NOK", name="Not OK")
    counts = []
    at = begin - dt.timedelta(minutes=7)  # the first count starts before the first shift
    while at < finish:
        length = dt.timedelta(minutes=rng.choice([1, 1, 1, 37, 150]))
        good, scrap = rng.randint(0, 4) * length.seconds // 60, rng.choice([0, 0, 0, 1, 3])
        counts.append(
            ProductionCount.objects.create(
                station=c.station,
                work_order=c.work_order,
                interval_start=at,
                interval_end=at + length,
                good=good,
                scrap=scrap,
                scrap_reason=scrap_reason if scrap else None,
            )
        )
        at += length
    return c, shifts, stops, counts


def expected_row(a_shift, stops, counts) -> dict:
    breaks = [(b.starts_at, b.ends_at) for b in a_shift.breaks.all()]
    planned_stops = [(s.started_at, s.ended_at) for s in stops if s.planned]
    production = subtract([(a_shift.starts_at, a_shift.ends_at)], breaks + planned_stops)
    planned = overlap(a_shift.starts_at, a_shift.ends_at, production)
    downtime = small = Fraction(0)
    for s in stops:
        if s.planned:
            continue
        lost = overlap(s.started_at, s.ended_at, production)
        if s.ended_at - s.started_at >= MICROSTOP:
            downtime += lost
        else:
            small += lost
    good = sum(
        units_by(c.good, c.interval_start, c.interval_end, a_shift.ends_at)
        - units_by(c.good, c.interval_start, c.interval_end, a_shift.starts_at)
        for c in counts
    )
    scrap = sum(
        units_by(c.scrap, c.interval_start, c.interval_end, a_shift.ends_at)
        - units_by(c.scrap, c.interval_start, c.interval_end, a_shift.starts_at)
        for c in counts
    )
    run = planned - downtime
    total = good + scrap
    availability = run / planned
    performance = IDEAL * total / run
    quality = Fraction(good, total)
    return {
        "planned_seconds": rounded(planned, "0.001"),
        "downtime_seconds": rounded(downtime, "0.001"),
        "small_stop_seconds": rounded(small, "0.001"),
        "run_seconds": rounded(run, "0.001"),
        "total_count": total,
        "good_count": good,
        "scrap_count": scrap,
        "availability": rounded(availability, "0.000001"),
        "performance": rounded(performance, "0.000001"),
        "quality": rounded(quality, "0.000001"),
        "oee": rounded(availability * performance * quality, "0.000001"),
    }


@pytest.mark.parametrize("seed", [6, 2025])
def test_views_agree_with_an_independent_python_computation(seed):
    c, shifts, stops, counts = random_history(random.Random(seed))

    rows = {row["shift_start"]: row for row in view("v_oee_shift", station=c.station.code)}

    assert len(rows) == len(shifts) == 6
    for a_shift in shifts:
        expected = expected_row(a_shift, stops, counts)
        got = {column: rows[a_shift.starts_at][column] for column in expected}
        assert got == expected, (a_shift.name, a_shift.business_date)
    # Nothing is copied into two shifts: every unit of the counts inside the shifts is counted
    # once (the first count starts 7 minutes before the first shift: its earlier units are not).
    inside = sum(
        units_by(n, c.interval_start, c.interval_end, shifts[-1].ends_at)
        - units_by(n, c.interval_start, c.interval_end, shifts[0].starts_at)
        for c in counts
        for n in (c.good, c.scrap)
    )
    assert sum(row["total_count"] for row in rows.values()) == inside
