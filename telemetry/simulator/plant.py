"""The plant the simulator runs: units moving along each line's route, and the MES records
they leave behind.

`plant_layout_load` reads the plant from the MES (stations with their signals, each line's route
with its operations' ideal cycle times). `Plant` is a discrete-event model of the lines on the
simulated clock: one unit per station at a time, each operation taking its ideal cycle time with
a few percent of jitter, units waiting when the next station is still busy, a conveyor transfer
between stations, and planned downtime when a worn tool or seal is replaced. It only decides;
what happened comes out as `Arrive`, `Leave`, `Flash`, `Quality`, … actions, in time order.

`MesSink` turns those actions into MES records through `mes.services` (visits, firmware flashes,
counts, quality events, downtime, units and work orders completed), so the outbox publishes them
as MES state and the telemetry join has real state to join with. It runs in one worker thread:
the services are synchronous Django ORM calls and must never block the publishing loop.
`NullSink` (`--no-mes`) records nothing and names units by their simulated serial.

Every decision is drawn from random streams seeded by the run's seed, never from the database,
so the same seed and arguments move the same units the same way with or without the MES.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import random
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import DatabaseError, connections, transaction
from django.db.models import F, Max

from mes import services
from mes.audit import audit_context
from mes.errors import Conflict, MesError
from mes.models import (
    DefectCode,
    DowntimeEvent,
    DowntimeReason,
    Line,
    Product,
    Route,
    Station,
    StationVisit,
    Unit,
    UnitStatus,
    WorkOrder,
    WorkOrderStatus,
    vin_check_digit,
)
from telemetry.simulator.faults import (
    MAINTENANCE_REASON,
    Defect,
    FaultSettings,
    LineFaults,
    UnitFaults,
)
from telemetry.simulator.signals import (
    LEAK_PHASES,
    StationSignals,
    StationSpec,
    signal_spec,
)

# -- the layout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    station: StationSpec
    cycle_ms: int


@dataclass(frozen=True)
class LineLayout:
    code: str
    product: str | None  # the product whose route the simulated units follow
    operations: tuple[Operation, ...]
    cycle_ms: int  # the route's ideal time between two units leaving the line
    vehicle: bool  # its units carry VINs
    wmi: str | None  # world manufacturer identifier of those VINs


@dataclass(frozen=True)
class PlantLayout:
    stations: tuple[StationSpec, ...]
    lines: tuple[LineLayout, ...]


def plant_layout_load() -> PlantLayout:
    """The plant as the MES defines it: every station with its signals and every line's route
    (the first by product code when a line has several)."""
    stations = {}
    for station in Station.objects.prefetch_related("signals").order_by("line_id", "position"):
        signals = tuple(
            signal_spec(s.name, s.unit, s.nominal_min, s.nominal_max)
            for s in sorted(station.signals.all(), key=lambda s: s.name)
        )
        stations[station.pk] = StationSpec(
            id=station.pk, code=station.code, station_type=station.station_type, signals=signals
        )
    lines = []
    for line in Line.objects.order_by("code"):
        route = (
            Route.objects.filter(line=line, operations__isnull=False)
            .select_related("product")
            .order_by("product__code")
            .distinct()
            .first()
        )
        if route is None:
            continue
        operations = tuple(
            Operation(stations[op.station_id], int(op.ideal_cycle_time_s * 1000))
            for op in route.operations.order_by("sequence")
        )
        vin = (
            Unit.objects.filter(work_order__line=line, vin__isnull=False)
            .values_list("vin", flat=True)
            .first()
        )
        lines.append(
            LineLayout(
                code=line.code,
                product=route.product.code,
                operations=operations,
                cycle_ms=int(route.ideal_cycle_time_s * 1000),
                vehicle=vin is not None,
                wmi=vin[:3] if vin else None,
            )
        )
    return PlantLayout(stations=tuple(stations.values()), lines=tuple(lines))


def mes_history_end(station_codes: list[str]) -> dt.datetime | None:
    """The latest instant the MES records a unit arriving at or leaving one of these stations.

    A simulated start before it would contradict that history (visits never overlap, and an
    open visit lasts until the next arrival), so the simulator starts after it."""
    latest = StationVisit.objects.filter(station__code__in=station_codes).aggregate(
        arrived=Max("arrived_at"), left=Max("left_at")
    )
    return max((at for at in latest.values() if at is not None), default=None)


def simulated_station_codes(layout: PlantLayout, selected: tuple[str, ...] | None) -> list[str]:
    """Every station the run moves units through: the lines of the selected stations."""
    if selected is None:
        return [op.station.code for line in layout.lines for op in line.operations]
    return [
        op.station.code
        for line in layout.lines
        if any(op.station.code in selected for op in line.operations)
        for op in line.operations
    ]


# -- what happens: actions for the MES ---------------------------------------------------------


@dataclass(eq=False)
class SimUnit:
    line: str
    number: int
    faults: UnitFaults

    @property
    def key(self) -> str:
        return f"{self.line}-{self.number:06d}"


@dataclass(slots=True)
class Arrive:
    unit: SimUnit
    station: str
    at: int


@dataclass(slots=True)
class Leave:
    unit: SimUnit
    station: str
    at: int
    arrived: int


@dataclass(slots=True)
class Flash:
    unit: SimUnit
    station: str
    component: str
    version: str
    at: int


@dataclass(slots=True)
class Quality:
    unit: SimUnit
    station: str
    defect: str
    severity: str
    source: str
    at: int
    description: str


@dataclass(slots=True)
class DowntimeStart:
    station: str
    at: int
    comment: str


@dataclass(slots=True)
class DowntimeEnd:
    station: str
    at: int


@dataclass(slots=True)
class UnitDone:
    unit: SimUnit
    at: int


@dataclass(slots=True)
class Truth:
    """A ground-truth record; `unit` is None for station events (a tool change)."""

    unit: SimUnit | None
    record: dict


Action = Arrive | Leave | Flash | Quality | DowntimeStart | DowntimeEnd | UnitDone | Truth
_UNIT_ACTIONS = (Arrive, Leave, Flash, Quality, UnitDone)


def iso(ms: int) -> str:
    return instant(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def instant(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


# -- the line model ----------------------------------------------------------------------------

TRANSFER_MS = (2500, 3500)  # conveyor from one station to the next


@dataclass
class _Slot:
    occupant: SimUnit | None = None
    done: bool = False
    reserved: bool = False  # a unit is on its way in
    down: bool = False
    arrived_ms: int = 0

    @property
    def free(self) -> bool:
        return self.occupant is None and not self.reserved and not self.down


@dataclass
class PlantCounters:
    units_started: int = 0
    units_completed: int = 0
    faults_injected: int = 0
    defects: int = 0
    by_fault: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Plant:
    """All simulated lines on one event queue (time in epoch ms)."""

    def __init__(
        self,
        lines: list[LineLayout],
        *,
        generators: dict[str, StationSignals],
        seed: int | str,
        start_ms: int,
        faults: FaultSettings,
    ) -> None:
        self._queue: list = []
        self._order = itertools.count()
        self.actions: list[Action] = []
        self.counters = PlantCounters()
        self.lines = [
            LineModel(
                line, plant=self, generators=generators, seed=seed, start_ms=start_ms, faults=faults
            )
            for line in lines
            if line.operations
        ]
        for line in self.lines:
            line.start(start_ms)

    def schedule(self, at_ms: int, handler: Callable, *args) -> None:
        heapq.heappush(self._queue, (int(at_ms), next(self._order), handler, args))

    @property
    def next_event_ms(self) -> int | None:
        return self._queue[0][0] if self._queue else None

    def run_until(self, t_ms: int) -> None:
        """Everything that happens up to and including `t_ms`."""
        queue = self._queue
        while queue and queue[0][0] <= t_ms:
            at, _, handler, args = heapq.heappop(queue)
            handler(at, *args)

    def emit(self, action: Action) -> None:
        self.actions.append(action)

    def take_actions(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions

    def in_flight_truth(self) -> list[Action]:
        """Ground truth of the units still on the lines (at the end of a run)."""
        actions: list[Action] = []
        for line in self.lines:
            for unit in line.on_line.values():
                actions.extend(Truth(unit, {**r, "complete": False}) for r in unit.faults.records)
        return actions


class LineModel:
    def __init__(
        self,
        layout: LineLayout,
        *,
        plant: Plant,
        generators: dict[str, StationSignals],
        seed: int | str,
        start_ms: int,
        faults: FaultSettings,
    ) -> None:
        self.layout = layout
        self.plant = plant
        self.ops = layout.operations
        self.codes = [op.station.code for op in self.ops]
        self.generators = [generators[code] for code in self.codes]
        self.slots = [_Slot() for _ in self.ops]
        self.rng = random.Random(f"aegis-simulator:{seed}:{layout.code}:plant")  # noqa: S311
        self.faults = LineFaults(
            line=layout.code,
            route=[op.station for op in self.ops],
            vehicle=layout.vehicle,
            settings=faults,
            seed=seed,
            start_ms=start_ms,
        )
        self.maintenance_ms = int(faults.maintenance_min * 60_000)
        self.exposure = faults.exposure_threshold
        self.numbers = itertools.count(1)
        self.on_line: dict[str, SimUnit] = {}

    # -- units ------------------------------------------------------------------------------

    def _new_unit(self, first_index: int) -> SimUnit:
        drift_index = self.faults.drift_index
        may_drift = drift_index is not None and first_index <= drift_index
        unit = SimUnit(
            self.layout.code, next(self.numbers), self.faults.new_unit(may_drift=may_drift)
        )
        self.on_line[unit.key] = unit
        self.plant.counters.units_started += 1
        return unit

    def _record(self, unit: SimUnit, fault: str, **details) -> dict:
        record = {"fault": fault, "line": self.layout.code, **details, "defect": None}
        unit.faults.records.append(record)
        self.plant.counters.faults_injected += 1
        self.plant.counters.by_fault[fault] += 1
        return record

    def start(self, start_ms: int) -> None:
        """The simulator joins a running line: every station holds a unit part-way through its
        operation (all arriving at the start instant, downstream units being the older ones)."""
        flash = self.faults.flash_index
        for index in reversed(range(len(self.ops))):
            unit = self._new_unit(first_index=index)
            if flash is not None and index > flash:
                # Flashed upstream before the run began, one line cycle per station back.
                at = start_ms - (index - flash) * self.layout.cycle_ms
                for component, version in sorted(unit.faults.firmware.items()):
                    self._flash(at, unit, self.codes[flash], component, version)
                    at += 1
            self._arrive(start_ms, index, unit, self.rng.uniform(0.15, 1.0))

    # -- events -----------------------------------------------------------------------------

    def _arrive(self, t: int, index: int, unit: SimUnit, remaining: float = 1.0) -> None:
        op, slot, code = self.ops[index], self.slots[index], self.codes[index]
        jitter = min(1.12, max(0.92, self.rng.gauss(1.0, 0.03)))
        cycle = max(3000, int(op.cycle_ms * jitter * remaining))
        margin = min(1000, cycle // 10)
        slot.occupant, slot.done, slot.reserved, slot.arrived_ms = unit, False, False, t
        visit = self.generators[index].arrive(
            arrive_ms=t,
            work_from_ms=t + margin,
            work_to_ms=t + cycle - margin,
            faults=self.faults.visit_faults(unit.faults, code, t),
        )
        self.plant.emit(Arrive(unit, code, t))
        self._judge(index, unit, visit, t)
        kind = op.station.station_type
        if kind == "flashing" and index == self.faults.flash_index:
            start, end = visit.params["flash"]
            components = sorted(unit.faults.firmware.items())
            for number, (component, version) in enumerate(components, 1):
                at = int(start + (end - start) * number / len(components))
                self.plant.schedule(at, self._flash, unit, code, component, version)
        if index == self.faults.inspection_index:
            self.plant.schedule(t + int(0.8 * cycle), self._inspect, unit, index)
        self.plant.schedule(t + cycle, self._done, index)

    def _flash(self, t: int, unit: SimUnit, code: str, component: str, version: str) -> None:
        self.plant.emit(Flash(unit, code, component, version, t))
        if unit.faults.drift and component == "EPS":
            self._record(
                unit,
                "bad_firmware",
                component=component,
                version=version,
                flash_station=code,
                flashed_at=t,
                evidence={
                    "station": self.faults.drift_station,
                    "signal": "torque",
                    "drift_pct": round(unit.faults.drift * 100, 2),
                },
                expected_defect="steering" if unit.faults.steering else None,
            )

    def _judge(self, index: int, unit: SimUnit, visit, t: int) -> None:
        """What the faults did to this visit: evidence in the signals, and the defect it causes."""
        code, faults = self.codes[index], self.faults
        if code == faults.drift_station and unit.faults.drift:
            for record in unit.faults.records:
                if record["fault"] == "bad_firmware":
                    record["evidence"].update({"from": visit.work_from_ms, "to": visit.work_to_ms})
        if code not in faults.wear:
            return
        kind = faults.wear[code][0]
        level = faults.wear_level(code, t)
        if kind == "tool_wear" and "min_torque" in visit.outcome:
            low = next(s.low for s in self.generators[index].signals if s.name == "torque")
            value = visit.outcome["min_torque"]
            defect = value < low
            if not (defect or level >= self.exposure):
                return
            record = self._record(
                unit,
                "tool_wear",
                station=code,
                wear=round(level, 3),
                evidence={
                    "station": code,
                    "signal": "torque",
                    "min_torque": round(value, 3),
                    "limit": low,
                    "from": visit.work_from_ms,
                    "to": visit.work_to_ms,
                },
                expected_defect="torque_low" if defect else None,
            )
            if defect:
                where = faults.inspection_station
                text = f"joint at {code} under-torqued ({value:.2f} < {low:g})"
                if where is None:  # no end-of-line audit: the nut runner flags it itself
                    self.plant.schedule(
                        visit.work_to_ms,
                        self._defect,
                        unit,
                        Defect("torque_low", "major", "test_rig", code, text),
                        record,
                    )
                else:
                    unit.faults.at_inspection.append(
                        Defect("torque_low", "major", "inspection", where, text)
                    )
        elif kind == "seal_wear" and "leak_rate" in visit.outcome:
            high = next(s.high for s in self.generators[index].signals if s.name == "leak_rate")
            value = visit.outcome["leak_rate"]
            defect = value > high
            if not (defect or level >= self.exposure):
                return
            record = self._record(
                unit,
                "seal_wear",
                station=code,
                wear=round(level, 3),
                evidence={
                    "station": code,
                    "signal": "leak_rate",
                    "leak_rate": round(value, 4),
                    "limit": high,
                    "from": visit.work_from_ms,
                    "to": visit.work_to_ms,
                },
                expected_defect="leak" if defect else None,
            )
            if defect:
                span = visit.work_to_ms - visit.work_from_ms
                at = visit.work_from_ms + int(LEAK_PHASES[2] * span)
                text = f"leak rate {value:.3f} above {high:g} at the leak test"
                self.plant.schedule(
                    at, self._defect, unit, Defect("leak", "major", "test_rig", code, text), record
                )

    def _defect(self, t: int, unit: SimUnit, defect: Defect, record: dict | None) -> None:
        self.plant.emit(
            Quality(
                unit,
                defect.station,
                defect.code,
                defect.severity,
                defect.source,
                t,
                defect.description,
            )
        )
        self.plant.counters.defects += 1
        if record is not None:
            record["defect"] = {"code": defect.code, "station": defect.station, "found_at": t}

    def _inspect(self, t: int, unit: SimUnit, index: int) -> None:
        """End-of-line inspection records what the unit's faults caused."""
        code = self.codes[index]
        records = unit.faults.records
        if unit.faults.steering:
            record = next((r for r in records if r["fault"] == "bad_firmware"), None)
            text = "steering pull on the roll test"
            self._defect(t, unit, Defect("steering", "major", "inspection", code, text), record)
        for defect in unit.faults.at_inspection:
            record = next((r for r in records if r.get("expected_defect") == defect.code), None)
            self._defect(t, unit, defect, record)
        if self.faults.background_defect():
            record = self._record(unit, "none", evidence=None, expected_defect="cosmetic")
            text = "paint scratch on the tailgate"
            self._defect(t, unit, Defect("cosmetic", "minor", "inspection", code, text), record)

    def _done(self, t: int, index: int) -> None:
        self.slots[index].done = True
        self._try_move(t, index)

    def _try_move(self, t: int, index: int) -> None:
        slot = self.slots[index]
        if slot.occupant is None or not slot.done:
            return
        if index == len(self.ops) - 1:
            unit = self._depart(t, index)
            self.on_line.pop(unit.key, None)
            self.plant.counters.units_completed += 1
            self.plant.emit(UnitDone(unit, t))
            for record in unit.faults.records:
                self.plant.emit(Truth(unit, {**record, "complete": True}))
            self._freed(t, index)
            return
        following = self.slots[index + 1]
        if not following.free:
            return
        unit = self._depart(t, index)
        following.reserved = True
        self.plant.schedule(t + self.rng.randint(*TRANSFER_MS), self._arrive, index + 1, unit)
        self._freed(t, index)

    def _depart(self, t: int, index: int) -> SimUnit:
        slot = self.slots[index]
        unit = slot.occupant
        self.plant.emit(Leave(unit, self.codes[index], t, slot.arrived_ms))
        self.generators[index].leave()
        slot.occupant, slot.done = None, False
        return unit

    def _freed(self, t: int, index: int) -> None:
        code = self.codes[index]
        kind = self.faults.maintenance_due(code, t)
        if kind is not None:
            self.slots[index].down = True
            what = "tool change" if kind == "tool_wear" else "test seal replaced"
            self.plant.emit(DowntimeStart(code, t, f"simulator: {what}"))
            end = t + self.maintenance_ms
            self.plant.emit(
                Truth(
                    None,
                    {
                        "fault": kind,
                        "line": self.layout.code,
                        "event": "maintenance",
                        "station": code,
                        "from": t,
                        "to": end,
                    },
                )
            )
            self.plant.schedule(end, self._up, index)
            return
        self._pull(t, index)

    def _up(self, t: int, index: int) -> None:
        self.slots[index].down = False
        self.faults.maintained(self.codes[index], t)
        self.plant.emit(DowntimeEnd(self.codes[index], t))
        self._pull(t, index)

    def _pull(self, t: int, index: int) -> None:
        """A station became free: the unit waiting upstream moves in, or a new unit enters."""
        if index > 0:
            self._try_move(t, index - 1)
            return
        unit = self._new_unit(first_index=0)
        self.slots[0].reserved = True
        self.plant.schedule(t + self.rng.randint(*TRANSFER_MS), self._arrive, 0, unit)


