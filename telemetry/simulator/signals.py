"""What a station's PLC measures, sample by sample: pure, deterministic signal generators.

One `StationSignals` per station. The plant model tells it when a unit arrives (with the work
window of the operation and any fault acting on the visit) and when it leaves; `sample(ts)`
then returns every signal of the station at that instant, as the PLC would publish it.

Two random streams per station keep runs reproducible: the *visit* stream draws what the unit
is like (final torques, leak rate, brake force) once per arrival, and the *noise* stream draws
sensor noise once per sample. So the outcome of a visit — and hence which defects the plant
records — does not depend on the sampling rate or on which stations publish telemetry.

Values stay inside each signal's nominal range unless a fault acts on the visit. Signals that
only mean something while the station works (a joint's torque, the measured leak rate, the
brake force) hold their last value between cycles, as a PLC's result registers do; continuous
signals (voltage, current, temperature, vibration, roll speed) keep measuring. Tightening
curves are reported from the snug threshold (the lower end of the torque range) upwards, as nut
runners record them above a threshold torque.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from mes.models import StationType


@dataclass(frozen=True)
class SignalSpec:
    name: str
    unit: str
    low: float
    high: float

    @property
    def mid(self) -> float:
        return (self.low + self.high) / 2

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2 or 0.5


@dataclass(frozen=True)
class StationSpec:
    id: int
    code: str
    station_type: str
    signals: tuple[SignalSpec, ...]


def signal_spec(
    name: str, unit: str, nominal_min: float | None, nominal_max: float | None
) -> SignalSpec:
    """A signal as the generators use it: a missing bound is one unit from the other one."""
    if nominal_min is None and nominal_max is None:
        return SignalSpec(name, unit, 0.0, 1.0)
    low = nominal_max - 1.0 if nominal_min is None else nominal_min
    high = low + 1.0 if nominal_max is None else nominal_max
    return SignalSpec(name, unit, float(low), float(high))


_MOTOR = SignalSpec("motor_current", "A", 0.5, 15.0)
_VIBRATION = SignalSpec("vibration", "mm/s", 0.0, 4.0)

# Signals a station type measures besides those the MES declares for the station. A station
# that declares a signal of the same name keeps its own unit and range.
AUXILIARY_SIGNALS: dict[str, tuple[SignalSpec, ...]] = {
    StationType.TIGHTENING: (_MOTOR, SignalSpec("spindle_temp", "°C", 20.0, 60.0)),
    StationType.FLASHING: (
        SignalSpec("ecu_current", "A", 0.2, 3.0),
        SignalSpec("flash_progress", "%", 0.0, 100.0),
    ),
    StationType.ALIGNMENT: (_MOTOR, _VIBRATION),
    StationType.LEAK_TEST: (
        SignalSpec("gas_temp", "°C", 18.0, 30.0),
        SignalSpec("fill_flow", "l/min", 0.0, 20.0),
    ),
    StationType.INSPECTION: (
        SignalSpec("vibration", "mm/s", 0.0, 6.0),
        SignalSpec("roller_current", "A", 5.0, 80.0),
    ),
    StationType.ASSEMBLY: (_MOTOR, _VIBRATION),
    StationType.MARRIAGE: (_MOTOR, _VIBRATION),
    StationType.TEST: (_MOTOR, _VIBRATION),
}


def station_signals(station_type: str, declared: tuple[SignalSpec, ...]) -> tuple[SignalSpec, ...]:
    """The declared signals, then the station type's auxiliary ones it does not declare."""
    names = {signal.name for signal in declared}
    extra = tuple(s for s in AUXILIARY_SIGNALS.get(station_type, ()) if s.name not in names)
    return tuple(declared) + extra


# Where in the work window things happen (fractions of it); the plant model uses the same ones
# to time the MES records (firmware flashes, the end of a leak test, the roll-test verdict).
FLASH_WINDOW = (0.05, 0.85)
LEAK_PHASES = (0.15, 0.30, 0.90)  # fill until, stabilise until, measure until (then vent)
ROLL_PHASES = (0.25, 0.60, 0.85)  # accelerate until, cruise until, brake until (then stop)
JOINTS_PER_VISIT = 4


