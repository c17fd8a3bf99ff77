"""The labelled faults the simulator injects, each with a cause the data reveals.

- **bad_firmware** — on a vehicle line, some units get the release candidate `v2.1.5-rc` of the
  EPS (electric power steering) software at the ECU flash station. While the wheel nuts are run
  down later on the line, that software's rack-centring assist loads the hub: the nut runner's
  torque drifts up over the visit (+6 to +10 % by its end). End-of-line inspection then finds
  a steering pull on most of those units (`steering`, source `inspection`).
- **tool_wear** — a nut runner's tool wears over hours: the scatter of the final torque grows
  and its mean sinks, until joints end under the lower limit and end-of-line inspection records
  `torque_low`. A tool change (a planned downtime) restores it.
- **seal_wear** — a leak tester's test seal degrades over hours: the measured leak rate creeps
  up and the pressure decays faster, until good units fail the test (`leak`, source
  `test_rig`). Replacing the seal (a planned downtime) restores it.
- **none** — a few cosmetic defects at end-of-line with no cause in the signals, so a model
  that flags everything is not rewarded.

Every draw comes from one random stream per line seeded from the run's seed, so the same seed
and arguments inject the same faults into the same units. Each fault is written to the ground
truth (see `TruthRecord`) so Foresight's predictions can be scored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mes.models import StationType
from telemetry.simulator.signals import StationSpec, VisitFaults

HOUR_MS = 3_600_000

VEHICLE_FIRMWARE = {"BCM": "v5.0.3", "EPS": "v2.1.4"}
PACK_FIRMWARE = {"BMS": "v3.2.0"}
BAD_FIRMWARE = ("EPS", "v2.1.5-rc")
MAINTENANCE_REASON = "PLANNED.MAINTENANCE"


@dataclass(frozen=True)
class FaultSettings:
    enabled: bool = True
    bad_firmware_share: float = 0.15  # of units on a vehicle line
    steering_defect_share: float = 0.9  # of units with the bad firmware
    drift_pct: tuple[float, float] = (6.0, 10.0)  # torque gain reached by the visit's end
    tool_life_h: float = 4.0  # simulated hours from a new tool to a worn one
    seal_life_h: float = 6.0
    maintenance_min: float = 3.0  # tool change / seal replacement
    background_defect_share: float = 0.01  # cosmetic defects without a cause
    exposure_threshold: float = 0.6  # wear level from which units are labelled as exposed


@dataclass
class Defect:
    code: str
    severity: str
    source: str
    station: str  # code of the station that records it
    description: str


@dataclass
class UnitFaults:
    """What the faults did to one unit, filled in as it moves along the line."""

    firmware: dict[str, str] = field(default_factory=dict)
    drift: float = 0.0  # torque gain at the drift station (0: good firmware)
    steering: bool = False
    records: list[dict] = field(default_factory=list)  # the ground truth, one per fault
    at_inspection: list[Defect] = field(default_factory=list)


class Wear:
    """A tool or a seal wearing from new (0) to worn (1) over its life, then replaced."""

    def __init__(self, *, life_ms: int, new_at_ms: int) -> None:
        self.life_ms = life_ms
        self.new_at_ms = new_at_ms

    def level(self, t_ms: int) -> float:
        return max(0.0, (t_ms - self.new_at_ms) / self.life_ms)

    def due(self, t_ms: int) -> bool:
        return self.level(t_ms) >= 1.0


def _rng(seed: int | str, line: str) -> random.Random:
    return random.Random(f"aegis-simulator:{seed}:{line}:faults")  # noqa: S311 - simulation


class LineFaults:
    """The fault scenarios of one line, placed by station type along its route.

    The firmware fault needs a vehicle line with, in route order, a flashing station, a
    tightening station after it (where the torque drifts) and an inspection station after that.
    Tool wear acts on the line's first tightening station that is not the drift station; seal
    wear on every leak-test station. A line without such stations gets no such fault.
    """

    def __init__(
        self,
        *,
        line: str,
        route: list[StationSpec],
        vehicle: bool,
        settings: FaultSettings,
        seed: int | str,
        start_ms: int,
    ) -> None:
        self.settings = settings
        self.rng = _rng(seed, line)
        self.vehicle = vehicle
        types = [station.station_type for station in route]
        codes = [station.code for station in route]
        self.firmware = dict(VEHICLE_FIRMWARE if vehicle else PACK_FIRMWARE)
        self.flash_index = _first(types, StationType.FLASHING)
        inspections = [i for i, kind in enumerate(types) if kind == StationType.INSPECTION]
        self.inspection_index = inspections[-1] if inspections else None
        self.drift_index = None
        if vehicle and self.flash_index is not None and self.inspection_index is not None:
            self.drift_index = _first(
                types, StationType.TIGHTENING, after=self.flash_index, before=self.inspection_index
            )
        self.drift_station = codes[self.drift_index] if self.drift_index is not None else None
        self.inspection_station = (
            codes[self.inspection_index] if self.inspection_index is not None else None
        )
        self.wear: dict[str, tuple[str, Wear]] = {}
        if settings.enabled:
            tools = [
                code
                for code, kind in zip(codes, types, strict=True)
                if kind == StationType.TIGHTENING and code != self.drift_station
            ]
            # A run starts somewhere in a tool's and a seal's life, so that short runs see wear.
            for code in tools[:1]:
                life = int(settings.tool_life_h * HOUR_MS)
                new_at = start_ms - int(self.rng.uniform(0.3, 0.95) * life)
                self.wear[code] = ("tool_wear", Wear(life_ms=life, new_at_ms=new_at))
            for code, kind in zip(codes, types, strict=True):
                if kind == StationType.LEAK_TEST:
                    life = int(settings.seal_life_h * HOUR_MS)
                    new_at = start_ms - int(self.rng.uniform(0.3, 0.95) * life)
                    self.wear[code] = ("seal_wear", Wear(life_ms=life, new_at_ms=new_at))

    # -- per unit ---------------------------------------------------------------------------

    def new_unit(self, *, may_drift: bool) -> UnitFaults:
        """A unit entering the line: its firmware and whether the bad version hits it."""
        faults = UnitFaults(firmware=dict(self.firmware))
        if not (self.settings.enabled and self.drift_station and may_drift):
            return faults
        if self.rng.random() < self.settings.bad_firmware_share:
            component, version = BAD_FIRMWARE
            faults.firmware[component] = version
            low, high = self.settings.drift_pct
            faults.drift = self.rng.uniform(low, high) / 100.0
            faults.steering = self.rng.random() < self.settings.steering_defect_share
        return faults

    def visit_faults(self, unit: UnitFaults, station: str, t_ms: int) -> VisitFaults:
        faults = VisitFaults()
        if station == self.drift_station:
            faults.drift = unit.drift
        if station in self.wear:
            kind, wear = self.wear[station]
            level = min(1.2, wear.level(t_ms))
            if kind == "tool_wear":
                faults.noise = 1.0 + 4.0 * level**2
                faults.offset = -0.25 * level**2
            else:
                faults.seal = 1.2 * level**3
        return faults

    def maintenance_due(self, station: str, t_ms: int) -> str | None:
        """The fault whose tool or seal is worn out at this station, if any."""
        if station in self.wear and self.wear[station][1].due(t_ms):
            return self.wear[station][0]
        return None

    def maintained(self, station: str, t_ms: int) -> None:
        self.wear[station][1].new_at_ms = t_ms

    def wear_level(self, station: str, t_ms: int) -> float:
        return self.wear[station][1].level(t_ms) if station in self.wear else 0.0

    def background_defect(self) -> bool:
        return self.settings.enabled and self.rng.random() < self.settings.background_defect_share


def _first(types: list[str], kind: str, *, after: int = -1, before: int | None = None):
    end = len(types) if before is None else before
    for index in range(after + 1, end):
        if types[index] == kind:
            return index
    return None