# -- the MES side -------------------------------------------------------------------------------

UNITS_PER_WORK_ORDER = 12


def sim_vin(wmi: str, number: int) -> str:
    """A valid VIN for a simulated vehicle: WMI, descriptor SMLT0, check digit, year M,
    plant S, six digits."""
    body = f"{wmi}SMLT00MS{number % 1_000_000:06d}"
    return body[:8] + vin_check_digit(body) + body[9:]


def truth_line(action: Truth, serial: str | None, vin: str | None) -> dict:
    """The ground-truth record as written: times in ISO 8601, the unit's MES identity."""
    record = dict(action.record)
    for key in ("flashed_at", "from", "to"):
        if isinstance(record.get(key), int):
            record[key] = iso(record[key])
    if isinstance(record.get("evidence"), dict):
        evidence = dict(record["evidence"])
        for key in ("from", "to"):
            if isinstance(evidence.get(key), int):
                evidence[key] = iso(evidence[key])
        record["evidence"] = evidence
    if isinstance(record.get("defect"), dict):
        record["defect"] = {**record["defect"], "found_at": iso(record["defect"]["found_at"])}
    if action.unit is not None:
        record = {"unit": serial, "vin": vin, "sim_unit": action.unit.key, **record}
    return record


@dataclass
class SinkReport:
    applied: int = 0
    errors: int = 0
    last_errors: deque = field(default_factory=lambda: deque(maxlen=5))


