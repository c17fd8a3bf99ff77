"""Writes of the MES."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from mes.models import Area, Line, Site, Station

DEMO_STATIONS = [
    ("1", "Body marriage", "marriage"),
    ("2", "Front module install", "assembly"),
    ("3", "Steering rack install", "assembly"),
    ("4", "ECU flash", "flash"),
    ("5", "Wheel nut runner", "torque"),
    ("6", "End-of-line test", "test"),
]


@dataclass(frozen=True)
class DemoPlant:
    site: Site
    line: Line
    stations: list[Station]
    created: int


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