@dataclass
class VisitFaults:
    """What a fault does to one visit (all zero: nothing)."""

    drift: float = 0.0  # torque gain reached at the end of the work (0.08: +8 %)
    noise: float = 1.0  # multiplier of torque scatter and noise (tool wear)
    offset: float = 0.0  # shift of the final torque, in half-ranges (tool wear: negative)
    seal: float = 0.0  # leak rate a worn test seal adds, in leak-rate ranges

    @property
    def active(self) -> bool:
        return self.drift > 0.001 or self.noise > 1.05 or self.offset < -0.01 or self.seal > 0.02


@dataclass
class Visit:
    """A unit at the station: its work window (epoch ms) and what it turned out like."""

    arrive_ms: int
    work_from_ms: int
    work_to_ms: int
    faults: VisitFaults
    params: dict = field(default_factory=dict)
    outcome: dict = field(default_factory=dict)

    def progress(self, ts: int) -> float:
        """0 at the start of the work window, 1 at its end."""
        span = self.work_to_ms - self.work_from_ms
        return min(1.0, max(0.0, (ts - self.work_from_ms) / span)) if span > 0 else 1.0


def _role(station_type: str, name: str) -> str:
    roles = _ROLES.get(station_type, {})
    return roles.get(name, "measure")


_ROLES: dict[str, dict[str, str]] = {
    StationType.TIGHTENING: {
        "torque": "torque",
        "angle": "angle",
        "motor_current": "current",
        "spindle_temp": "temperature",
    },
    StationType.FLASHING: {
        "supply_voltage": "voltage",
        "flash_rate": "flash_rate",
        "ecu_current": "current",
        "flash_progress": "progress",
    },
    StationType.LEAK_TEST: {
        "pressure": "pressure",
        "leak_rate": "leak_rate",
        "gas_temp": "temperature",
        "fill_flow": "fill_flow",
    },
    StationType.INSPECTION: {
        "roll_speed": "roll_speed",
        "brake_force": "brake_force",
        "vibration": "vibration",
        "roller_current": "current",
    },
    StationType.ALIGNMENT: {"motor_current": "current", "vibration": "vibration"},
    StationType.ASSEMBLY: {"motor_current": "current", "vibration": "vibration"},
    StationType.MARRIAGE: {"motor_current": "current", "vibration": "vibration"},
    StationType.TEST: {"motor_current": "current", "vibration": "vibration"},
}