class NullSink:
    """`--no-mes`: nothing is recorded; units keep their simulated serials."""

    def __init__(self) -> None:
        self.report = SinkReport()

    def apply(self, actions: list[Action]) -> list[dict]:
        truth = []
        for action in actions:
            if isinstance(action, Truth):
                truth.append(truth_line(action, action.unit and f"SIM-{action.unit.key}", None))
        self.report.applied += len(actions)
        return truth

    def close(self) -> None:
        pass


class MesSink:
    """Applies the plant's actions through mes.services, as the source "simulator".

    Called from one worker thread only. A batch of actions is one transaction with a savepoint
    per action, so a refused record (say, a visit that overlaps history left by an earlier run)
    is counted and skipped without losing the others. Units come from the line's open work
    orders (in progress first, then released ones, which it starts); when they run out it
    creates, releases and starts a new work order of 12 units. A unit completes when it leaves
    the last station of the route, and a work order when the last of its units does.
    """

    def __init__(self, layout: PlantLayout) -> None:
        self.layout = {line.code: line for line in layout.lines}
        self.report = SinkReport()
        self.stations: dict[str, Station] = {}
        self.units: dict[str, Unit] = {}
        self.pools: dict[str, deque[Unit]] = defaultdict(deque)
        self.allocated: dict[int, set[int]] = defaultdict(set)  # work order → units taken
        self.finished: dict[int, set[int]] = defaultdict(set)  # work order → units done
        self.downtimes: dict[str, DowntimeEvent] = {}
        self._defects: dict[str, DefectCode | None] = {}
        self._reason: DowntimeReason | None = None
        self._loaded = False

    def apply(self, actions: list[Action]) -> list[dict]:
        truth: list[dict] = []
        with audit_context(user=None, source="simulator"):
            try:
                self._load()
                with transaction.atomic():
                    for action in actions:
                        self._apply(action, truth)
            except DatabaseError as error:
                # The whole batch is gone (the database went away); the plant goes on, with
                # units taken afresh since those of the batch were rolled back.
                self.report.errors += len(actions)
                self.report.last_errors.append(f"database: {error}".strip()[:300])
                connections["default"].close()
                self._forget()
        return truth

    def _forget(self) -> None:
        self.units.clear()
        self.pools.clear()
        self.allocated.clear()
        self.finished.clear()
        self.downtimes.clear()
        self._loaded = False

    def close(self) -> None:
        connections.close_all()

    def _load(self) -> None:
        if self._loaded:
            return
        self.stations = {station.code: station for station in Station.objects.all()}
        self._reason = DowntimeReason.objects.filter(code=MAINTENANCE_REASON).first()
        self._loaded = True

    def _apply(self, action: Action, truth: list[dict]) -> None:
        try:
            if isinstance(action, _UNIT_ACTIONS):
                # Taking the unit (maybe starting or creating a work order for it) stands even
                # when the record itself is refused: later records of the unit need it.
                with transaction.atomic():
                    self._unit(action.unit, action.at)
            with transaction.atomic():
                self._HANDLERS[type(action)](self, action, truth)
            self.report.applied += 1
        except Exception as error:  # noqa: BLE001 - a refused record never stops the plant
            self.report.errors += 1
            self.report.last_errors.append(
                f"{type(action).__name__}: {type(error).__name__}: {error}"[:300]
            )

    # -- handlers -----------------------------------------------------------------------------

    def _arrive(self, action: Arrive, truth) -> None:
        unit = self._unit(action.unit, action.at)
        services.unit_arrive(
            unit=unit, station=self.stations[action.station], at=instant(action.at)
        )

    def _leave(self, action: Leave, truth) -> None:
        unit = self._unit(action.unit, action.at)
        station = self.stations[action.station]
        services.unit_leave(unit=unit, station=station, at=instant(action.at))
        services.counts_report(
            station=station,
            interval_start=instant(action.arrived),
            interval_end=instant(action.at),
            good=1,
            work_order=unit.work_order,
        )

    def _flash(self, action: Flash, truth) -> None:
        services.firmware_flash(
            unit=self._unit(action.unit, action.at),
            component=action.component,
            version=action.version,
            at=instant(action.at),
            station=self.stations[action.station],
        )

    def _quality(self, action: Quality, truth) -> None:
        if action.defect not in self._defects:
            self._defects[action.defect] = DefectCode.objects.filter(code=action.defect).first()
        defect = self._defects[action.defect]
        if defect is None:
            raise LookupError(f"defect code {action.defect!r} is missing (run seed_demo)")
        services.quality_event_record(
            unit=self._unit(action.unit, action.at),
            defect=defect,
            found_at=instant(action.at),
            severity=action.severity,
            source=action.source,
            station=self.stations[action.station],
            description=action.description,
        )

    def _downtime_start(self, action: DowntimeStart, truth) -> None:
        if self._reason is None:
            raise LookupError(f"downtime reason {MAINTENANCE_REASON} is missing (run seed_demo)")
        self.downtimes[action.station] = services.downtime_open(
            station=self.stations[action.station],
            at=instant(action.at),
            reason=self._reason,
            planned=True,
            comment=action.comment,
        )

    def _downtime_end(self, action: DowntimeEnd, truth) -> None:
        downtime = self.downtimes.pop(action.station, None)
        if downtime is not None:
            services.downtime_close(downtime=downtime, at=instant(action.at))

    def _unit_done(self, action: UnitDone, truth) -> None:
        unit = self._unit(action.unit, action.at)
        work_order = unit.work_order
        finished = self.finished[work_order.pk]
        finished.add(unit.pk)
        try:
            with transaction.atomic():
                services.unit_complete(unit=unit, at=instant(action.at))
        except MesError as error:
            # Its departure from the last station was refused, so it is still there: counted,
            # and its work order still completes with the others.
            self.report.errors += 1
            self.report.last_errors.append(f"UnitDone: {type(error).__name__}: {error}"[:300])
        if finished < self.allocated[work_order.pk]:
            return
        if work_order.units.filter(status=UnitStatus.PLANNED).exists():
            return
        work_order.refresh_from_db()
        if work_order.status == WorkOrderStatus.IN_PROGRESS:
            services.work_order_complete(
                work_order=work_order, at=max(instant(action.at), work_order.started_at)
            )

    def _truth(self, action: Truth, truth: list[dict]) -> None:
        serial = vin = None
        if action.unit is not None:
            unit = self.units.get(action.unit.key)
            serial, vin = (unit.serial, unit.vin) if unit else (None, None)
        truth.append(truth_line(action, serial, vin))

    _HANDLERS = {
        Arrive: _arrive,
        Leave: _leave,
        Flash: _flash,
        Quality: _quality,
        DowntimeStart: _downtime_start,
        DowntimeEnd: _downtime_end,
        UnitDone: _unit_done,
        Truth: _truth,
    }

    # -- units and work orders ------------------------------------------------------------------

    def _unit(self, sim: SimUnit, at_ms: int) -> Unit:
        unit = self.units.get(sim.key)
        if unit is not None:
            return unit
        pool = self.pools[sim.line]
        if not pool:
            self._refill(self.layout[sim.line], instant(at_ms))
        unit = pool.popleft()
        self.units[sim.key] = unit
        self.allocated[unit.work_order_id].add(unit.pk)
        return unit

    def _refill(self, layout: LineLayout, at: dt.datetime) -> None:
        pool = self.pools[layout.code]
        product = Product.objects.get(code=layout.product)
        line = Line.objects.get(code=layout.code)
        open_orders = WorkOrder.objects.filter(line=line, product=product).select_related(
            "product", "line"
        )
        for work_order in open_orders.filter(status=WorkOrderStatus.IN_PROGRESS).order_by(
            "started_at", "id"
        ):
            pool.extend(self._units_of(work_order, layout))
            if pool:
                return
        released = open_orders.filter(status=WorkOrderStatus.RELEASED).order_by(
            F("due_at").asc(nulls_last=True), "id"
        )
        for work_order in released:
            started = services.work_order_start(
                work_order=work_order, at=max(at, work_order.released_at)
            )
            pool.extend(self._units_of(started, layout))
            if pool:
                return
        work_order = services.work_order_create(
            external_id=self._external_id(layout, at),
            product=product,
            line=line,
            quantity=UNITS_PER_WORK_ORDER,
        )
        services.work_order_release(work_order=work_order, at=at)
        work_order = services.work_order_start(work_order=work_order, at=at)
        pool.extend(self._units_of(work_order, layout))
        if not pool:
            raise LookupError(f"no units for line {layout.code}")

    def _units_of(self, work_order: WorkOrder, layout: LineLayout) -> list[Unit]:
        taken = {pk for units in self.allocated.values() for pk in units}
        units = [
            unit
            for unit in work_order.units.filter(status=UnitStatus.PLANNED)
            .select_related("work_order__product")
            .order_by("serial")
            if unit.pk not in taken
        ]
        missing = work_order.quantity - work_order.units.count()
        if missing > 0:
            units.extend(self._create_units(work_order, layout, missing))
        return units

    def _create_units(self, work_order: WorkOrder, layout: LineLayout, count: int) -> list[Unit]:
        prefix = f"{work_order.product.code}-SIM-"
        last = (
            Unit.objects.filter(serial__startswith=prefix)
            .order_by("-serial")
            .values_list("serial", flat=True)
            .first()
        )
        number = int(last[len(prefix) :]) + 1 if last and last[len(prefix) :].isdigit() else 1
        created = []
        attempts = 0
        while len(created) < count and attempts < count + 100:
            attempts += 1
            vin = sim_vin(layout.wmi or "1HG", number) if layout.vehicle else None
            try:
                with transaction.atomic():
                    created.append(
                        services.unit_create(
                            work_order=work_order, serial=f"{prefix}{number:06d}", vin=vin
                        )
                    )
            except Conflict:
                pass  # the serial or VIN exists: take the next number
            number += 1
        return created

    def _external_id(self, layout: LineLayout, at: dt.datetime) -> str:
        base = f"SIM-{layout.code}-{at:%Y%m%d-%H%M%S}"
        external_id, suffix = base, 1
        while WorkOrder.objects.filter(external_id=external_id).exists():
            suffix += 1
            external_id = f"{base}-{suffix}"
        return external_id
