"""Point-in-time MES enrichment: the MES state valid at a sample's own timestamp.

The ingest worker asks, for every sample, "which unit (VIN), work order, product, firmware
and shift were at this station at this instant?". `StateHistory` answers from memory: it is
loaded from the MES tables at start (`StateHistory.load`) and kept current with the messages
the outbox relay publishes on `aegis.mes.state.<station>` (`StateHistory.apply`).

How it stays fast: for every station the history keeps a *timeline*, a sorted list of instants
at which anything changes (a unit arrives or leaves, its firmware is flashed, a shift starts or
ends) and, for each of them, the `Enrichment` valid from that instant to the next. A lookup is
one `bisect` on that list and returns a shared, pre-built object: no database, no allocation.
The raw facts (visits per station, flashes per unit, shifts per line) are kept beside the
timelines; a change recomputes only the part of a station's timeline from the change onwards,
compares it with what it replaces, and reports the intervals whose attribution changed so the
rows already stored for them can be re-attributed (`telemetry.reattribution`).

Time: instants are integer epoch milliseconds, as in the telemetry payloads. MES times have
microseconds; a boundary is rounded *up* to the millisecond, which makes `arrived_at <= ts <
left_at` on whole milliseconds give exactly what PostgreSQL gives on the microsecond values.

docs/telemetry-join.md explains the rules, the lifecycle and the measurements.
"""

from __future__ import annotations

import datetime as dt
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
import structlog
from django.conf import settings
from django.db import connection, transaction

logger = structlog.get_logger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US = dt.timedelta(microseconds=1)
# Epoch milliseconds that stand for "before anything" and "not yet ended".
BEFORE_ALL = -(2**62)
OPEN = 2**62
# History kept beyond the telemetry retention, so a sample at the edge of the TELEMETRY stream's
# retention still finds the visit it belongs to.
DEFAULT_MARGIN = dt.timedelta(hours=2)
PRUNE_EVERY_MS = 5 * 60_000
# An unknown station code is looked up in the database at most this often.
STATION_RETRY_SECONDS = 30.0

Interval = tuple[int, int, int | None]  # (station_id, from_ms, to_ms or None for "onwards")


# -- time ------------------------------------------------------------------------------------


def instant_us(value: dt.datetime) -> int:
    """Epoch microseconds of an aware datetime, exactly (no float rounding)."""
    return (value - EPOCH) // _ONE_US


def us_to_ms(value: int) -> int:
    """Microseconds to milliseconds, rounded up: `t_ms * 1000 >= x_us` ⇔ `t_ms >= ceil(x/1000)`."""
    return -(-value // 1000)


def datetime_ms(value: dt.datetime) -> int:
    return us_to_ms(instant_us(value))


def ms_datetime(value: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=value)


def _parse_us(text: str) -> int:
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return instant_us(value)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_since(now: dt.datetime | None = None) -> dt.datetime:
    """Where a worker's history starts: the telemetry retention plus a margin before now."""
    now = now or dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=settings.TELEMETRY_RETENTION_HOURS) - DEFAULT_MARGIN


# -- what a lookup returns -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrichment:
    """The MES state of one station at one instant, as stored with a telemetry sample.

    Instances are shared between lookups: never mutate `firmware`. `firmware_json` is the same
    dictionary already serialised (text COPY writes it as is), or None.
    """

    unit_id: int | None
    vin: str | None
    serial: str | None
    work_order_id: int | None
    product_id: int | None
    shift_id: int | None
    firmware: dict[str, str] | None
    firmware_json: str | None = field(default=None, compare=False, repr=False)


EMPTY = Enrichment(None, None, None, None, None, None, None)


@dataclass(frozen=True, slots=True)
class UnitRef:
    """A unit as the enrichment needs it (ids resolved once, from its serial)."""

    unit_id: int | None
    serial: str
    vin: str | None
    work_order_id: int | None
    product_id: int | None


# -- the raw facts ---------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Visit:
    visit_id: int
    station_id: int
    unit: UnitRef
    start_us: int
    end_us: int | None
    start_ms: int = 0
    end_ms: int = OPEN

    def __post_init__(self) -> None:
        self.set_times(self.start_us, self.end_us)

    def set_times(self, start_us: int, end_us: int | None) -> None:
        self.start_us, self.end_us = start_us, end_us
        self.start_ms = us_to_ms(start_us)
        self.end_ms = OPEN if end_us is None else us_to_ms(end_us)


def _visit_order(visit: _Visit) -> tuple[int, int]:
    return (visit.start_us, visit.visit_id)


def _start_us(visit: _Visit) -> int:
    return visit.start_us


class _Firmware:
    """One unit's flashes and, derived from them, its firmware after each flash instant."""

    __slots__ = ("flashes", "jsons", "states", "times")

    def __init__(self) -> None:
        self.flashes: dict[tuple[str, int], str] = {}  # (component, flashed_at µs) → version
        self.times: list[int] = []  # ms at which the firmware changes
        self.states: list[dict[str, str]] = []  # every component's version from then on
        self.jsons: list[str] = []

    def add(self, component: str, at_us: int, version: str) -> bool:
        """Record a flash; False when it was already known (a redelivered message)."""
        if self.flashes.get((component, at_us)) == version:
            return False
        self.flashes[(component, at_us)] = version
        self._derive()
        return True

    def _derive(self) -> None:
        times: list[int] = []
        states: list[dict[str, str]] = []
        state: dict[str, str] = {}
        # The latest flash per component wins, ordered by the microsecond it happened.
        for (component, at_us), version in sorted(self.flashes.items(), key=lambda f: f[0][1]):
            state = {**state, component: version}
            at_ms = us_to_ms(at_us)
            if times and times[-1] == at_ms:
                states[-1] = state
            else:
                times.append(at_ms)
                states.append(state)
        self.times, self.states = times, states
        self.jsons = [orjson.dumps(state, option=orjson.OPT_SORT_KEYS).decode() for state in states]

    def index_at(self, ts_ms: int) -> int:
        return bisect_right(self.times, ts_ms) - 1