def _rng(seed: int | str, code: str, stream: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: the same on every machine and process.
    return random.Random(f"aegis-simulator:{seed}:{code}:{stream}")  # noqa: S311 - simulation


class StationSignals:
    """The PLC of one station. Subclasses implement the station types' physics."""

    def __init__(self, spec: StationSpec, *, seed: int | str, rate_hz: float) -> None:
        self.spec = spec
        self.code = spec.code
        self.signals = station_signals(spec.station_type, spec.signals)
        self.names = tuple(signal.name for signal in self.signals)
        self.by_role: dict[str, SignalSpec] = {}
        self.measured: list[SignalSpec] = []
        for signal in self.signals:
            role = _role(spec.station_type, signal.name)
            if role == "measure" or role in self.by_role:
                self.measured.append(signal)
            else:
                self.by_role[role] = signal
        self.visit_rng = _rng(seed, spec.code, "visit")
        self.noise = _rng(seed, spec.code, "noise")
        self.dt_s = 1.0 / rate_hz
        self.visit: Visit | None = None
        # Result registers: the last value of every signal (a fresh PLC shows mid-range).
        self.held = {signal.name: signal.mid for signal in self.signals}
        self._bounds = [(signal.name, signal.low, signal.high) for signal in self.signals]

    # -- the plant model's calls ----------------------------------------------------------

    def arrive(
        self, *, arrive_ms: int, work_from_ms: int, work_to_ms: int, faults: VisitFaults
    ) -> Visit:
        visit = Visit(arrive_ms, work_from_ms, work_to_ms, faults)
        rng = self.visit_rng
        for signal in self.measured:
            # The unit's true value sits well inside the range; the reading converges to it.
            true = signal.mid + max(-0.7, min(0.7, rng.gauss(0.0, 0.25))) * signal.half
            visit.params[signal.name] = (true, self.held[signal.name])
        self._plan(visit, rng)
        self.visit = visit
        return visit

    def leave(self) -> None:
        self.visit = None

    def sample(self, ts: int) -> dict[str, float]:
        """Every signal of the station at `ts` (epoch ms), rounded to 4 decimals."""
        visit = self.visit
        values = self._sample(ts, visit)
        gauss = self.noise.gauss
        for signal in self.measured:
            name = signal.name
            if visit is not None and visit.work_from_ms <= ts <= visit.work_to_ms:
                true, start = visit.params[name]
                elapsed = (ts - visit.work_from_ms) / 1000.0
                settle = math.exp(-elapsed / 4.0)
                wobble = 0.2 * signal.half * settle * math.sin(math.pi * elapsed)
                value = true + (start - true) * settle + wobble + gauss(0.0, 0.03) * signal.half
                self.held[name] = true
                values[name] = value
            else:
                values[name] = self.held[name]
        if visit is None or not visit.faults.active:
            for name, low, high in self._bounds:
                value = values[name]
                if value < low:
                    values[name] = low
                elif value > high:
                    values[name] = high
        return {name: round(values[name], 4) for name in self.names}

    # -- per station type -------------------------------------------------------------------

    def _plan(self, visit: Visit, rng: random.Random) -> None:
        """Draw what this unit is like at this station (into visit.params / visit.outcome)."""

    def _sample(self, ts: int, visit: Visit | None) -> dict[str, float]:
        """Values of the role signals at `ts`; measured signals are filled in by `sample`."""
        return self._machine(ts, visit)

    def _machine(self, ts: int, visit: Visit | None) -> dict[str, float]:
        """Drive current and vibration of a station that positions or presses the unit."""
        values: dict[str, float] = {}
        working = visit is not None and visit.work_from_ms <= ts <= visit.work_to_ms
        gauss = self.noise.gauss
        current = self.by_role.get("current")
        if current is not None:
            level = 0.35 if working else 0.05
            values[current.name] = current.low + (level + gauss(0.0, 0.01)) * (
                current.high - current.low
            )
        vibration = self.by_role.get("vibration")
        if vibration is not None:
            level = 0.3 if working else 0.08
            values[vibration.name] = vibration.low + abs(level + gauss(0.0, 0.03)) * (
                vibration.high - vibration.low
            )
        return values


class TighteningSignals(StationSignals):
    """A nut runner: per joint, torque rises from the snug threshold to its final value while
    the angle grows; the spindle motor's current follows the torque and heats the spindle."""

    def __init__(self, spec: StationSpec, *, seed: int | str, rate_hz: float) -> None:
        super().__init__(spec, seed=seed, rate_hz=rate_hz)
        self.spindle_temp = 30.0
        self.torque = self.by_role.get("torque")
        self.angle = self.by_role.get("angle")

    def _plan(self, visit: Visit, rng: random.Random) -> None:
        # The controller clears its result at a new cycle: the previous unit's last joint
        # (maybe drifted) never shows while this unit is at the station.
        if self.torque is not None:
            self.held[self.torque.name] = self._snug()
        if self.angle is not None:
            self.held[self.angle.name] = self.angle.low
        faults = visit.faults
        span = visit.work_to_ms - visit.work_from_ms
        slot = span / JOINTS_PER_VISIT
        rundown = min(3000.0, 0.6 * slot)
        joints = []
        finals = []
        for index in range(JOINTS_PER_VISIT):
            start = visit.work_from_ms + index * slot
            end = start + rundown
            unit_z = rng.gauss(0.0, 1.0)
            torque_final = angle_final = 0.0
            if self.torque is not None:
                t = self.torque
                scatter = max(-3.0, min(3.0, unit_z)) if faults.noise <= 1.05 else unit_z
                torque_final = (
                    t.mid + faults.offset * t.half + scatter * 0.1 * t.half * faults.noise
                )
                # A drifting gain acts on the torque actually reached at the joint's end.
                gain = 1.0 + faults.drift * visit.progress(int(end))
                finals.append(torque_final * gain)
            if self.angle is not None:
                a = self.angle
                spread = max(-0.6, min(0.6, 0.3 * unit_z + rng.gauss(0.0, 0.15)))
                angle_final = a.mid + spread * a.half
            joints.append((start, end, torque_final, angle_final))
        visit.params["joints"] = joints
        visit.params["slot"] = slot
        if finals:
            visit.outcome["min_torque"] = min(finals)
            visit.outcome["max_torque"] = max(finals)

    def _sample(self, ts: int, visit: Visit | None) -> dict[str, float]:
        values: dict[str, float] = {}
        gauss = self.noise.gauss
        torque, angle = self.torque, self.angle
        fraction = -1.0  # not in a rundown
        joint = None
        if visit is not None and visit.work_from_ms <= ts <= visit.work_to_ms:
            index = min(
                JOINTS_PER_VISIT - 1, int((ts - visit.work_from_ms) // visit.params["slot"])
            )
            joint = visit.params["joints"][index]
            if ts < joint[1]:
                fraction = (ts - joint[0]) / (joint[1] - joint[0])
            else:
                self._hold(visit, joint)
        faults = visit.faults if visit is not None else None
        if fraction >= 0.0 and joint is not None and faults is not None:
            curve = fraction**1.5
            if torque is not None:
                gain = 1.0 + faults.drift * visit.progress(ts)
                snug = self._snug()
                noise = gauss(0.0, 0.006) * (torque.high - torque.low) * faults.noise
                values[torque.name] = snug + (joint[2] * gain - snug) * curve + noise
            if angle is not None:
                values[angle.name] = (
                    angle.low
                    + (joint[3] - angle.low) * fraction
                    + gauss(0.0, 0.003) * (angle.high - angle.low)
                )
            duty = 1.0
        else:
            if torque is not None:
                values[torque.name] = self.held[torque.name]
            if angle is not None:
                values[angle.name] = self.held[angle.name]
            curve, duty = 0.0, 0.0
        current = self.by_role.get("current")
        if current is not None:
            span = current.high - current.low
            values[current.name] = current.low + span * (0.03 + 0.8 * curve + gauss(0.0, 0.005))
        temperature = self.by_role.get("temperature")
        if temperature is not None:
            span = temperature.high - temperature.low
            target = temperature.low + span * (0.2 + 0.6 * duty)
            self.spindle_temp += (target - self.spindle_temp) * self.dt_s / 300.0
            values[temperature.name] = self.spindle_temp + gauss(0.0, 0.002) * span
        return values

    def _snug(self) -> float:
        return self.torque.low + 0.05 * (self.torque.high - self.torque.low)

    def _hold(self, visit: Visit, joint: tuple) -> None:
        """After a joint's rundown the controller shows its result until the next one."""
        if self.torque is not None:
            gain = 1.0 + visit.faults.drift * visit.progress(int(joint[1]))
            self.held[self.torque.name] = joint[2] * gain
        if self.angle is not None:
            self.held[self.angle.name] = joint[3]


class FlashingSignals(StationSignals):
    """An ECU flash bench: the supply sags under the flashing load, the transfer runs at the
    ECU's rate, the progress counts to 100 %."""

    def _plan(self, visit: Visit, rng: random.Random) -> None:
        span = visit.work_to_ms - visit.work_from_ms
        visit.params["flash"] = (
            visit.work_from_ms + FLASH_WINDOW[0] * span,
            visit.work_from_ms + FLASH_WINDOW[1] * span,
        )
        rate = self.by_role.get("flash_rate")
        if rate is not None:
            visit.params["rate"] = rate.mid + max(-0.6, min(0.6, rng.gauss(0.0, 0.2))) * rate.half

    def _sample(self, ts: int, visit: Visit | None) -> dict[str, float]:
        values: dict[str, float] = {}
        gauss = self.noise.gauss
        flashing, fraction, done = False, 0.0, False
        if visit is not None:
            start, end = visit.params["flash"]
            flashing = start <= ts < end
            fraction = (ts - start) / (end - start) if flashing else 0.0
            done = ts >= end
        voltage = self.by_role.get("voltage")
        if voltage is not None:
            level = 0.1 if flashing else 0.5  # of the half-range above the middle
            values[voltage.name] = voltage.mid + (level + gauss(0.0, 0.05)) * voltage.half
        rate = self.by_role.get("flash_rate")
        if rate is not None:
            if flashing:
                value = visit.params["rate"] + gauss(0.0, 0.06) * rate.half
                self.held[rate.name] = value
                values[rate.name] = value
            else:
                values[rate.name] = self.held[rate.name]
        current = self.by_role.get("current")
        if current is not None:
            level = 0.5 if flashing else 0.05
            values[current.name] = current.low + (level + gauss(0.0, 0.01)) * (
                current.high - current.low
            )
        progress = self.by_role.get("progress")
        if progress is not None:
            share = fraction if flashing else (1.0 if done else 0.0)
            values[progress.name] = progress.low + share * (progress.high - progress.low)
        return values


class LeakTestSignals(StationSignals):
    """A pressure-decay leak tester: fill, stabilise, measure the decay, vent. The measured
    leak rate converges to the unit's leak plus whatever a worn test seal lets out."""

    def __init__(self, spec: StationSpec, *, seed: int | str, rate_hz: float) -> None:
        super().__init__(spec, seed=seed, rate_hz=rate_hz)
        self.gas_temp = 22.0
        pressure = self.by_role.get("pressure")
        if pressure is not None:
            self.held[pressure.name] = pressure.low

    def _plan(self, visit: Visit, rng: random.Random) -> None:
        leak = self.by_role.get("leak_rate")
        if leak is None:
            return
        span = leak.high - leak.low
        unit_leak = leak.low + span * max(0.02, min(0.6, rng.gauss(0.25, 0.08)))
        measured = unit_leak + visit.faults.seal * span
        visit.params["leak"] = measured
        visit.outcome["leak_rate"] = measured

    def _sample(self, ts: int, visit: Visit | None) -> dict[str, float]:
        values: dict[str, float] = {}
        gauss = self.noise.gauss
        pressure = self.by_role.get("pressure")
        leak = self.by_role.get("leak_rate")
        fill_end, stable_end, measure_end = LEAK_PHASES
        phase, fraction = "idle", 0.0
        if visit is not None and visit.work_from_ms <= ts <= visit.work_to_ms:
            progress = visit.progress(ts)
            if progress < fill_end:
                phase, fraction = "fill", progress / fill_end
            elif progress < stable_end:
                phase, fraction = "stabilise", (progress - fill_end) / (stable_end - fill_end)
            elif progress < measure_end:
                phase, fraction = "measure", (progress - stable_end) / (measure_end - stable_end)
            else:
                phase, fraction = "vent", (progress - measure_end) / (1.0 - measure_end)
        leak_share = 0.0
        if leak is not None and visit is not None and "leak" in visit.params:
            leak_share = (visit.params["leak"] - leak.low) / (leak.high - leak.low)
        if pressure is not None:
            span = pressure.high - pressure.low
            test = pressure.low + 0.92 * span
            decay = 0.5 * (test - pressure.low) * leak_share  # over the whole measurement
            noise = gauss(0.0, 0.003) * span
            if phase == "fill":
                value = pressure.low + (test - pressure.low) * fraction**0.7
            elif phase == "stabilise":
                value = test + 0.05 * span * math.exp(-5.0 * fraction) - 0.05 * span
                value += 0.05 * span * fraction
            elif phase == "measure":
                value = test - decay * fraction
            elif phase == "vent":
                end = test - decay
                value = end + (pressure.low - end) * fraction
            else:
                value = pressure.low + 0.01 * span
            values[pressure.name] = value + noise
        if leak is not None:
            if phase == "measure":
                span = leak.high - leak.low
                start = leak.low + 0.8 * span
                target = visit.params["leak"]
                value = target + (start - target) * math.exp(-6.0 * fraction)
                value += gauss(0.0, 0.03) * span * (1.0 - fraction)
                self.held[leak.name] = value
                values[leak.name] = value
            else:
                values[leak.name] = self.held[leak.name]
        flow = self.by_role.get("fill_flow")
        if flow is not None:
            level = 0.8 if phase == "fill" else 0.01
            values[flow.name] = flow.low + abs(level + gauss(0.0, 0.01)) * (flow.high - flow.low)
        temperature = self.by_role.get("temperature")
        if temperature is not None:
            span = temperature.high - temperature.low
            # Mean-reverting drift of the test gas temperature around a third of the range.
            self.gas_temp += (temperature.low + span / 3 - self.gas_temp) * self.dt_s / 600.0
            self.gas_temp += gauss(0.0, 0.002) * span * math.sqrt(self.dt_s)
            values[temperature.name] = self.gas_temp
        return values


class InspectionSignals(StationSignals):
    """An end-of-line roll and brake test: the rollers spin the wheels up to test speed,
    hold, brake; vibration and roller current follow the speed."""

    def _plan(self, visit: Visit, rng: random.Random) -> None:
        brake = self.by_role.get("brake_force")
        if brake is not None:
            share = max(-0.6, min(0.6, rng.gauss(0.0, 0.2)))
            visit.params["brake"] = brake.mid + share * brake.half

    def _sample(self, ts: int, visit: Visit | None) -> dict[str, float]:
        values: dict[str, float] = {}
        gauss = self.noise.gauss
        speed_signal = self.by_role.get("roll_speed")
        brake = self.by_role.get("brake_force")
        accelerate_end, cruise_end, brake_end = ROLL_PHASES
        speed_share, braking, fraction = 0.0, False, 0.0
        if visit is not None and visit.work_from_ms <= ts <= visit.work_to_ms:
            progress = visit.progress(ts)
            if progress < accelerate_end:
                speed_share = progress / accelerate_end
            elif progress < cruise_end:
                speed_share = 1.0
            elif progress < brake_end:
                fraction = (progress - cruise_end) / (brake_end - cruise_end)
                speed_share, braking = 1.0 - fraction, True
        speed = 0.0
        if speed_signal is not None:
            test_speed = speed_signal.low + 0.67 * (speed_signal.high - speed_signal.low)
            speed = speed_signal.low + (test_speed - speed_signal.low) * speed_share
            if speed_share > 0.0:
                speed += gauss(0.0, 0.002) * (speed_signal.high - speed_signal.low)
            values[speed_signal.name] = speed
        if brake is not None:
            if braking and "brake" in visit.params:
                force = visit.params["brake"]
                value = brake.low + (force - brake.low) * min(1.0, 3.0 * fraction)
                value += gauss(0.0, 0.02) * brake.half
                self.held[brake.name] = value
                values[brake.name] = value
            else:
                values[brake.name] = self.held[brake.name]
        vibration = self.by_role.get("vibration")
        if vibration is not None:
            span = vibration.high - vibration.low
            values[vibration.name] = vibration.low + span * abs(
                0.04 + 0.45 * speed_share + gauss(0.0, 0.02) * (1.0 + speed_share)
            )
        current = self.by_role.get("current")
        if current is not None:
            span = current.high - current.low
            load = 0.55 * speed_share + (0.25 if braking else 0.0)
            values[current.name] = current.low + span * (0.02 + load + gauss(0.0, 0.01))
        return values


_GENERATORS: dict[str, type[StationSignals]] = {
    StationType.TIGHTENING: TighteningSignals,
    StationType.FLASHING: FlashingSignals,
    StationType.LEAK_TEST: LeakTestSignals,
    StationType.INSPECTION: InspectionSignals,
}


def station_generator(spec: StationSpec, *, seed: int | str, rate_hz: float) -> StationSignals:
    """The generator for the station's type; alignment, assembly, marriage and functional-test
    stations measure their declared signals per unit and drive their motors."""
    return _GENERATORS.get(spec.station_type, StationSignals)(spec, seed=seed, rate_hz=rate_hz)
