"""The point-in-time join: a sample takes the MES state valid at its own instant.

Histories are loaded from the real test database after real MES services wrote it, and kept
current with the very outbox payloads the relay publishes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import statistics
import time
from bisect import bisect_right

import orjson
import pytest
from django.db import connection

from mes import services
from mes.errors import MesError
from mes.models import (
    FirmwareFlash,
    OutboxMessage,
    Shift,
    ShiftPattern,
    ShiftTemplate,
    StationVisit,
    vin_check_digit,
)
from telemetry.enrichment import (
    EMPTY,
    EPOCH,
    Enrichment,
    StateHistory,
    datetime_ms,
    ms_datetime,
)
from tests.factories import (
    LineFactory,
    ProductFactory,
    RouteFactory,
    StationFactory,
    UnitFactory,
    WorkOrderFactory,
)

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)
SINCE = T0 - dt.timedelta(hours=6)
_vins = itertools.count(100_000)


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def ms(instant: dt.datetime) -> int:
    return datetime_ms(instant)


def make_vin() -> str:
    vin = f"1HGBH41J0MN{next(_vins):06d}"
    return vin[:8] + vin_check_digit(vin) + vin[9:]


class Plant:
    """One line with stations, a product, a work order, and units with VINs."""

    def __init__(self, stations: int = 2) -> None:
        self.line = LineFactory()
        self.product = ProductFactory()
        RouteFactory(product=self.product, line=self.line)
        self.stations = [StationFactory(line=self.line) for _ in range(stations)]
        self.work_order = WorkOrderFactory(product=self.product, line=self.line)

    def unit(self):
        return UnitFactory(work_order=self.work_order, vin=make_vin())

    def shifts(self, first_day: dt.date, last_day: dt.date) -> list[Shift]:
        pattern, _ = ShiftPattern.objects.get_or_create(line=self.line, name="Three shifts")
        for name, starts, ends in [
            ("Early", dt.time(6), dt.time(14)),
            ("Late", dt.time(14), dt.time(22)),
            ("Night", dt.time(22), dt.time(6)),
        ]:
            ShiftTemplate.objects.get_or_create(
                pattern=pattern, name=name, starts=starts, ends=ends
            )
        return services.shifts_generate(pattern=pattern, first_day=first_day, last_day=last_day)


def at_unit(unit, shift_id=None, firmware=None) -> Enrichment:
    work_order = unit.work_order
    return Enrichment(
        unit.pk,
        unit.vin,
        unit.serial,
        work_order.pk,
        work_order.product_id,
        shift_id,
        firmware,
    )


def outbox_after(mark: int) -> list[dict]:
    return [
        row.payload
        for row in OutboxMessage.objects.filter(id__gt=mark).order_by("id").only("payload")
    ]


def outbox_mark() -> int:
    last = OutboxMessage.objects.order_by("-id").first()
    return last.id if last else 0


# -- lookups against a loaded history ----------------------------------------------------------


def test_a_sample_takes_the_unit_that_was_at_its_station_at_its_own_instant():
    plant = Plant()
    station, other = plant.stations
    unit = plant.unit()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    services.unit_leave(unit=unit, station=station, at=minutes(10))

    history = StateHistory.load(since=SINCE)

    here = history.station_id(station.code)
    assert here == station.pk
    assert history.lookup(here, ms(minutes(0)) - 1) == EMPTY  # just before it arrived
    assert history.lookup(here, ms(minutes(0))) == at_unit(unit)  # the instant it arrived
    assert history.lookup(here, ms(minutes(5))) == at_unit(unit)
    assert history.lookup(here, ms(minutes(10)) - 1) == at_unit(unit)  # its last millisecond
    assert history.lookup(here, ms(minutes(10))) == EMPTY  # the instant it left
    assert history.lookup(here, ms(minutes(60))) == EMPTY
    assert history.lookup(other.pk, ms(minutes(5))) == EMPTY


def test_microsecond_boundaries_round_the_way_postgresql_compares_them():
    plant = Plant()
    station = plant.stations[0]
    unit = plant.unit()
    arrived = minutes(0) + dt.timedelta(microseconds=400)
    left = minutes(10) + dt.timedelta(microseconds=1)
    services.unit_arrive(unit=unit, station=station, at=arrived)
    services.unit_leave(unit=unit, station=station, at=left)

    history = StateHistory.load(since=SINCE)

    # 09:00:00.000 is before 09:00:00.000400; 09:10:00.000 is before 09:10:00.000001.
    assert history.lookup(station.pk, ms(minutes(0)) - 1) == EMPTY
    assert history.lookup(station.pk, ms(minutes(0))) == EMPTY
    assert history.lookup(station.pk, ms(minutes(0)) + 1) == at_unit(unit)
    assert history.lookup(station.pk, ms(minutes(10))) == at_unit(unit)
    assert history.lookup(station.pk, ms(minutes(10)) + 1) == EMPTY


def test_an_open_visit_covers_every_later_instant_until_the_next_arrival():
    plant = Plant()
    station = plant.stations[0]
    first, second = plant.unit(), plant.unit()
    services.unit_arrive(unit=first, station=station, at=minutes(0))

    history = StateHistory.load(since=SINCE)
    assert history.lookup(station.pk, ms(minutes(60 * 24))) == at_unit(first)

    services.unit_arrive(unit=second, station=station, at=minutes(30))  # closes the first
    history = StateHistory.load(since=SINCE)
    assert history.lookup(station.pk, ms(minutes(30)) - 1) == at_unit(first)
    assert history.lookup(station.pk, ms(minutes(30))) == at_unit(second)


def test_firmware_flashed_during_a_visit_changes_from_that_instant_on():
    plant = Plant()
    bench, station = plant.stations
    unit = plant.unit()
    services.firmware_flash(
        unit=unit, component="EPS", version="v1", at=minutes(-60), station=bench
    )
    services.firmware_flash(
        unit=unit, component="BCM", version="b7", at=minutes(-30), station=bench
    )
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    services.firmware_flash(unit=unit, component="EPS", version="v2", at=minutes(5))
    services.unit_leave(unit=unit, station=station, at=minutes(10))

    history = StateHistory.load(since=SINCE)

    before = history.lookup(station.pk, ms(minutes(5)) - 1)
    after = history.lookup(station.pk, ms(minutes(5)))
    assert before == at_unit(unit, firmware={"EPS": "v1", "BCM": "b7"})
    assert after == at_unit(unit, firmware={"EPS": "v2", "BCM": "b7"})
    assert orjson.loads(after.firmware_json) == {"BCM": "b7", "EPS": "v2"}
    # The firmware travels with the unit, not the station: none after it left.
    assert history.lookup(station.pk, ms(minutes(10))) == EMPTY


def test_a_unit_never_flashed_has_no_firmware():
    plant = Plant()
    station = plant.stations[0]
    unit = plant.unit()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))

    value = StateHistory.load(since=SINCE).lookup(station.pk, ms(minutes(1)))

    assert value.unit_id == unit.pk
    assert value.firmware is None
    assert value.firmware_json is None


def test_the_shift_changes_at_its_boundary_whether_or_not_a_unit_is_there():
    plant = Plant()
    station = plant.stations[0]
    plant.shifts(dt.date(2026, 5, 3), dt.date(2026, 5, 4))
    early = Shift.objects.get(name="Early", business_date=dt.date(2026, 5, 4))
    late = Shift.objects.get(name="Late", business_date=dt.date(2026, 5, 4))
    night = Shift.objects.get(name="Night", business_date=dt.date(2026, 5, 3))
    assert early.starts_at == dt.datetime(2026, 5, 4, 4, 0, tzinfo=dt.UTC)  # 06:00 CEST
    unit = plant.unit()
    services.unit_arrive(unit=unit, station=station, at=late.starts_at - dt.timedelta(minutes=2))

    history = StateHistory.load(since=SINCE)

    assert history.lookup(station.pk, ms(early.starts_at) - 1).shift_id == night.pk
    assert history.lookup(station.pk, ms(early.starts_at)) == Enrichment(
        None, None, None, None, None, early.pk, None
    )
    assert history.lookup(station.pk, ms(late.starts_at) - 1) == at_unit(unit, early.pk)
    assert history.lookup(station.pk, ms(late.starts_at)) == at_unit(unit, late.pk)
    # After the last scheduled shift, no shift.
    assert history.lookup(station.pk, ms(dt.datetime(2026, 5, 6, tzinfo=dt.UTC))).shift_id is None


def test_a_station_without_any_state_gives_an_empty_enrichment():
    plant = Plant(stations=1)
    station = plant.stations[0]

    history = StateHistory.load(since=SINCE)

    assert history.station_id(station.code) == station.pk
    assert history.lookup(station.pk, ms(T0)) is EMPTY
    assert history.station_id("NO-SUCH-STATION") is None
    assert history.lookup(999_999_999, ms(T0)) is EMPTY


def test_visits_that_ended_before_the_window_are_not_loaded():
    plant = Plant()
    station = plant.stations[0]
    old, current = plant.unit(), plant.unit()
    services.unit_arrive(unit=old, station=station, at=minutes(-600))
    services.unit_leave(unit=old, station=station, at=minutes(-590))
    services.unit_arrive(unit=current, station=station, at=minutes(-500))  # open across since

    history = StateHistory.load(since=SINCE)

    assert history.stats()["visits"] == 1
    assert history.lookup(station.pk, ms(SINCE)) == at_unit(current)


# -- keeping it current with MES messages --------------------------------------------------


def _instants(stations, extra: list[int]) -> list[int]:
    """Every boundary the MES tables hold, a millisecond either side, and some more."""
    points = set(extra)
    for arrived, left in StationVisit.objects.values_list("arrived_at", "left_at"):
        points.add(ms(arrived))
        if left is not None:
            points.add(ms(left))
    points.update(ms(at) for at in FirmwareFlash.objects.values_list("flashed_at", flat=True))
    for starts, ends in Shift.objects.values_list("starts_at", "ends_at"):
        points.update((ms(starts), ms(ends)))
    return sorted({p + d for p in points for d in (-1, 0, 1)})


def _assert_same_lookups(live: StateHistory, fresh: StateHistory, stations, instants) -> None:
    mismatches = [
        (station.code, ms_datetime(ts).isoformat(), live.lookup(station.pk, ts), expected)
        for station in stations
        for ts in instants
        if live.lookup(station.pk, ts) != (expected := fresh.lookup(station.pk, ts))
    ]
    assert mismatches == []


class RandomShopFloor:
    """A deterministic random sequence of MES service calls, some of them about the past."""

    COMPONENTS = ("EPS", "BCM", "ECU")

    def __init__(self, plant: Plant, seed: int, units: int = 6) -> None:
        self.plant = plant
        self.rng = random.Random(seed)
        self.units = [plant.unit() for _ in range(units)]
        self.now = T0

    def step(self) -> None:
        rng = self.rng
        self.now += dt.timedelta(seconds=rng.randint(1, 400), microseconds=rng.randint(0, 999_999))
        unit = rng.choice(self.units)
        station = rng.choice(self.plant.stations)
        roll = rng.random()
        try:
            if roll < 0.4:
                services.unit_arrive(unit=unit, station=station, at=self.now)
            elif roll < 0.6:
                visit = StationVisit.objects.filter(left_at__isnull=True).order_by("?").first()
                if visit is not None:
                    services.unit_leave(unit=visit.unit, station=visit.station, at=self.now)
            elif roll < 0.85:
                # Late flashes too. A station is always named: the outbox publishes nothing
                # for a flash while the unit is at no station (see docs/telemetry-join.md).
                late = dt.timedelta(seconds=rng.choice([0, 0, rng.randint(1, 3600)]))
                services.firmware_flash(
                    unit=unit,
                    component=rng.choice(self.COMPONENTS),
                    version=f"v{rng.randint(1, 9)}",
                    at=self.now - late,
                    station=station,
                )
            else:
                # A legacy MES reporting an arrival after the fact (refused when it would
                # overlap what the MES already knows).
                late = dt.timedelta(seconds=rng.randint(1, 1800))
                services.unit_arrive(unit=unit, station=station, at=self.now - late)
        except MesError:
            pass


@pytest.mark.parametrize("seed", [3, 17, 2026])
def test_applying_the_outbox_reproduces_what_a_fresh_load_reads(seed):
    plant = Plant(stations=3)
    floor = RandomShopFloor(plant, seed)
    plant.shifts(dt.date(2026, 5, 3), dt.date(2026, 5, 4))
    for _ in range(40):
        floor.step()
    before_load = outbox_after(0)
    live = StateHistory.load(since=SINCE)
    mark = outbox_mark()
    for _ in range(160):
        floor.step()
    plant.shifts(dt.date(2026, 5, 5), dt.date(2026, 5, 5))
    messages = outbox_after(mark)
    assert {m["kind"] for m in messages} >= {
        "visit.started",
        "visit.ended",
        "firmware.flashed",
        "shift.scheduled",
    }

    # The stream may start before the load: messages the load already saw change nothing.
    assert [live.apply(message) for message in before_load] == [[] for _ in before_load]
    changes = [live.apply(message) for message in messages]
    assert any(changes)
    fresh = StateHistory.load(since=SINCE)
    extra = sorted(
        random.Random(seed).randrange(ms(SINCE), ms(floor.now) + 3_600_000) for _ in range(300)
    )
    instants = _instants(plant.stations, extra)
    _assert_same_lookups(live, fresh, plant.stations, instants)

    # Redelivered, every message is a no-op and the answers stay the same.
    assert [live.apply(message) for message in messages] == [[] for _ in messages]
    _assert_same_lookups(live, fresh, plant.stations, instants)


def test_the_changed_intervals_are_exactly_where_the_answers_changed():
    """Whatever a message changes, lookups outside the returned intervals stay the same."""
    plant = Plant(stations=3)
    floor = RandomShopFloor(plant, seed=99)
    plant.shifts(dt.date(2026, 5, 4), dt.date(2026, 5, 4))
    live = StateHistory.load(since=SINCE)
    mark = outbox_mark()
    for _ in range(120):
        floor.step()
    instants = _instants(plant.stations, [])
    for message in outbox_after(mark):
        before = {(s.pk, ts): live.lookup(s.pk, ts) for s in plant.stations for ts in instants}
        changed = live.apply(message)
        for (station_id, ts), value in before.items():
            inside = any(
                sid == station_id and start <= ts and (end is None or ts < end)
                for sid, start, end in changed
            )
            assert inside or live.lookup(station_id, ts) == value, (message, ts)
        for station_id, start, end in changed:  # and each interval does change something
            assert (
                before[(station_id, start)] != live.lookup(station_id, start)
                if ((station_id, start) in before)
                else True
            )
            assert end is None or end > start


def test_a_visit_reported_late_returns_the_interval_it_reattributes():
    plant = Plant()
    station = plant.stations[0]
    first, late = plant.unit(), plant.unit()
    services.unit_arrive(unit=first, station=station, at=minutes(0))
    services.unit_leave(unit=first, station=station, at=minutes(10))
    live = StateHistory.load(since=SINCE)
    mark = outbox_mark()

    # At 09:40 the legacy MES reports that `late` was there from 09:20 to 09:25.
    services.unit_arrive(unit=late, station=station, at=minutes(20))
    services.unit_leave(unit=late, station=station, at=minutes(25))
    arrived, left = outbox_after(mark)

    assert live.apply(arrived) == [(station.pk, ms(minutes(20)), None)]
    assert live.apply(left) == [(station.pk, ms(minutes(25)), None)]
    assert live.lookup(station.pk, ms(minutes(20))) == at_unit(late)
    assert live.lookup(station.pk, ms(minutes(25))) == EMPTY


def test_a_departure_reported_late_returns_the_interval_from_it():
    plant = Plant()
    station = plant.stations[0]
    unit = plant.unit()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    live = StateHistory.load(since=SINCE)
    mark = outbox_mark()

    services.unit_leave(unit=unit, station=station, at=minutes(25))
    (left,) = outbox_after(mark)

    # Samples stored after 09:25 carried the unit; they no longer should.
    assert live.apply(left) == [(station.pk, ms(minutes(25)), None)]


def test_a_flash_reported_late_returns_bounded_intervals_at_every_station_the_unit_was():
    plant = Plant()
    first, second = plant.stations
    unit = plant.unit()
    services.firmware_flash(unit=unit, component="EPS", version="v1", at=minutes(-5), station=first)
    services.unit_arrive(unit=unit, station=first, at=minutes(0))
    services.unit_arrive(unit=unit, station=second, at=minutes(10))
    services.unit_leave(unit=unit, station=second, at=minutes(20))
    live = StateHistory.load(since=SINCE)
    mark = outbox_mark()

    services.firmware_flash(unit=unit, component="EPS", version="v2", at=minutes(5))
    (flashed,) = outbox_after(mark)

    assert live.apply(flashed) == [
        (first.pk, ms(minutes(5)), ms(minutes(10))),
        (second.pk, ms(minutes(10)), ms(minutes(20))),
    ]
    assert live.lookup(second.pk, ms(minutes(15))).firmware == {"EPS": "v2"}


def test_a_scheduled_shift_changes_every_station_of_its_line_once():
    plant = Plant(stations=2)
    live = StateHistory.load(since=SINCE)
    mark = outbox_mark()

    plant.shifts(dt.date(2026, 5, 4), dt.date(2026, 5, 4))
    early = Shift.objects.get(name="Early")
    messages = [m for m in outbox_after(mark) if m["shift"] == early.pk]

    assert [live.apply(m) for m in messages] == [
        [(s.pk, ms(early.starts_at), ms(early.ends_at)) for s in plant.stations],
        [],  # the same shift, announced on the line's next station
    ]


def test_known_until_follows_the_stations_messages_and_the_consumer():
    plant = Plant()
    station, other = plant.stations
    live = StateHistory.load(since=SINCE)
    loaded = live.known_until(station.pk)
    assert abs(loaded - time.time() * 1000) < 60_000
    mark = outbox_mark()

    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    services.unit_arrive(unit=plant.unit(), station=station, at=future)
    (arrived,) = outbox_after(mark)
    live.apply(arrived)

    # A fact dated in the future vouches for nothing beyond now.
    assert loaded < live.known_until(station.pk) <= time.time() * 1000
    assert live.known_until(other.pk) == loaded
    live.advance(ms(future))
    assert live.known_until(other.pk) == ms(future)


def test_a_unit_first_seen_after_the_load_brings_its_earlier_flashes_from_the_database():
    plant = Plant()
    station = plant.stations[0]
    live = StateHistory.load(since=SINCE)
    mark = outbox_mark()
    unit = plant.unit()
    # Flashed while at no station (the message goes to every station of the line), then the
    # arrival as an older relay would have published it, without ids: the database fills in.
    services.firmware_flash(unit=unit, component="ECU", version="4.2.1", at=minutes(-1))
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    arrived = next(m for m in outbox_after(mark) if m["kind"] == "visit.started")
    arrived = {
        k: v for k, v in arrived.items() if k not in {"unit_id", "work_order_id", "product_id"}
    }

    assert live.needs_lookup(arrived)
    live.prepare(arrived)  # the worker runs this with asyncio.to_thread
    assert not live.needs_lookup(arrived)
    assert live.apply(arrived) == [(station.pk, ms(minutes(0)), None)]
    assert live.lookup(station.pk, ms(minutes(1))) == at_unit(unit, firmware={"ECU": "4.2.1"})


def test_payloads_carrying_ids_need_no_database():
    plant = Plant()
    station = plant.stations[0]
    live = StateHistory.load(since=SINCE)
    mark = outbox_mark()
    unit = plant.unit()
    services.unit_arrive(unit=unit, station=station, at=minutes(0))
    (arrived,) = outbox_after(mark)
    arrived |= {
        "unit_id": unit.pk,
        "work_order_id": unit.work_order_id,
        "product_id": unit.work_order.product_id,
    }

    assert not live.needs_lookup(arrived)
    live.apply(arrived)
    assert live.lookup(station.pk, ms(minutes(1))) == at_unit(unit)


def test_a_station_created_after_the_load_is_found_in_the_database():
    plant = Plant(stations=1)
    plant.shifts(dt.date(2026, 5, 4), dt.date(2026, 5, 4))
    live = StateHistory.load(since=SINCE)
    newcomer = StationFactory(line=plant.line)

    assert live.station_id(newcomer.code) is None
    assert live.resolve_station(newcomer.code) == newcomer.pk
    assert live.station_id(newcomer.code) == newcomer.pk
    early = Shift.objects.get(name="Early")
    assert live.lookup(newcomer.pk, ms(early.starts_at)).shift_id == early.pk
    assert live.resolve_station("NEVER-HEARD-OF") is None
    assert not live.needs_lookup({"kind": "visit.started", "station": "NEVER-HEARD-OF"})


def test_pruning_forgets_what_ended_before_the_horizon_and_keeps_everything_after():
    plant = Plant()
    station = plant.stations[0]
    units = [plant.unit() for _ in range(5)]
    for index, unit in enumerate(units):
        services.unit_arrive(unit=unit, station=station, at=minutes(10 * index))
    history = StateHistory.load(since=SINCE)
    window = history.loaded_ms - ms(SINCE)
    horizon = ms(minutes(25))
    after = [ms(minutes(m)) for m in range(25, 60)]
    expected = [history.lookup(station.pk, ts) for ts in after]

    dropped = history.prune(now_ms=horizon + window)

    assert dropped == 2  # left at 09:10 and 09:20
    assert history.horizon_ms == horizon
    assert [history.lookup(station.pk, ts) for ts in after] == expected
    assert history.lookup(station.pk, ms(minutes(0))) == at_unit(units[2])  # the state at it


# -- the same, without the database: any order of facts, even contradicting ones ------------


def _rebuilt(history: StateHistory, since: dt.datetime) -> StateHistory:
    """A history built in one go from the facts `history` holds (what a load would read)."""

    def instant(us: int | None) -> dt.datetime | None:
        return None if us is None else EPOCH + dt.timedelta(microseconds=us)

    return StateHistory.from_rows(
        since=since,
        loaded_at=ms_datetime(history.loaded_ms),
        stations=[(s.station_id, s.code, s.line_id) for s in history._stations.values()],
        units=[
            (u.unit_id, u.serial, u.vin, u.work_order_id, u.product_id)
            for u in history._units.values()
        ],
        visits=[
            (v.visit_id, v.station_id, v.unit.unit_id, instant(v.start_us), instant(v.end_us))
            for v in history._visits.values()
        ],
        flashes=[
            (unit_id, component, version, instant(at_us))
            for unit_id, firmware in history._firmware.items()
            for (component, at_us), version in firmware.flashes.items()
        ],
        shifts=[
            (shift_id, line_id, instant(start), instant(end))
            for line_id, shifts in history._shifts.items()
            for shift_id, (start, end) in shifts.bounds.items()
        ],
    )


def _crafted_messages(rng: random.Random, count: int):
    """MES messages as a confused legacy MES might send them: corrections, overlaps, moves."""
    visits: dict[int, str] = {}
    shifts: list[int] = []

    def when() -> str:
        offset = dt.timedelta(minutes=rng.randint(0, 600), microseconds=rng.randint(0, 999_999))
        return (T0 + offset).isoformat()

    for _ in range(count):
        unit = rng.randint(1, 5)
        ids = {"unit": f"SN{unit}", "unit_id": unit, "work_order_id": 70, "product_id": 30}
        roll = rng.random()
        if roll < 0.35 or not visits:
            visit = rng.choice([*visits, 1000 + len(visits)]) if visits else 1000
            station = rng.choice(["X1", "X2", "X3"])
            visits[visit] = station
            yield {"kind": "visit.started", "station": station, "visit": visit, **ids, "at": when()}
        elif roll < 0.6:
            visit = rng.choice(list(visits))
            yield {"kind": "visit.ended", "station": visits[visit], "visit": visit, "at": when()}
        elif roll < 0.85:
            yield {
                "kind": "firmware.flashed",
                "station": rng.choice(["X1", "X2", "X3"]),
                **ids,
                "component": rng.choice(["EPS", "BCM"]),
                "version": str(rng.randint(1, 4)),
                "at": when(),
            }
        else:
            shift = rng.choice([*shifts, len(shifts) + 1])
            shifts.append(shift)
            starts = dt.datetime.fromisoformat(when())
            yield {
                "kind": "shift.scheduled",
                "station": rng.choice(["X1", "X2", "X3"]),
                "shift": shift,
                "starts_at": starts.isoformat(),
                "ends_at": (starts + dt.timedelta(minutes=rng.randint(30, 480))).isoformat(),
            }


@pytest.mark.django_db(databases=[])
@pytest.mark.parametrize("seed", range(12))
def test_incremental_timelines_equal_a_full_rebuild_whatever_the_messages_say(seed):
    rng = random.Random(seed)
    since = T0 - dt.timedelta(hours=1)
    stations = [(1, "X1", 1), (2, "X2", 1), (3, "X3", 2)]
    history = StateHistory.from_rows(
        since=since, loaded_at=T0, stations=stations, units=[], visits=[], flashes=[], shifts=[]
    )
    grid = list(range(ms(T0) - 60_000, ms(T0) + 11 * 3_600_000, 7 * 60_000 + 13))
    for message in _crafted_messages(rng, 250):
        assert not history.needs_lookup(message)
        before = {(sid, ts): history.lookup(sid, ts) for sid, _, _ in stations for ts in grid}
        changed = history.apply(message)
        for (sid, ts), value in before.items():
            covered = any(
                c == sid and start <= ts and (end is None or ts < end) for c, start, end in changed
            )
            assert covered or history.lookup(sid, ts) == value, (message, sid, ts)
        assert history.apply(message) == []  # redelivered

    rebuilt = _rebuilt(history, since)
    points = {p + d for s in history._stations.values() for p in s.starts[1:] for d in (-1, 0, 1)}
    points |= {p + d for s in rebuilt._stations.values() for p in s.starts[1:] for d in (-1, 0, 1)}
    mismatches = [
        (sid, ts)
        for sid, _, _ in stations
        for ts in sorted(points | set(grid))
        if history.lookup(sid, ts) != rebuilt.lookup(sid, ts)
    ]
    assert mismatches == []
    # Segments stay minimal: no two neighbours give the same answer.
    for station in history._stations.values():
        assert all(a != b for a, b in itertools.pairwise(station.values))


@pytest.mark.django_db(databases=[])
def test_a_span_too_short_for_the_change_falls_back_to_recomputing_onwards():
    """Guard for facts that reach further than the span a handler computed: when the answer
    at the span's end changed, everything after it is recomputed."""
    since = T0 - dt.timedelta(hours=1)
    history = StateHistory.from_rows(
        since=since,
        loaded_at=T0,
        stations=[(1, "X1", 1)],
        units=[(7, "SN7", None, 70, 30), (8, "SN8", None, 70, 30)],
        visits=[(1, 1, 7, minutes(0), minutes(10)), (2, 1, 8, minutes(30), minutes(40))],
        flashes=[],
        shifts=[],
    )
    visit = history._visits[1]
    visit.set_times(visit.start_us, None)  # the raw fact changes: the visit is open now

    changed = history._refresh({1: (ms(minutes(0)), ms(minutes(12)))})

    assert changed == [(1, ms(minutes(10)), ms(minutes(30)))]
    assert history.lookup(1, ms(minutes(20))).unit_id == 7
    assert history.lookup(1, ms(minutes(35))).unit_id == 8  # the later arrival still wins