class _Shifts:
    """One line's shifts, by start ([starts_at, ends_at) never overlap on a line)."""

    __slots__ = ("bounds", "ends", "ids", "starts")

    def __init__(self) -> None:
        self.bounds: dict[int, tuple[int, int]] = {}  # shift id → (starts µs, ends µs)
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.ids: list[int] = []

    def put(self, shift_id: int, start_us: int, end_us: int) -> tuple[int, int | None] | None:
        """Record a shift; returns the span (ms) where lookups may change, None if nothing did."""
        known = self.bounds.get(shift_id)
        if known == (start_us, end_us):
            return None
        spans: dict[int, tuple[int, int | None]] = {}
        if known is not None:
            _widen(spans, 0, *self.influence(shift_id))
        self.bounds[shift_id] = (start_us, end_us)
        self._derive()
        _widen(spans, 0, *self.influence(shift_id))
        return spans[0]

    def influence(self, shift_id: int) -> tuple[int, int | None]:
        """Where the shift decides lookups: from its start to the next shift's start (the
        latest shift started wins, so a shift also hides an earlier one it overlaps)."""
        index = self.ids.index(shift_id)
        following = self.starts[index + 1] if index + 1 < len(self.starts) else None
        return self.starts[index], following

    def prune(self, horizon_ms: int) -> None:
        expired = [sid for sid, (_, end) in self.bounds.items() if us_to_ms(end) <= horizon_ms]
        if expired:
            for shift_id in expired:
                del self.bounds[shift_id]
            self._derive()

    def _derive(self) -> None:
        ordered = sorted(self.bounds.items(), key=lambda item: (item[1][0], item[0]))
        self.starts = [us_to_ms(start) for _, (start, _) in ordered]
        self.ends = [us_to_ms(end) for _, (_, end) in ordered]
        self.ids = [shift_id for shift_id, _ in ordered]

    def at(self, ts_ms: int) -> int | None:
        index = bisect_right(self.starts, ts_ms) - 1
        if index >= 0 and ts_ms < self.ends[index]:
            return self.ids[index]
        return None


class _Station:
    __slots__ = ("code", "line_id", "starts", "station_id", "values", "visit_starts", "visits")

    def __init__(self, station_id: int, code: str, line_id: int) -> None:
        self.station_id, self.code, self.line_id = station_id, code, line_id
        self.visits: list[_Visit] = []  # by arrival
        self.visit_starts: list[int] = []  # their arrival ms, for bisect
        # The timeline: segment i holds values[i] from starts[i] to starts[i + 1].
        self.starts: list[int] = [BEFORE_ALL]
        self.values: list[Enrichment] = [EMPTY]


def _differences(
    old_starts: list[int],
    old_values: list[Enrichment],
    new_starts: list[int],
    new_values: list[Enrichment],
) -> list[tuple[int, int | None]]:
    """Where two timelines starting at the same instant give different answers."""
    changed: list[tuple[int, int | None]] = []
    i = j = 0
    point = old_starts[0]
    since: int | None = None
    while True:
        old, new = old_values[i], new_values[j]
        differs = old is not new and old != new
        if differs and since is None:
            since = point
        elif not differs and since is not None:
            changed.append((since, point))
            since = None
        next_old = old_starts[i + 1] if i + 1 < len(old_starts) else None
        next_new = new_starts[j + 1] if j + 1 < len(new_starts) else None
        if next_old is None and next_new is None:
            break
        point = min(p for p in (next_old, next_new) if p is not None)
        if next_old == point:
            i += 1
        if next_new == point:
            j += 1
    if since is not None:
        changed.append((since, None))
    return changed


def _widen(
    spans: dict[int, tuple[int, int | None]], station_id: int, low: int, high: int | None
) -> None:
    """Add [low, high) (None: onwards) to a station's span."""
    if station_id in spans:
        known_low, known_high = spans[station_id]
        low = min(low, known_low)
        high = None if high is None or known_high is None else max(high, known_high)
    spans[station_id] = (low, high)


def _end(end_ms: int) -> int | None:
    return None if end_ms >= OPEN else end_ms


def coalesce_intervals(intervals: list[Interval]) -> list[Interval]:
    """Merge intervals of one station that touch or overlap (None is "onwards")."""
    merged: list[Interval] = []
    for station_id, start, end in sorted(intervals, key=lambda i: (i[0], i[1])):
        if merged:
            last_station, last_start, last_end = merged[-1]
            if last_station == station_id and (last_end is None or start <= last_end):
                reach = None if end is None or last_end is None else max(end, last_end)
                merged[-1] = (station_id, last_start, reach)
                continue
        merged.append((station_id, start, end))
    return merged


