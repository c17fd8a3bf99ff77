"""Writes of the MES."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from aegis.embedded.servers import write_private
from mes import roles
from mes.models import Area, Line, Site, Station

DEMO_STATIONS = [
    ("1", "Body marriage", "marriage"),
    ("2", "Front module install", "assembly"),
    ("3", "Steering rack install", "assembly"),
    ("4", "ECU flash", "flash"),
    ("5", "Wheel nut runner", "torque"),
    ("6", "End-of-line test", "test"),
]

DEMO_USERS = [
    ("admin", roles.ADMIN, "Plant administrator"),
    ("supervisor", roles.SUPERVISOR, "Line supervisor"),
    ("operator", roles.OPERATOR, "Station operator"),
    ("quality", roles.QUALITY_ENGINEER, "Quality engineer"),
    ("mlengineer", roles.ML_ENGINEER, "ML engineer"),
    ("integrator", roles.INTEGRATOR, "Legacy MES integration (machine account)"),
]


@dataclass(frozen=True)
class DemoPlant:
    site: Site
    line: Line
    stations: list[Station]
    created: int


@dataclass(frozen=True)
class DemoCredential:
    username: str
    password: str
    role: str
    description: str


@dataclass(frozen=True)
class DemoUsers:
    credentials: list[DemoCredential]
    untouched: list[str]  # existing accounts this command did not create and so left alone


@transaction.atomic
def demo_plant_create() -> DemoPlant:
    """The demo plant: one site, one final-assembly line with six stations (idempotent)."""
    created = 0
    site, new = Site.objects.get_or_create(
        code="DEMO", defaults={"name": "Demo Assembly Plant", "timezone": "Europe/Berlin"}
    )
    created += new
    area, new = Area.objects.get_or_create(
        site=site, code="FA", defaults={"name": "Final assembly"}
    )
    created += new
    line, new = Line.objects.get_or_create(area=area, code="L1", defaults={"name": "Line 1"})
    created += new
    stations = []
    for position, (code, name, station_type) in enumerate(DEMO_STATIONS, start=1):
        station, new = Station.objects.get_or_create(
            code=code,
            defaults={
                "line": line,
                "name": name,
                "position": position,
                "station_type": station_type,
            },
        )
        created += new
        stations.append(station)
    return DemoPlant(site=site, line=line, stations=stations, created=created)


def demo_users_create(*, credentials_file: Path) -> DemoUsers:
    """One demo user per role with a password generated once (idempotent).

    Only accounts this command created (listed in `credentials_file`) are ever changed: on a
    database that already has an `admin`, that account keeps its password and rights.
    """
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
    return DemoUsers(credentials=credentials, untouched=untouched)
