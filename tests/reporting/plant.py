"""A small traced plant for the reporting views: one vehicle with a known life, worked out by
hand, so every driver's answer can be compared with the same facts.

Line R1 has two stations, RA (torque) and RB (ECU flash). Vehicle VIN (unit SN-TRACE-1) of work
order WO-TRACE-1:

    T0+0s    arrives at RA              T0+90s   arrives at RB
    T0+10s   RA sample torque 43.21     T0+120s  EPS flashed 4.2.1 at RB
    T0+20s   RA sample torque 47.9      T0+130s  RB sample supply_voltage 13.2
             → model alert, score 7.5      → baseline alert, score 3.25 (left open)
               (acknowledged, resolved   T0+150s  quality event: steering, major, inspection
                as a true defect)        T0+200s  leaves RB
    T0+60s   leaves RA
    T0+75s   RA sample with nobody there (no VIN)

A second unit (SN-TRACE-2, no VIN) exists and has done nothing yet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from foresight import registry
from foresight.models import AlertFeedback, ModelVersion
from mes import services
from mes.demo import demo_vin
from mes.models import DetectionSource, Severity, StationSignal, StationType
from telemetry.models import Sample
from tests.factories import (
    DefectCodeFactory,
    LineFactory,
    ProductFactory,
    RouteFactory,
    StationFactory,
    UserFactory,
)

T0 = dt.datetime(2025, 3, 10, 9, 0, tzinfo=dt.UTC)
VIN = demo_vin("1HG", 4242)
SERIAL = "SN-TRACE-1"
IDLE_SERIAL = "SN-TRACE-2"
WORK_ORDER = "WO-TRACE-1"
MODEL_VERSION = "pca_t2q-RA-trace"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@dataclass(frozen=True)
class TracedPlant:
    line: str
    station_a: str
    station_b: str
    product: str
    quality_inspector: str
    alert_resolver: str


def build_traced_plant() -> TracedPlant:
    line = LineFactory(code="R1")
    station_a = StationFactory(line=line, code="RA", name="Steering rack torque", position=1)
    station_b = StationFactory(
        line=line, code="RB", name="ECU flash", position=2, station_type=StationType.FLASHING
    )
    StationSignal.objects.create(
        station=station_a, name="torque", unit="N·m", nominal_min=40.0, nominal_max=48.0
    )
    product = ProductFactory(code="SEDAN-R")
    RouteFactory(product=product, line=line, ideal_cycle_time_s=Decimal("58"))
    work_order = services.work_order_create(
        external_id=WORK_ORDER, product=product, line=line, quantity=2
    )
    services.work_order_release(work_order=work_order, at=at(-600))
    services.work_order_start(work_order=work_order, at=at(-300))
    vehicle = services.unit_create(work_order=work_order, serial=SERIAL, vin=VIN)
    services.unit_create(work_order=work_order, serial=IDLE_SERIAL)

    services.unit_arrive(unit=vehicle, station=station_a, at=at(0))
    services.unit_leave(unit=vehicle, station=station_a, at=at(60))
    services.unit_arrive(unit=vehicle, station=station_b, at=at(90))
    services.firmware_flash(
        unit=vehicle, component="EPS", version="4.2.1", at=at(120), station=station_b
    )
    inspector = UserFactory(username="inspector.ines")
    services.quality_event_record(
        unit=vehicle,
        defect=DefectCodeFactory(code="steering", name="Steering pull"),
        found_at=at(150),
        severity=Severity.MAJOR,
        source=DetectionSource.INSPECTION,
        station=station_b,
        user=inspector,
        description="pulls left at 80 km/h",
    )
    services.unit_leave(unit=vehicle, station=station_b, at=at(200))

    enrichment = {
        "unit_id": vehicle.pk,
        "vin": VIN,
        "serial": SERIAL,
        "work_order_id": work_order.pk,
        "product_id": product.pk,
    }
    Sample.objects.bulk_create(
        [
            Sample(
                station_id=station_a.pk,
                ts=at(10),
                seq=0,
                firmware={},
                signals={"torque": 43.21, "angle": 31.5},
                **enrichment,
            ),
            Sample(
                station_id=station_a.pk,
                ts=at(20),
                seq=0,
                firmware={},
                signals={"torque": 47.9, "angle": 33},
                **enrichment,
            ),
            Sample(station_id=station_a.pk, ts=at(75), seq=0, signals={"torque": 0.0}),
            Sample(
                station_id=station_b.pk,
                ts=at(130),
                seq=0,
                firmware={"EPS": "4.2.1"},
                signals={"supply_voltage": 13.2},
                **enrichment,
            ),
        ]
    )

    model = ModelVersion.objects.create(
        version=MODEL_VERSION,
        station=station_a,
        kind="pca_t2q",
        feature_spec={},
        threshold=5.0,
        training_start=at(-86400),
        training_end=at(-3600),
        artifact_path="00/trace.onnx",
        sha256="0" * 64,
    )
    resolver = UserFactory(username="supervisor.sam")
    alert = registry.raise_alert(
        station=station_a,
        ts=at(20),
        score=7.5,
        threshold=5.0,
        model_version=model,
        triggering={"torque": 47.9, "angle": 33},
        explanation=[
            {"feature": "torque_mean", "signal": "torque", "value": 47.9, "z": 4.1, "share": 0.8},
            {"feature": "angle_mean", "signal": "angle", "value": 33, "z": 1.2, "share": 0.2},
        ],
    )
    registry.acknowledge(alert=alert, user=resolver)
    registry.resolve(
        alert=alert, feedback=AlertFeedback.TRUE_DEFECT, note="rack bolt re-torqued", user=resolver
    )
    registry.raise_alert(
        station=station_b,
        ts=at(130),
        score=3.25,
        threshold=3.0,
        triggering={"supply_voltage": 13.2},
    )
    return TracedPlant(
        line=line.code,
        station_a=station_a.code,
        station_b=station_b.code,
        product=product.code,
        quality_inspector=inspector.username,
        alert_resolver=resolver.username,
    )