# -- database reads --------------------------------------------------------------------------

_STATIONS_SQL = "SELECT id, code, line_id FROM mes_station"
# Units a sample can still be attributed to: those at a station in the window, and those not
# finished (they may arrive later; their flashes so far are needed then).
_UNITS_SQL = """
    SELECT u.id, u.serial, u.vin, u.work_order_id, w.product_id
    FROM mes_unit AS u JOIN mes_workorder AS w ON w.id = u.work_order_id
    WHERE u.status IN ('planned', 'in_progress')
       OR u.id IN (SELECT unit_id FROM mes_stationvisit
                   WHERE left_at IS NULL OR left_at > %(since)s)
"""
_FLASHES_SQL = """
    SELECT f.unit_id, f.component, f.version, f.flashed_at
    FROM mes_firmwareflash AS f JOIN mes_unit AS u ON u.id = f.unit_id
    WHERE u.status IN ('planned', 'in_progress')
       OR u.id IN (SELECT unit_id FROM mes_stationvisit
                   WHERE left_at IS NULL OR left_at > %(since)s)
"""
_VISITS_SQL = """
    SELECT id, station_id, unit_id, arrived_at, left_at FROM mes_stationvisit
    WHERE left_at IS NULL OR left_at > %(since)s
"""
_SHIFTS_SQL = "SELECT id, line_id, starts_at, ends_at FROM mes_shift WHERE ends_at > %(since)s"

_STATION_BY_CODE_SQL = "SELECT id, code, line_id FROM mes_station WHERE code = %(code)s"
_LINE_SHIFTS_SQL = """
    SELECT id, line_id, starts_at, ends_at FROM mes_shift
    WHERE line_id = %(line)s AND ends_at > %(since)s
"""
_UNIT_BY_SERIAL_SQL = """
    SELECT u.id, u.serial, u.vin, u.work_order_id, w.product_id
    FROM mes_unit AS u JOIN mes_workorder AS w ON w.id = u.work_order_id
    WHERE u.serial = %(serial)s
"""
_UNIT_FLASHES_SQL = """
    SELECT unit_id, component, version, flashed_at FROM mes_firmwareflash
    WHERE unit_id = %(unit)s
"""
_VISIT_BY_ID_SQL = """
    SELECT id, station_id, unit_id, arrived_at, left_at FROM mes_stationvisit WHERE id = %(visit)s
"""


def _rows(sql: str, params: dict | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or {})
        return cursor.fetchall()


# -- the history -----------------------------------------------------------------------------


def read_snapshot(queries, params: dict) -> tuple[dt.datetime, dict[str, list[tuple]]]:
    """Run (name, sql) queries in one REPEATABLE READ snapshot (unless inside an enclosing
    transaction): the database's clock at the snapshot, and each query's rows by name."""
    nested = connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if not nested:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute("SELECT clock_timestamp()")
        loaded_at = cursor.fetchone()[0]
        fetched = {}
        for name, sql in queries:
            cursor.execute(sql, params)
            fetched[name] = cursor.fetchall()
    return loaded_at, fetched