# -- speed ---------------------------------------------------------------------------------


def _synthetic_history(stations: int, visits: int) -> tuple[StateHistory, dt.datetime]:
    """`stations` stations, `visits` one-minute visits each, two flashes per unit and 8-hour
    shifts, built through the same path as a database load."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    minute = dt.timedelta(minutes=1)
    end = start + visits * minute
    station_rows = [(s, f"BENCH{s}", 1 + s // 5) for s in range(1, stations + 1)]
    units, visit_rows, flashes = [], [], []
    for s in range(1, stations + 1):
        for v in range(visits):
            unit_id = s * 1_000_000 + v
            arrived = start + v * minute
            units.append((unit_id, f"SN{unit_id}", f"VIN{unit_id:014d}", 7, 3))
            visit_rows.append(
                (unit_id, s, unit_id, arrived, arrived + 50 * dt.timedelta(seconds=1))
            )
            flashes.append((unit_id, "EPS", "v1", arrived - minute))
            flashes.append((unit_id, "EPS", "v2", arrived + dt.timedelta(seconds=20)))
    shifts = []
    shift_id = itertools.count(1)
    for line in {row[2] for row in station_rows}:
        at = start - dt.timedelta(hours=8)
        while at < end + dt.timedelta(hours=8):
            shifts.append((next(shift_id), line, at, at + dt.timedelta(hours=8)))
            at += dt.timedelta(hours=8)
    history = StateHistory.from_rows(
        since=start,
        loaded_at=end,
        stations=station_rows,
        units=units,
        visits=visit_rows,
        flashes=flashes,
        shifts=shifts,
    )
    return history, end


def _best_ns_per_item(run, items) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter_ns()
        run(items)
        best = min(best, time.perf_counter_ns() - began)
    return best / len(items)


@pytest.mark.django_db(databases=[])
def test_a_lookup_takes_well_under_a_microsecond_with_ten_stations_of_ten_thousand_visits(
    capsys,
):
    started = time.perf_counter()
    history, end = _synthetic_history(stations=10, visits=10_000)
    built_s = time.perf_counter() - started
    rng = random.Random(1)
    first, last = ms(end) - 10_000 * 60_000, ms(end)
    assert history.lookup(3, first + 30_000).firmware == {"EPS": "v2"}
    # As a live stream or a replayed backlog asks: each station's samples in time order
    # (100 Hz), stations interleaved by message.
    streams = {s: rng.randint(first, last - 200_000) for s in range(1, 11)}
    ordered = [(s, streams[s] + 10 * i) for i in range(100_000) for s in range(1, 11)]
    # The worst case: every lookup at a random station and instant (no cache locality).
    scattered = [(rng.randint(1, 10), rng.randint(first, last)) for _ in range(1_000_000)]

    lookup = history.lookup

    def lookups(probes):
        for station_id, ts in probes:
            lookup(station_id, ts)

    def loop_only(probes):
        for _station_id, _ts in probes:
            pass

    def inline(probes):  # what a batch loop does with timeline(): one station per message
        starts, values = history.timeline(5)
        for _station_id, ts in probes:
            values[bisect_right(starts, ts) - 1]

    ordered_ns = _best_ns_per_item(lookups, ordered)
    scattered_ns = _best_ns_per_item(lookups, scattered)
    loop_ns = _best_ns_per_item(loop_only, ordered)
    inline_ns = _best_ns_per_item(inline, [(5, ts) for _, ts in ordered])

    # MES messages: live arrivals and departures at the end, late flashes in the middle.
    arrivals, flashes = [], []
    for i in range(20):
        at = end + dt.timedelta(minutes=i)
        visit = {"station": "BENCH5", "visit": 90_000_000 + i, "unit": f"SN{5_000_010 + i}"}
        for message in (
            {"kind": "visit.started", **visit, "at": at.isoformat()},
            {"kind": "visit.ended", **visit, "at": (at + dt.timedelta(seconds=50)).isoformat()},
        ):
            began = time.perf_counter_ns()
            assert history.apply(message)
            arrivals.append(time.perf_counter_ns() - began)
        flashed_at = end - dt.timedelta(minutes=5000 + 7 * i) + dt.timedelta(seconds=30)
        message = {
            "kind": "firmware.flashed",
            "station": "BENCH5",
            "unit": f"SN{5_005_000 - 7 * i}",
            "component": "BCM",
            "version": "b1",
            "at": flashed_at.isoformat(),
        }
        began = time.perf_counter_ns()
        assert len(history.apply(message)) == 1
        flashes.append(time.perf_counter_ns() - began)

    with capsys.disabled():
        print(
            f"\n[enrichment] 10 stations x 10k visits, {history.stats()['segments']} segments, "
            f"built in {built_s:.2f} s. lookup: {ordered_ns:.0f} ns in time order "
            f"(loop overhead {loop_ns:.0f} ns), {scattered_ns:.0f} ns scattered, "
            f"{inline_ns:.0f} ns inline bisect. apply: live arrival/departure median "
            f"{statistics.median(arrivals) / 1000:.0f} µs, late flash median "
            f"{statistics.median(flashes) / 1000:.0f} µs"
        )
    assert ordered_ns < 2_000
    assert scattered_ns < 5_000


BENCH_VISITS = int(os.environ.get("AEGIS_BENCH_VISITS", "1560"))  # 26 h at one per minute


def test_loading_the_history_of_ten_busy_stations_from_the_database(capsys):
    plant = Plant(stations=10)
    start = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    count = 10 * BENCH_VISITS
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO mes_unit (serial, vin, work_order_id, status, created_at, updated_at)"
            " SELECT 'BULK' || g, NULL, %(wo)s, 'in_progress', now(), now()"
            " FROM generate_series(0, %(n)s - 1) AS g",
            {"wo": plant.work_order.pk, "n": count},
        )
        # One-minute cycles, 50 s at each station; the ten stations work in parallel.
        cursor.execute(
            "INSERT INTO mes_stationvisit (unit_id, station_id, arrived_at, left_at)"
            " SELECT u.id, (%(ids)s::int[])[(g %% 10) + 1],"
            "        %(start)s + (g / 10) * interval '1 minute',"
            "        %(start)s + (g / 10) * interval '1 minute' + interval '50 seconds'"
            " FROM generate_series(0, %(n)s - 1) AS g JOIN mes_unit AS u ON u.serial = 'BULK' || g",
            {"ids": [s.pk for s in plant.stations], "start": start, "n": count},
        )
        cursor.execute(
            "INSERT INTO mes_firmwareflash (unit_id, station_id, component, version, flashed_at)"
            " SELECT v.unit_id, v.station_id, 'EPS', x.version, v.arrived_at + x.shift"
            " FROM mes_stationvisit AS v CROSS JOIN (VALUES"
            "   ('v1', interval '-1 minute'), ('v2', interval '20 seconds')) AS x(version, shift)"
        )
    plant.shifts(start.date(), start.date() + dt.timedelta(days=BENCH_VISITS // 1440 + 1))

    began = time.perf_counter()
    history = StateHistory.load(since=start - dt.timedelta(hours=1))
    load_s = time.perf_counter() - began

    assert history.stats()["visits"] == count
    station = plant.stations[3]
    value = history.lookup(station.pk, ms(start + dt.timedelta(seconds=30)))
    assert (value.serial, value.firmware) == ("BULK3", {"EPS": "v2"})
    with capsys.disabled():
        print(
            f"\n[enrichment] load from PostgreSQL: {count} visits, {count} units, "
            f"{2 * count} flashes in {load_s:.2f} s ({history.stats()['segments']} segments)"
        )
