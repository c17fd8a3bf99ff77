"""The demo plant (`manage.py seed_demo`): a site with two lines of six stations and the signals
their PLCs publish (those of the simulator included), products and routes, three shifts with
breaks, work orders and units with valid VINs, and one user per role.

Every step is idempotent: run it any number of times; it only adds what is missing. Demo users
are only ever created or changed when this command created them before (they are listed in the
credentials file), so an existing `admin` account is never touched.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import zoneinfo
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from aegis.embedded.servers import write_private
from mes import roles
from mes.models import (
    Area,
    DefectCode,
    DowntimeReason,
    Line,
    Product,
    Route,
    RouteOperation,
    ScrapReason,
    ShiftPattern,
    ShiftTemplate,
    Site,
    Station,
    StationSignal,
    StationType,
    Unit,
    WorkOrder,
    WorkOrderStatus,
    vin_check_digit,
)
from mes.services import shifts_generate, work_order_release, work_order_start
from telemetry.simulator.signals import AUXILIARY_SIGNALS

# code, name, type, ideal cycle time (s), signals: (name, unit, nominal min, nominal max)
LINES = {
    "L1": {
        "name": "Final assembly line 1",
        "product": ("SEDAN-A", "Sedan A, left-hand drive", Decimal("58")),
        "wmi": "1HG",  # the vehicles of this line carry VINs
        "stations": [
            (
                "1",
                "Steering rack torque",
                StationType.TIGHTENING,
                52,
                [("torque", "N·m", 40.0, 48.0), ("angle", "deg", 30.0, 60.0)],
            ),
            (
                "2",
                "ECU flash",
                StationType.FLASHING,
                55,
                [("supply_voltage", "V", 12.8, 14.4), ("flash_rate", "kB/s", 80.0, 200.0)],
            ),
            (
                "3",
                "Wheel alignment",
                StationType.ALIGNMENT,
                56,
                [("toe", "deg", -0.10, 0.20), ("camber", "deg", -1.20, -0.30)],
            ),
            (
                "4",
                "Coolant leak test",
                StationType.LEAK_TEST,
                50,
                [("pressure", "bar", 1.4, 1.6), ("leak_rate", "cm³/min", 0.0, 2.0)],
            ),
            (
                "5",
                "Wheel nut runner",
                StationType.TIGHTENING,
                54,
                [("torque", "N·m", 110.0, 130.0), ("angle", "deg", 20.0, 45.0)],
            ),
            (
                "6",
                "End-of-line inspection",
                StationType.INSPECTION,
                58,
                [("roll_speed", "km/h", 0.0, 120.0), ("brake_force", "kN", 3.5, 6.0)],
            ),
        ],
    },
    "L2": {
        "name": "Battery pack line 2",
        "product": ("PACK-B", "EV battery pack B, 82 kWh", Decimal("75")),
        "wmi": None,  # packs have serials only
        "stations": [
            (
                "7",
                "Module stack torque",
                StationType.TIGHTENING,
                70,
                [("torque", "N·m", 8.0, 10.0), ("angle", "deg", 15.0, 40.0)],
            ),
            (
                "8",
                "BMS flash",
                StationType.FLASHING,
                68,
                [("supply_voltage", "V", 11.8, 12.6), ("flash_rate", "kB/s", 60.0, 150.0)],
            ),
            (
                "9",
                "Busbar alignment",
                StationType.ALIGNMENT,
                66,
                [("offset_x", "mm", -0.3, 0.3), ("offset_y", "mm", -0.3, 0.3)],
            ),
            (
                "10",
                "Pack leak test",
                StationType.LEAK_TEST,
                75,
                [("pressure", "mbar", 195.0, 205.0), ("leak_rate", "cm³/min", 0.0, 0.5)],
            ),
            (
                "11",
                "Busbar torque",
                StationType.TIGHTENING,
                72,
                [("torque", "N·m", 14.0, 16.0), ("angle", "deg", 25.0, 50.0)],
            ),
            (
                "12",
                "End-of-line inspection",
                StationType.INSPECTION,
                74,
                [("insulation", "MΩ", 500.0, 5000.0), ("cell_delta", "mV", 0.0, 15.0)],
            ),
        ],
    },
}

SHIFTS = [
    ("Early", dt.time(6), dt.time(14), [("Breakfast", "09:00", 15), ("Lunch", "11:30", 30)]),
    ("Late", dt.time(14), dt.time(22), [("Break", "17:00", 15), ("Dinner", "19:30", 30)]),
    ("Night", dt.time(22), dt.time(6), [("Break", "01:00", 30), ("Break", "04:00", 15)]),
]

DOWNTIME_REASONS = [
    ("PLANNED", "Planned stop", None, True),
    ("PLANNED.CHANGEOVER", "Changeover", "PLANNED", True),
    ("PLANNED.MAINTENANCE", "Preventive maintenance", "PLANNED", True),
    ("MECH", "Mechanical", None, False),
    ("MECH.CONVEYOR", "Conveyor jam", "MECH", False),
    ("MECH.TOOLING", "Tool failure", "MECH", False),
    ("ELEC", "Electrical", None, False),
    ("ELEC.PLC", "PLC fault", "ELEC", False),
    ("MATERIAL", "Material", None, False),
    ("MATERIAL.SHORTAGE", "Part shortage", "MATERIAL", False),
    ("QUALITY", "Quality hold", None, False),
]
DEFECTS = [
    ("steering", "Steering pull / rack misassembly"),
    ("torque_low", "Joint under-torqued"),
    ("torque_high", "Joint over-torqued"),
    ("leak", "Leak above limit"),
    ("alignment", "Alignment out of tolerance"),
    ("flash_fail", "ECU software not verified"),
    ("cosmetic", "Paint or trim damage"),
]
SCRAP_REASONS = [("DAMAGED", "Damaged part"), ("NOK_TEST", "Failed test, not reworkable")]

DEMO_USERS = [
    ("admin", roles.ADMIN, "Plant administrator"),
    ("supervisor", roles.SUPERVISOR, "Line supervisor"),
    ("operator", roles.OPERATOR, "Station operator"),
    ("quality", roles.QUALITY_ENGINEER, "Quality engineer"),
    ("mlengineer", roles.ML_ENGINEER, "ML engineer"),
    ("integrator", roles.INTEGRATOR, "Legacy MES integration (machine account)"),
]

UNITS_PER_WORK_ORDER = 12


def demo_vin(wmi: str, number: int) -> str:
    """A valid VIN: WMI, vehicle descriptor, the computed check digit, year M, plant N."""
    body = f"{wmi}BH41J0MN{number:06d}"
    return body[:8] + vin_check_digit(body) + body[9:]


@dataclass(frozen=True)
class DemoCredential:
    username: str
    password: str
    role: str
    description: str


@dataclass(frozen=True)
class SeedReport:
    created: dict[str, int]
    credentials: list[DemoCredential]
    untouched_users: list[str]


def _get_or_create(counter: dict[str, int], model, defaults=None, **lookup):
    instance, created = model.objects.get_or_create(defaults=defaults or {}, **lookup)
    if created:
        counter[model.__name__] = counter.get(model.__name__, 0) + 1
    return instance


@transaction.atomic
def seed_demo_plant(*, today: dt.date | None = None, progress=None) -> dict[str, int]:
    """Equipment, products, routes, reference codes, shifts and work orders with units."""
    say = progress or (lambda message: None)
    counter: dict[str, int] = {}
    site = _get_or_create(
        counter,
        Site,
        code="DEMO",
        defaults={"name": "Demo Assembly Plant", "timezone": "Europe/Berlin"},
    )
    area = _get_or_create(counter, Area, site=site, code="FA", defaults={"name": "Final assembly"})
    zone = zoneinfo.ZoneInfo(site.timezone)
    today = today or timezone.now().astimezone(zone).date()

    for code, name, parent, planned in DOWNTIME_REASONS:
        _get_or_create(
            counter,
            DowntimeReason,
            code=code,
            defaults={
                "name": name,
                "planned": planned,
                "parent": DowntimeReason.objects.get(code=parent) if parent else None,
            },
        )
    for code, name in DEFECTS:
        _get_or_create(counter, DefectCode, code=code, defaults={"name": name})
    for code, name in SCRAP_REASONS:
        _get_or_create(counter, ScrapReason, code=code, defaults={"name": name})
    say("reference codes ready")

    for line_code, spec in LINES.items():
        line = _get_or_create(
            counter, Line, area=area, code=line_code, defaults={"name": spec["name"]}
        )
        product_code, product_name, line_cycle = spec["product"]
        product = _get_or_create(
            counter, Product, code=product_code, defaults={"name": product_name}
        )
        route = _get_or_create(
            counter, Route, product=product, line=line, defaults={"ideal_cycle_time_s": line_cycle}
        )
        for position, (code, name, kind, cycle, signals) in enumerate(spec["stations"], 1):
            station = _get_or_create(
                counter,
                Station,
                code=code,
                defaults={"line": line, "name": name, "position": position, "station_type": kind},
            )
            for signal, unit, low, high in signals:
                _get_or_create(
                    counter,
                    StationSignal,
                    station=station,
                    name=signal,
                    defaults={"unit": unit, "nominal_min": low, "nominal_max": high},
                )
            # What the simulated PLC publishes besides them (motor current, temperatures, …),
            # declared so every published signal has a unit and a range; a station's own
            # declaration of the same name wins.
            for auxiliary in AUXILIARY_SIGNALS.get(station.station_type, ()):
                _get_or_create(
                    counter,
                    StationSignal,
                    station=station,
                    name=auxiliary.name,
                    defaults={
                        "unit": auxiliary.unit,
                        "nominal_min": auxiliary.low,
                        "nominal_max": auxiliary.high,
                    },
                )
            _get_or_create(
                counter,
                RouteOperation,
                route=route,
                sequence=position * 10,
                defaults={"station": station, "name": name, "ideal_cycle_time_s": cycle},
            )
        say(f"line {line_code}: {len(spec['stations'])} stations, route for {product_code}")

        pattern = _get_or_create(counter, ShiftPattern, line=line, name="Three shifts")
        for name, starts, ends, breaks in SHIFTS:
            _get_or_create(
                counter,
                ShiftTemplate,
                pattern=pattern,
                name=name,
                defaults={
                    "starts": starts,
                    "ends": ends,
                    "weekdays": "12345",
                    "breaks": [{"name": b, "starts": s, "minutes": m} for b, s, m in breaks],
                },
            )
        shifts = shifts_generate(
            pattern=pattern,
            first_day=today - dt.timedelta(days=7),
            last_day=today + dt.timedelta(days=14),
        )
        if shifts:
            counter["Shift"] = counter.get("Shift", 0) + len(shifts)
        say(f"line {line_code}: shift calendar until {today + dt.timedelta(days=14)}")

        for index, target in enumerate((WorkOrderStatus.IN_PROGRESS, WorkOrderStatus.RELEASED)):
            external_id = f"WO-{today:%Y%m%d}-{line_code}-{index + 1}"
            work_order = WorkOrder.objects.filter(external_id=external_id).first()
            if work_order is None:
                work_order = WorkOrder.objects.create(
                    external_id=external_id,
                    product=product,
                    line=line,
                    quantity=UNITS_PER_WORK_ORDER,
                    due_at=timezone.now() + dt.timedelta(days=1 + index),
                )
                counter["WorkOrder"] = counter.get("WorkOrder", 0) + 1
                work_order_release(work_order=work_order)
                if target == WorkOrderStatus.IN_PROGRESS:
                    work_order_start(work_order=work_order)
            for number in range(UNITS_PER_WORK_ORDER):
                sequence = (int(line_code[1:]) * 100 + index) * 100 + number
                _get_or_create(
                    counter,
                    Unit,
                    serial=f"{product_code}-{sequence:06d}",
                    defaults={
                        "work_order": work_order,
                        "vin": demo_vin(spec["wmi"], sequence) if spec["wmi"] else None,
                    },
                )
        say(f"line {line_code}: work orders and {2 * UNITS_PER_WORK_ORDER} units")
    return counter


def seed_demo_users(*, credentials_file: Path) -> tuple[list[DemoCredential], list[str]]:
    """One user per role with a password generated once; returns (credentials, untouched)."""
    stored = {}
    if credentials_file.exists():
        stored = {entry["username"]: entry for entry in json.loads(credentials_file.read_text())}
    User = get_user_model()
    credentials, untouched = [], []
    with transaction.atomic():
        for username, role, description in DEMO_USERS:
            if username not in stored and User.objects.filter(username=username).exists():
                untouched.append(username)
                continue
            password = stored[username]["password"] if username in stored else None
            password = password or secrets.token_urlsafe(12)
            user, _ = User.objects.get_or_create(username=username)
            user.first_name = description
            user.is_staff = user.is_superuser = role == roles.ADMIN
            if not user.check_password(password):
                user.set_password(password)
            user.save()
            user.groups.set([Group.objects.get(name=role)])
            credentials.append(DemoCredential(username, password, role, description))
    credentials_file.parent.mkdir(parents=True, exist_ok=True)
    write_private(credentials_file, json.dumps([asdict(c) for c in credentials], indent=2))
    return credentials, untouched


def seed_demo(*, credentials_file: Path, users: bool = True, progress=None) -> SeedReport:
    created = seed_demo_plant(progress=progress)
    credentials, untouched = ([], [])
    if users:
        credentials, untouched = seed_demo_users(credentials_file=credentials_file)
    return SeedReport(created=created, credentials=credentials, untouched_users=untouched)