class StateHistory:
    """Per-station MES state history, as-of lookups in O(log n).

    Writers (`apply`, `prepare`, `prune`, `resolve_station`) must run one at a time; the worker
    applies MES messages one after another. Readers (`lookup`, `timeline`, `station_id`) may run
    in another thread meanwhile: a timeline is replaced whole, never changed in place, and
    what `prepare` adds is complete before it can be found.
    """

    def __init__(self, *, since_ms: int, loaded_ms: int) -> None:
        self._stations: dict[int, _Station] = {}
        self._codes: dict[str, int] = {}
        # The hot path reads only this: station id → (timeline starts, timeline values).
        self._timelines: dict[int, tuple[list[int], list[Enrichment]]] = {}
        self._line_stations: dict[int, list[int]] = {}
        self._shifts: dict[int, _Shifts] = {}
        self._units: dict[str, UnitRef] = {}  # by serial
        self._unit_ids: dict[int, UnitRef] = {}
        self._firmware: dict[int, _Firmware] = {}  # by unit id
        self._unit_seen: dict[int, int] = {}  # unit id → latest ms it mattered (for pruning)
        self._visits: dict[int, _Visit] = {}  # by visit id
        self._unit_visits: dict[int, list[_Visit]] = {}
        self._fetched_visits: dict[int, tuple | None] = {}
        self._missing_codes: dict[str, float] = {}  # code → monotonic time of the last miss
        self._empties: dict[int | None, Enrichment] = {None: EMPTY}
        self._known: dict[int, int] = {}
        self._known_floor = loaded_ms
        self._since_ms = since_ms
        self._horizon_ms = since_ms  # below it the history is incomplete
        self._window_ms = max(loaded_ms - since_ms, 0)
        self._last_prune_ms = _now_ms()
        self.loaded_ms = loaded_ms

    # -- building ------------------------------------------------------------------------

    @classmethod
    def load(cls, *, since: dt.datetime) -> StateHistory:
        """The MES state from the database: every visit, shift and relevant flash from `since`.

        Sync (Django ORM connection); from async code run it with `asyncio.to_thread` or
        `sync_to_async`. The reads share one REPEATABLE READ snapshot (unless called inside
        an enclosing transaction), so the history is the MES as of one instant: `loaded_ms`.
        """
        loaded_at, fetched = read_snapshot(
            (
                ("stations", _STATIONS_SQL),
                ("units", _UNITS_SQL),
                ("visits", _VISITS_SQL),
                ("flashes", _FLASHES_SQL),
                ("shifts", _SHIFTS_SQL),
            ),
            {"since": since},
        )
        history = cls.from_rows(since=since, loaded_at=loaded_at, **fetched)
        logger.info(
            "telemetry.mes_history_loaded",
            since=since.isoformat(),
            loaded_at=loaded_at.isoformat(),
            **history.stats(),
        )
        return history

    @classmethod
    def from_rows(
        cls,
        *,
        since: dt.datetime,
        loaded_at: dt.datetime,
        stations: Iterable[tuple[int, str, int]],
        units: Iterable[tuple[int, str, str | None, int, int]],
        visits: Iterable[tuple[int, int, int, dt.datetime, dt.datetime | None]],
        flashes: Iterable[tuple[int, str, str, dt.datetime]],
        shifts: Iterable[tuple[int, int, dt.datetime, dt.datetime]],
    ) -> StateHistory:
        """A history from rows shaped like the MES tables (what `load` reads):
        stations (id, code, line_id), units (id, serial, vin, work_order_id, product_id),
        visits (id, station_id, unit_id, arrived_at, left_at), flashes (unit_id, component,
        version, flashed_at), shifts (id, line_id, starts_at, ends_at)."""
        history = cls(since_ms=datetime_ms(since), loaded_ms=datetime_ms(loaded_at))
        for station_id, code, line_id in stations:
            history._register_station(station_id, code, line_id)
        for unit_id, serial, vin, work_order_id, product_id in units:
            history._remember_unit(UnitRef(unit_id, serial, vin, work_order_id, product_id))
        for unit_id, component, version, flashed_at in flashes:
            firmware = history._firmware.setdefault(unit_id, _Firmware())
            firmware.flashes[(component, instant_us(flashed_at))] = version
        for firmware in history._firmware.values():
            firmware._derive()
        known = []
        for visit_id, station_id, unit_id, arrived_at, left_at in visits:
            unit = history._unit_ids.get(unit_id)
            if unit is None or station_id not in history._stations:
                continue
            end_us = None if left_at is None else instant_us(left_at)
            known.append(_Visit(visit_id, station_id, unit, instant_us(arrived_at), end_us))
        known.sort(key=_visit_order)  # once, instead of an ordered insert per visit
        for visit in known:
            station = history._stations[visit.station_id]
            station.visits.append(visit)
            station.visit_starts.append(visit.start_ms)
            history._visits[visit.visit_id] = visit
            history._unit_visits.setdefault(visit.unit.unit_id, []).append(visit)
        for shift_id, line_id, starts_at, ends_at in shifts:
            history._shifts.setdefault(line_id, _Shifts()).bounds[shift_id] = (
                instant_us(starts_at),
                instant_us(ends_at),
            )
        for line_shifts in history._shifts.values():
            line_shifts._derive()
        for station in history._stations.values():
            history._build(station)
        return history

    def _register_station(
        self, station_id: int, code: str, line_id: int, *, build: bool = False
    ) -> _Station:
        station = _Station(station_id, code, line_id)
        self._stations[station_id] = station
        if build:
            self._build(station)
        self._line_stations.setdefault(line_id, []).append(station_id)
        self._timelines[station_id] = (station.starts, station.values)
        self._codes[code] = station_id  # last: the station is complete when it can be found
        return station

    def _remember_unit(self, unit: UnitRef) -> UnitRef:
        self._units[unit.serial] = unit
        if unit.unit_id is not None:
            self._unit_ids[unit.unit_id] = unit
            self._unit_seen[unit.unit_id] = max(
                self._unit_seen.get(unit.unit_id, 0), self.loaded_ms
            )
        return unit

    def _add_visit(self, visit: _Visit) -> None:
        station = self._stations[visit.station_id]
        index = bisect_right(station.visits, _visit_order(visit), key=_visit_order)
        station.visits.insert(index, visit)
        station.visit_starts.insert(index, visit.start_ms)
        self._visits[visit.visit_id] = visit
        if visit.unit.unit_id is not None:
            self._unit_visits.setdefault(visit.unit.unit_id, []).append(visit)

    def _visit_index(self, visit: _Visit) -> int:
        station = self._stations[visit.station_id]
        return bisect_left(station.visits, _visit_order(visit), key=_visit_order)

    def _influence(self, visit: _Visit) -> tuple[int, int | None]:
        """Where the visit decides lookups: from its arrival to the next arrival at its station
        (the latest arrival wins, so a visit also hides an earlier one it overlaps)."""
        station = self._stations[visit.station_id]
        following = self._visit_index(visit) + 1
        if following < len(station.visit_starts):
            return visit.start_ms, station.visit_starts[following]
        return visit.start_ms, None

    def _remove_visit(self, visit: _Visit) -> None:
        station = self._stations[visit.station_id]
        index = self._visit_index(visit)
        del station.visits[index]
        del station.visit_starts[index]
        del self._visits[visit.visit_id]
        unit_visits = self._unit_visits.get(visit.unit.unit_id, [])
        if visit in unit_visits:
            unit_visits.remove(visit)

    # -- the timelines -------------------------------------------------------------------

    def _value(self, unit: UnitRef | None, shift_id: int | None, firmware, index: int):
        if unit is None:
            empty = self._empties.get(shift_id)
            if empty is None:
                empty = self._empties[shift_id] = Enrichment(
                    None, None, None, None, None, shift_id, None
                )
            return empty
        if index >= 0:
            state, state_json = firmware.states[index], firmware.jsons[index]
        else:
            state = state_json = None
        return Enrichment(
            unit.unit_id,
            unit.vin,
            unit.serial,
            unit.work_order_id,
            unit.product_id,
            shift_id,
            state,
            state_json,
        )

    def _tail(
        self, station: _Station, low: int, high: int | None = None
    ) -> tuple[list[int], list[Enrichment]]:
        """The station's timeline over [low, high) computed from the raw facts, ending with
        the value valid at `high` (from `low` onwards when `high` is None)."""
        visits, visit_starts = station.visits, station.visit_starts
        firmware_of = self._firmware
        shifts = self._shifts.get(station.line_id)
        limit = OPEN if high is None else high
        points = [low]
        for index in range(max(bisect_right(visit_starts, low) - 1, 0), len(visits)):
            visit = visits[index]
            start, end = visit.start_ms, visit.end_ms
            if start >= limit:
                break
            if start > low:
                points.append(start)
            if low < end < limit:
                points.append(end)
            firmware = firmware_of.get(visit.unit.unit_id)
            if firmware is not None:
                times = firmware.times
                k = bisect_right(times, max(start, low))
                while k < len(times) and times[k] < end and times[k] < limit:
                    points.append(times[k])
                    k += 1
        if shifts is not None:
            for index in range(max(bisect_right(shifts.starts, low) - 1, 0), len(shifts.starts)):
                if shifts.starts[index] >= limit:
                    break
                for point in (shifts.starts[index], shifts.ends[index]):
                    if low < point < limit:
                        points.append(point)
        if high is not None:
            points.append(high)
        starts: list[int] = []
        values: list[Enrichment] = []
        last = None
        for point in sorted(set(points)):
            unit = firmware = state = None
            index = -1
            v = bisect_right(visit_starts, point) - 1
            if v >= 0 and point < visits[v].end_ms:
                unit = visits[v].unit
                firmware = firmware_of.get(unit.unit_id)
                if firmware is not None:
                    index = firmware.index_at(point)
                    if index >= 0:
                        state = firmware.states[index]
            shift_id = shifts.at(point) if shifts is not None else None
            key = (unit, state, shift_id)
            if last is not None and key[0] is last[0] and key[1] is last[1] and key[2] == last[2]:
                continue
            last = key
            value = self._value(unit, shift_id, firmware, index)
            if values and values[-1] == value:
                continue
            starts.append(point)
            values.append(value)
        return starts, values

    def _build(self, station: _Station) -> None:
        self._publish(station, *self._tail(station, BEFORE_ALL))

    def _publish(self, station: _Station, starts: list[int], values: list[Enrichment]) -> None:
        """Replace a station's timeline with new lists in one assignment: a reader holding the
        old (starts, values) from `timeline()` keeps a consistent snapshot, even when `apply`
        runs in another thread."""
        station.starts, station.values = starts, values
        self._timelines[station.station_id] = (starts, values)

    def _splice(self, station: _Station, low: int, high: int | None) -> list[Interval]:
        """Recompute the timeline over [low, high) (a fact's own extent; onwards when None)
        and return the intervals whose answer changed."""
        starts, values = station.starts, station.values
        new_starts, new_values = self._tail(station, low, high)
        cut = bisect_left(starts, low)  # first segment starting at or after `low`
        stop = len(starts) if high is None else bisect_right(starts, high)
        if high is not None and new_values[-1] != values[stop - 1]:
            # The answer at `high` changed too, so the fact reaches further than its extent
            # suggested (facts that disagree with each other): recompute everything after it.
            return self._splice(station, low, None)
        old_starts, old_values = starts[cut:stop], values[cut:stop]
        if not old_starts or old_starts[0] != low:
            old_starts.insert(0, low)
            old_values.insert(0, values[cut - 1])
        changed = _differences(old_starts, old_values, new_starts, new_values)
        if not changed:
            return []
        starts, values = starts.copy(), values.copy()
        starts[cut:stop] = new_starts
        values[cut:stop] = new_values
        # Where the new piece meets the old timeline, equal neighbours become one segment.
        for joint in (cut + len(new_starts), cut):
            if 0 < joint < len(starts) and values[joint - 1] == values[joint]:
                del starts[joint]
                del values[joint]
        self._publish(station, starts, values)
        return [(station.station_id, since, until) for since, until in changed]

    def _refresh(self, spans: dict[int, tuple[int, int | None]]) -> list[Interval]:
        """Recompute each station's timeline over its span (station id → (low, high))."""
        changed: list[Interval] = []
        for station_id, (low, high) in sorted(spans.items()):
            station = self._stations.get(station_id)
            # Before the horizon the history is incomplete, and stored rows are past the
            # telemetry retention: changes are computed (and reported) from the horizon on.
            start = max(low, self._horizon_ms)
            if station is None or (high is not None and high <= start):
                continue
            changed.extend(self._splice(station, start, high))
        return coalesce_intervals(changed)

    # -- lookups (the hot path) ----------------------------------------------------------

    def station_id(self, code: str) -> int | None:
        """The station's id; None for a code the MES does not know (dead-letter the sample)."""
        return self._codes.get(code)

    def lookup(self, station_id: int, ts_epoch_ms: int) -> Enrichment:
        """The state valid at that instant (EMPTY for a station the history does not know).

        Exact for instants at or after `horizon_ms`; older ones get what is still known.
        """
        timeline = self._timelines.get(station_id)
        if timeline is None:
            return EMPTY
        starts, values = timeline
        return values[bisect_right(starts, ts_epoch_ms) - 1]

    def timeline(self, station_id: int) -> tuple[list[int], list[Enrichment]] | None:
        """The station's (starts, values) lists, for a batch loop that bisects itself:
        `values[bisect_right(starts, ts) - 1]`. Never mutated: `apply` and `prune` replace
        them, so fetch them again for the next batch."""
        return self._timelines.get(station_id)

    def known_until(self, station_id: int) -> float:
        """Epoch ms up to which the history is complete for the station, as far as it can
        tell: the latest MES fact time seen for it, the load time, or what `advance` set."""
        return float(max(self._known.get(station_id, BEFORE_ALL), self._known_floor))

    def advance(self, until_ms: int) -> None:
        """Every station's state is known up to `until_ms` (call it when the MES consumer has
        drained the stream: no pending messages at that time, minus the relay's latency)."""
        self._known_floor = max(self._known_floor, int(until_ms))

    @property
    def horizon_ms(self) -> int:
        return self._horizon_ms

    def stats(self) -> dict[str, int]:
        return {
            "stations": len(self._stations),
            "visits": len(self._visits),
            "units": len(self._units),
            "shifts": sum(len(shifts.ids) for shifts in self._shifts.values()),
            "segments": sum(len(station.starts) for station in self._stations.values()),
        }

    # -- MES messages --------------------------------------------------------------------

    def apply(self, message: dict) -> list[Interval]:
        """Fold one `aegis.mes.state` message payload in (docs/mes-state.md).

        Returns the intervals (station_id, from_ms, to_ms or None) whose attribution changed,
        one per station at most per contiguous change, for `telemetry.reattribution`.
        Applying a message twice changes nothing the second time and returns []. A message
        naming a unit, station or visit the history does not know is resolved in the database
        (sync): call `prepare` first, off the event loop, when `needs_lookup` says so.
        """
        self._maybe_prune()
        handler = self._HANDLERS.get(message.get("kind"))
        try:
            if handler is None:
                station = self._station_for(message.get("station"))
                if station is not None and message.get("at"):
                    self._note_known(station.station_id, _parse_us(message["at"]))
                return []
            return handler(self, message)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            logger.warning(
                "telemetry.mes_message_ignored",
                kind=message.get("kind"),
                station=message.get("station"),
                error=repr(error),
            )
            return []

    def needs_lookup(self, message: dict) -> bool:
        """True when `apply` would read the database for this message."""
        code = message.get("station")
        if code is not None and code not in self._codes and not self._recently_missed(code):
            return True
        serial = message.get("unit")
        if serial and serial not in self._units and not _ids_in(message):
            return True
        return self._visit_needs_row(message) and message["visit"] not in self._fetched_visits

    def prepare(self, message: dict) -> None:
        """Resolve from the database what the message names and the history lacks (sync:
        run it with `asyncio.to_thread` before `apply`)."""
        code = message.get("station")
        if code is not None and code not in self._codes:
            self.resolve_station(code)
        serial = message.get("unit")
        if serial and serial not in self._units and not _ids_in(message):
            self._unit_from_database(serial)
        if self._visit_needs_row(message):
            self._visit_row(message["visit"])

    def _visit_needs_row(self, message: dict) -> bool:
        """An unknown visit whose start the message does not give (visit.ended), or one that
        started before the horizon (a redelivery of a visit long over, or a late fact)."""
        kind, visit_id, at = message.get("kind"), message.get("visit"), message.get("at")
        if kind not in ("visit.started", "visit.ended") or visit_id in self._visits:
            return False
        try:
            at_ms = us_to_ms(_parse_us(at))
        except (TypeError, ValueError):
            return False  # malformed: apply() ignores it
        if kind == "visit.ended":
            return at_ms > self._horizon_ms
        return at_ms < self._horizon_ms

    def _visit_row(self, visit_id: int) -> tuple | None:
        """(id, station_id, unit_id, arrived_at, left_at) from the database, read once."""
        if visit_id not in self._fetched_visits:
            self._fetched_visits[visit_id] = next(
                iter(_rows(_VISIT_BY_ID_SQL, {"visit": visit_id})), None
            )
        return self._fetched_visits[visit_id]

    def resolve_station(self, code: str) -> int | None:
        """Look a station created after the load up in the database (sync; a code found
        missing is not asked again for STATION_RETRY_SECONDS)."""
        known = self._codes.get(code)
        if known is not None or self._recently_missed(code):
            return known
        rows = _rows(_STATION_BY_CODE_SQL, {"code": code})
        if not rows:
            self._missing_codes[code] = time.monotonic()
            return None
        station_id, code, line_id = rows[0]
        if line_id not in self._shifts:
            since = ms_datetime(self._horizon_ms)
            line_shifts = _Shifts()
            for shift_id, _, starts_at, ends_at in _rows(
                _LINE_SHIFTS_SQL, {"line": line_id, "since": since}
            ):
                line_shifts.bounds[shift_id] = (instant_us(starts_at), instant_us(ends_at))
            line_shifts._derive()
            self._shifts[line_id] = line_shifts
        self._register_station(station_id, code, line_id, build=True)
        return station_id

    def _recently_missed(self, code: str) -> bool:
        missed = self._missing_codes.get(code)
        return missed is not None and time.monotonic() - missed < STATION_RETRY_SECONDS

    def _station_for(self, code: str | None) -> _Station | None:
        if code is None:
            return None
        station_id = self._codes.get(code)
        if station_id is None:
            station_id = self.resolve_station(code)
        return None if station_id is None else self._stations[station_id]

    def _unit_from_database(self, serial: str) -> UnitRef | None:
        rows = _rows(_UNIT_BY_SERIAL_SQL, {"serial": serial})
        if not rows:
            return None
        unit = UnitRef(*rows[0])
        firmware = _Firmware()
        for _, component, version, flashed_at in _rows(_UNIT_FLASHES_SQL, {"unit": unit.unit_id}):
            firmware.flashes[(component, instant_us(flashed_at))] = version
        firmware._derive()
        if unit.unit_id not in self._firmware:
            self._firmware[unit.unit_id] = firmware
        return self._remember_unit(unit)  # last: the unit is complete when it can be found

    def _unit_for(self, message: dict) -> UnitRef | None:
        serial = message.get("unit")
        if not serial:
            return None
        unit = self._units.get(serial)
        if unit is not None:
            return unit
        if _ids_in(message):
            # Payloads that carry ids (see docs/telemetry-join.md) need no database; the
            # unit is new since the load, so every flash of it arrives as a message.
            return self._remember_unit(
                UnitRef(
                    message["unit_id"],
                    serial,
                    message.get("vin"),
                    message["work_order_id"],
                    message["product_id"],
                )
            )
        unit = self._unit_from_database(serial)
        if unit is None:
            logger.warning("telemetry.mes_unit_unknown", serial=serial)
            unit = self._remember_unit(UnitRef(None, serial, message.get("vin"), None, None))
        return unit

    def _note_known(self, station_id: int, at_us: int) -> None:
        # Capped at the wall clock: a fact dated in the future says nothing about what follows.
        at_ms = min(us_to_ms(at_us), _now_ms())
        if at_ms > self._known.get(station_id, BEFORE_ALL):
            self._known[station_id] = at_ms

    def _touch(self, unit: UnitRef, at_ms: int) -> None:
        if unit.unit_id is not None:
            self._unit_seen[unit.unit_id] = max(self._unit_seen.get(unit.unit_id, 0), at_ms)

    def _visit_started(self, message: dict) -> list[Interval]:
        station = self._station_for(message["station"])
        if station is None:
            return []
        at_us = _parse_us(message["at"])
        self._note_known(station.station_id, at_us)
        visit_id = message["visit"]
        visit = self._visits.get(visit_id)
        if visit is not None:
            if visit.start_us == at_us and visit.station_id == station.station_id:
                return []  # known (redelivered, or read at load)
            # The arrival was corrected: move it.
            spans: dict[int, tuple[int, int | None]] = {}
            _widen(spans, visit.station_id, *self._influence(visit))
            self._remove_visit(visit)
            visit.station_id = station.station_id
            visit.set_times(at_us, visit.end_us)
            self._add_visit(visit)
            _widen(spans, visit.station_id, *self._influence(visit))
            return self._refresh(spans)
        at_ms = us_to_ms(at_us)
        end_us = None
        if at_ms < self._horizon_ms:
            # Older than the history: usually a redelivery of a visit long over. The database
            # says whether it still reaches into the history.
            row = self._visit_row(visit_id)
            self._fetched_visits.pop(visit_id, None)
            if row is None or (row[4] is not None and datetime_ms(row[4]) <= self._horizon_ms):
                return []
            end_us = None if row[4] is None else instant_us(row[4])
        unit = self._unit_for(message)
        if unit is None:
            raise ValueError("visit.started without a unit")
        self._touch(unit, at_ms)
        # What the arrival ends, as unit_arrive does: another unit's open visit here (visits
        # at a station do not overlap, so only the latest one before `at` can be open) and
        # the unit's open visit elsewhere. Their own visit.ended messages then change nothing.
        before = bisect_left(station.visits, at_us, key=_start_us)
        ended = station.visits[before - 1 : before] if before else []
        ended += self._unit_visits.get(unit.unit_id, []) if unit.unit_id is not None else []
        closed = [v for v in ended if v.end_us is None and v.start_us < at_us]
        for other in closed:
            other.set_times(other.start_us, at_us)
        visit = _Visit(visit_id, station.station_id, unit, at_us, end_us)
        self._add_visit(visit)
        spans: dict[int, tuple[int, int | None]] = {}
        _widen(spans, station.station_id, *self._influence(visit))
        for other in closed:
            _widen(spans, other.station_id, at_ms, self._influence(other)[1])
        return self._refresh(spans)

    def _visit_ended(self, message: dict) -> list[Interval]:
        station = self._station_for(message["station"])
        if station is None:
            return []
        at_us = _parse_us(message["at"])
        at_ms = us_to_ms(at_us)
        self._note_known(station.station_id, at_us)
        visit_id = message["visit"]
        visit = self._visits.get(visit_id)
        if visit is None:
            if at_ms <= self._horizon_ms:
                return []  # ended before the history starts: nothing to change
            row = self._visit_row(visit_id)
            self._fetched_visits.pop(visit_id, None)
            if row is None:
                logger.warning("telemetry.mes_visit_unknown", visit=visit_id)
                return []
            unit = self._unit_for(message)
            if unit is None:
                raise ValueError("visit.ended without a unit")
            visit = _Visit(visit_id, station.station_id, unit, instant_us(row[3]), at_us)
            self._add_visit(visit)
            self._touch(unit, at_ms)
            return self._refresh({station.station_id: self._influence(visit)})
        if visit.end_us == at_us:
            return []
        # Only between the old and the new end, where the visit decides, does anything change.
        old_end = visit.end_ms
        visit.set_times(visit.start_us, at_us)
        self._touch(visit.unit, at_ms)
        start, following = self._influence(visit)
        high = _end(max(old_end, at_ms))
        if following is not None:
            high = following if high is None else min(high, following)
        return self._refresh({visit.station_id: (max(start, min(old_end, at_ms)), high)})

    def _firmware_flashed(self, message: dict) -> list[Interval]:
        station = self._station_for(message["station"])
        at_us = _parse_us(message["at"])
        if station is not None:
            self._note_known(station.station_id, at_us)
        unit = self._unit_for(message)
        if unit is None or unit.unit_id is None:
            return []
        firmware = self._firmware.setdefault(unit.unit_id, _Firmware())
        if not firmware.add(message["component"], at_us, message["version"]):
            return []
        at_ms = us_to_ms(at_us)
        self._touch(unit, at_ms)
        # Firmware belongs to the unit: every visit of it from the flash on changes.
        spans: dict[int, tuple[int, int | None]] = {}
        for visit in self._unit_visits.get(unit.unit_id, []):
            if visit.end_ms > at_ms:
                _widen(spans, visit.station_id, max(at_ms, visit.start_ms), _end(visit.end_ms))
        return self._refresh(spans)

    def _shift_scheduled(self, message: dict) -> list[Interval]:
        station = self._station_for(message["station"])
        if station is None:
            return []
        starts_us, ends_us = _parse_us(message["starts_at"]), _parse_us(message["ends_at"])
        if us_to_ms(ends_us) <= self._horizon_ms:
            return []  # over before the history starts
        line_shifts = self._shifts.setdefault(station.line_id, _Shifts())
        span = line_shifts.put(message["shift"], starts_us, ends_us)
        if span is None:
            return []  # known (redelivered, or read at load)
        return self._refresh(
            {station_id: span for station_id in self._line_stations.get(station.line_id, [])}
        )

    _HANDLERS = {
        "visit.started": _visit_started,
        "visit.ended": _visit_ended,
        "firmware.flashed": _firmware_flashed,
        "shift.scheduled": _shift_scheduled,
    }

    # -- memory --------------------------------------------------------------------------

    def _maybe_prune(self) -> None:
        now = _now_ms()
        if now - self._last_prune_ms >= PRUNE_EVERY_MS:
            self.prune(now_ms=now)

    def prune(self, *, now_ms: int | None = None) -> int:
        """Forget what ended before the horizon (now minus the window the history was loaded
        with); lookups before it then get the state at the horizon. Returns visits dropped."""
        now_ms = _now_ms() if now_ms is None else now_ms
        self._last_prune_ms = now_ms
        horizon = now_ms - self._window_ms
        if horizon <= self._horizon_ms:
            return 0
        self._horizon_ms = horizon
        dropped = 0
        for station in self._stations.values():
            kept = [visit for visit in station.visits if visit.end_ms > horizon]
            if len(kept) != len(station.visits):
                for visit in station.visits:
                    if visit.end_ms <= horizon:
                        del self._visits[visit.visit_id]
                        unit_visits = self._unit_visits.get(visit.unit.unit_id)
                        if unit_visits and visit in unit_visits:
                            unit_visits.remove(visit)
                        dropped += 1
                station.visits[:] = kept
                station.visit_starts[:] = [visit.start_ms for visit in kept]
            cut = bisect_right(station.starts, horizon) - 1
            if cut > 0:
                self._publish(
                    station,
                    [BEFORE_ALL, *station.starts[cut + 1 :]],
                    station.values[cut:],
                )
        for line_shifts in self._shifts.values():
            line_shifts.prune(horizon)
        scheduled = {shift_id for shifts in self._shifts.values() for shift_id in shifts.ids}
        for shift_id in [s for s in self._empties if s is not None and s not in scheduled]:
            del self._empties[shift_id]
        for unit_id, seen in list(self._unit_seen.items()):
            if seen <= horizon and not self._unit_visits.get(unit_id):
                unit = self._unit_ids.pop(unit_id, None)
                if unit is not None and self._units.get(unit.serial) is unit:
                    del self._units[unit.serial]
                self._firmware.pop(unit_id, None)
                self._unit_visits.pop(unit_id, None)
                del self._unit_seen[unit_id]
        self._fetched_visits.clear()
        return dropped


def _ids_in(message: dict) -> bool:
    return all(message.get(key) is not None for key in ("unit_id", "work_order_id", "product_id"))
