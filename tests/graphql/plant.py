"""Small plants for the GraphQL tests, written straight into the tables (the services are tested
elsewhere; these tests are about reading)."""

from __future__ import annotations

import datetime as dt

from foresight.models import AlertSource, DefectAlert, ModelStatus, ModelVersion
from mes.models import FirmwareFlash, QualityEvent, StationSignal, StationVisit, UnitStatus
from tests.factories import (
    DefectCodeFactory,
    LineFactory,
    StationFactory,
    UnitFactory,
    WorkOrderFactory,
)

T0 = dt.datetime(2026, 3, 3, 6, 0, tzinfo=dt.UTC)


def line_with_stations(count: int = 2):
    line = LineFactory()
    stations = [StationFactory(line=line, position=n + 1) for n in range(count)]
    for station in stations:
        StationSignal.objects.create(station=station, name="torque", unit="N·m")
        StationSignal.objects.create(station=station, name="angle", unit="deg")
    return line, stations


def work_orders_with_units(
    count: int, *, units: int = 2, stations=None, start: dt.datetime = T0
) -> list:
    """`count` work orders on the stations' line, each with `units` units that visited every
    station, were flashed with EPS v2.1.4 and had one quality event."""
    if stations is None:
        _, stations = line_with_stations()
    steering = DefectCodeFactory(code="steering")
    orders = []
    at = start
    for _ in range(count):
        order = WorkOrderFactory(line=stations[0].line, quantity=units + 1)
        for number in range(units):
            unit = UnitFactory(
                work_order=order,
                status=UnitStatus.COMPLETED if number == 0 else UnitStatus.IN_PROGRESS,
            )
            for station in stations:
                StationVisit.objects.create(
                    unit=unit,
                    station=station,
                    arrived_at=at,
                    left_at=at + dt.timedelta(seconds=50),
                )
                at += dt.timedelta(minutes=1)
            FirmwareFlash.objects.create(
                unit=unit, station=stations[0], component="EPS", version="v2.1.4", flashed_at=at
            )
            QualityEvent.objects.create(
                unit=unit,
                defect=steering,
                station=stations[-1],
                found_at=at,
                severity="major",
                source="inspection",
            )
        orders.append(order)
    return orders


def model_version(station, *, version: str, status: str = ModelStatus.CANDIDATE, **fields):
    at = fields.pop("at", T0)
    return ModelVersion.objects.create(
        version=version,
        station=station,
        kind="pca_t2q",
        feature_spec={"window": 20},
        feature_names=["torque_mean", "torque_std"],
        threshold=fields.pop("threshold", 3.5),
        training_start=at - dt.timedelta(hours=2),
        training_end=at - dt.timedelta(hours=1),
        metrics=fields.pop("metrics", {"recall": 0.95}),
        artifact_path=f"{version}.onnx",
        sha256="0" * 64,
        status=status,
        promoted_at=at if status in (ModelStatus.SHADOW, ModelStatus.PRODUCTION) else None,
        archived_at=at if status == ModelStatus.ARCHIVED else None,
        **fields,
    )


def alert(station, *, ts: dt.datetime, unit=None, model=None, **fields) -> DefectAlert:
    return DefectAlert.objects.create(
        station=station,
        ts=ts,
        unit=unit,
        vin=(unit.vin or "") if unit else "",
        work_order=unit.work_order if unit else None,
        firmware={"EPS": "v2.1.4"},
        score=fields.pop("score", 7.5),
        threshold=fields.pop("threshold", 3.5),
        model_version=model,
        source=AlertSource.MODEL if model else AlertSource.BASELINE,
        triggering={"torque": 52.5, "angle": 31.0},
        explanation=[{"feature": "torque_mean", "signal": "torque", "value": 52.5, "z": 6.1}],
        **fields,
    )
