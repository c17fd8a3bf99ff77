"""Shift calendars in the site's local time: correct across DST, never overlapping."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.db import IntegrityError, transaction

from mes import services
from mes.errors import Conflict
from mes.models import Shift, ShiftPattern, ShiftTemplate
from tests.factories import LineFactory, SiteFactory

pytestmark = pytest.mark.django_db
BERLIN_SPRING_FORWARD = dt.date(2026, 3, 28)  # clocks go 02:00 → 03:00 in the night after
BERLIN_FALL_BACK = dt.date(2026, 10, 24)  # clocks go 03:00 → 02:00 in the night after


def _pattern(timezone: str = "Europe/Berlin") -> ShiftPattern:
    line = LineFactory(area__site=SiteFactory(timezone=timezone))
    pattern = ShiftPattern.objects.create(line=line, name="Three shifts")
    for name, starts, ends, breaks in [
        ("Early", dt.time(6), dt.time(14), [{"name": "Lunch", "starts": "11:30", "minutes": 30}]),
        ("Late", dt.time(14), dt.time(22), []),
        ("Night", dt.time(22), dt.time(6), [{"name": "Break", "starts": "02:30", "minutes": 30}]),
    ]:
        ShiftTemplate.objects.create(
            pattern=pattern, name=name, starts=starts, ends=ends, breaks=breaks
        )
    return pattern


def _hours(shift: Shift) -> float:
    return (shift.ends_at - shift.starts_at).total_seconds() / 3600


def test_the_night_shift_is_seven_hours_when_clocks_spring_forward():
    pattern = _pattern()
    services.shifts_generate(
        pattern=pattern, first_day=BERLIN_SPRING_FORWARD, last_day=BERLIN_SPRING_FORWARD
    )
    night = Shift.objects.get(name="Night")
    assert _hours(night) == 7
    assert night.starts_at == dt.datetime(2026, 3, 28, 21, 0, tzinfo=dt.UTC)  # 22:00 CET
    assert night.ends_at == dt.datetime(2026, 3, 29, 4, 0, tzinfo=dt.UTC)  # 06:00 CEST
    assert [_hours(s) for s in Shift.objects.exclude(name="Night")] == [8, 8]


def test_the_night_shift_is_nine_hours_when_clocks_fall_back():
    pattern = _pattern()
    services.shifts_generate(pattern=pattern, first_day=BERLIN_FALL_BACK, last_day=BERLIN_FALL_BACK)
    night = Shift.objects.get(name="Night")
    assert _hours(night) == 9
    # The break at 02:30 local happens in the repeated hour: the first 02:30 (CEST) counts.
    planned_stop = night.breaks.get()
    assert planned_stop.starts_at == dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)


def test_consecutive_shifts_meet_without_gap_or_overlap_across_a_dst_week():
    pattern = _pattern()
    services.shifts_generate(
        pattern=pattern,
        first_day=BERLIN_FALL_BACK - dt.timedelta(days=3),
        last_day=BERLIN_FALL_BACK + dt.timedelta(days=3),
    )
    shifts = list(Shift.objects.order_by("starts_at"))
    assert len(shifts) == 21
    for earlier, later in itertools.pairwise(shifts):
        assert earlier.ends_at == later.starts_at


def test_generating_again_adds_nothing():
    pattern = _pattern()
    day = dt.date(2026, 6, 1)
    assert len(services.shifts_generate(pattern=pattern, first_day=day, last_day=day)) == 3
    assert services.shifts_generate(pattern=pattern, first_day=day, last_day=day) == []


def test_the_database_refuses_overlapping_shifts_on_a_line():
    pattern = _pattern()
    services.shifts_generate(
        pattern=pattern, first_day=dt.date(2026, 6, 1), last_day=dt.date(2026, 6, 1)
    )
    early = Shift.objects.get(name="Early")
    with transaction.atomic(), pytest.raises(IntegrityError, match="no_overlap_on_line"):
        Shift.objects.create(
            line=early.line,
            name="Overtime",
            business_date=early.business_date,
            starts_at=early.ends_at - dt.timedelta(hours=1),
            ends_at=early.ends_at + dt.timedelta(hours=1),
        )


def test_a_pattern_that_would_overlap_its_line_is_refused_as_a_conflict():
    pattern = _pattern()
    day = dt.date(2026, 6, 1)
    services.shifts_generate(pattern=pattern, first_day=day, last_day=day)
    second = ShiftPattern.objects.create(line=pattern.line, name="Weekend crew")
    ShiftTemplate.objects.create(
        pattern=second, name="Long day", starts=dt.time(8), ends=dt.time(20)
    )
    with pytest.raises(Conflict, match="overlaps another shift"):
        services.shifts_generate(pattern=second, first_day=day, last_day=day)
    assert Shift.objects.count() == 3
