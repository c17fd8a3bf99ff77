"""The plant's objects as GraphQL types (strawberry-django), named as the plant names them.

Relations are resolved by strawberry-django's optimizer: a list of work orders with their units
and visits costs the same few queries whatever its length (tests/graphql/test_query_count.py).
Fields computed in Python name the columns they read (`only=`) so the optimizer loads them.
"""

from __future__ import annotations

import datetime as dt
import math

import strawberry
import strawberry_django
from django.db.models import Count, Q
from strawberry import auto
from strawberry.scalars import JSON

from foresight import models as foresight_models
from mes import models as mes_models

WorkOrderStatus = strawberry.enum(mes_models.WorkOrderStatus, name="WorkOrderStatus")
UnitStatus = strawberry.enum(mes_models.UnitStatus, name="UnitStatus")
AlertStatus = strawberry.enum(foresight_models.AlertStatus, name="AlertStatus")
AlertSource = strawberry.enum(foresight_models.AlertSource, name="AlertSource")
AlertFeedback = strawberry.enum(foresight_models.AlertFeedback, name="AlertFeedback")
ModelStatus = strawberry.enum(foresight_models.ModelStatus, name="ModelStatus")


def _finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@strawberry.type(description="One ECU or component and the software version it runs.")
class FirmwareVersion:
    component: str
    version: str


def firmware_versions(firmware: dict | None) -> list[FirmwareVersion]:
    return [
        FirmwareVersion(component=str(component), version=str(version))
        for component, version in sorted((firmware or {}).items())
    ]


@strawberry.type(description="A signal's value in one sample (null when it was not a number).")
class SignalValue:
    name: str
    value: float | None


def signal_values(signals: dict | None, names: list[str] | None = None) -> list[SignalValue]:
    wanted = sorted(signals or {}) if names is None else names
    return [SignalValue(name=name, value=_finite((signals or {}).get(name))) for name in wanted]


# -- equipment --------------------------------------------------------------------------------


@strawberry_django.type(mes_models.Site, name="Site", description="A plant site.")
class SiteType:
    id: auto
    code: auto
    name: auto
    timezone: str = strawberry_django.field(description="IANA zone of its shifts and calendars.")
    areas: list[AreaType]


@strawberry_django.type(mes_models.Area, name="Area", description="An area of a site.")
class AreaType:
    id: auto
    code: auto
    name: auto
    site: SiteType
    lines: list[LineType]


@strawberry_django.type(mes_models.Line, name="Line", description="A production line.")
class LineType:
    id: auto
    code: auto
    name: auto
    area: AreaType
    stations: list[StationType] = strawberry_django.field(description="In line order.")


@strawberry_django.type(
    mes_models.Station,
    name="Station",
    description="A work position on a line; its code is plant-wide (PLCs and NATS use it).",
)
class StationType:
    id: auto
    code: auto
    name: auto
    position: int = strawberry_django.field(description="Order along its line.")
    station_type: str = strawberry_django.field(
        description="tightening, flashing, alignment, leak_test, inspection, …"
    )
    line: LineType
    signals: list[StationSignalType] = strawberry_django.field(description="What its PLC measures.")


@strawberry_django.type(
    mes_models.StationSignal, name="StationSignal", description="A signal a station's PLC sends."
)
class StationSignalType:
    name: auto
    unit: str = strawberry_django.field(description="Engineering unit, e.g. N·m.")
    nominal_min: auto
    nominal_max: auto


# -- work orders and units --------------------------------------------------------------------


@strawberry_django.type(mes_models.Product, name="Product")
class ProductType:
    id: auto
    code: auto
    name: auto


@strawberry.type(description="How far a work order is: its units by status.")
class WorkOrderProgress:
    quantity: int
    planned: int
    in_progress: int
    completed: int
    scrapped: int

    @strawberry.field(description="Completed units / quantity (0 to 1).")
    def completed_share(self) -> float:
        return self.completed / self.quantity if self.quantity else 0.0


_UNITS_BY_STATUS = {
    f"_units_{status}": Count("units", filter=Q(units__status=status))
    for status in mes_models.UnitStatus.values
}


@strawberry_django.type(mes_models.WorkOrder, name="WorkOrder")
class WorkOrderType:
    id: auto
    external_id: str = strawberry_django.field(description="The ERP's or legacy MES's number.")
    product: ProductType
    line: LineType
    quantity: auto
    status: WorkOrderStatus
    due_at: auto
    released_at: auto
    started_at: auto
    completed_at: auto
    cancelled_at: auto
    cancel_reason: auto
    created_at: auto
    units: list[UnitType] = strawberry_django.field(description="By serial.")

    @strawberry_django.field(
        only=["quantity"], annotate=_UNITS_BY_STATUS, description="Its units counted by status."
    )
    def progress(self, root: mes_models.WorkOrder) -> WorkOrderProgress:
        counts = {status: getattr(root, f"_units_{status}", None) for status in _statuses()}
        if None in counts.values():  # not annotated (e.g. a work order of a single alert)
            counts = dict.fromkeys(_statuses(), 0)
            for status in root.units.values_list("status", flat=True):
                counts[status] += 1
        return WorkOrderProgress(
            quantity=root.quantity,
            planned=counts["planned"],
            in_progress=counts["in_progress"],
            completed=counts["completed"],
            scrapped=counts["scrapped"],
        )


def _statuses() -> list[str]:
    return list(mes_models.UnitStatus.values)


@strawberry_django.type(
    mes_models.Unit, name="Unit", description="One unit built for a work order: serial and VIN."
)
class UnitType:
    id: auto
    serial: auto
    vin: str | None = strawberry_django.field(description="Vehicles only.")
    status: UnitStatus
    created_at: auto
    work_order: WorkOrderType
    visits: list[StationVisitType] = strawberry_django.field(description="Oldest first.")
    firmware_flashes: list[FirmwareFlashType] = strawberry_django.field(description="Oldest first.")
    quality_events: list[QualityEventType] = strawberry_django.field(
        description="Defects found on it, newest first."
    )
    defect_alerts: list[DefectAlertType] = strawberry_django.field(
        description="Foresight alerts raised while it was at a station, newest first."
    )

    @strawberry_django.field(
        prefetch_related=["firmware_flashes"],
        description="The version of each component flashed last (what it left the line with).",
    )
    def firmware(self, root: mes_models.Unit) -> list[FirmwareVersion]:
        latest: dict[str, tuple[dt.datetime, str]] = {}
        for flash in root.firmware_flashes.all():
            known = latest.get(flash.component)
            if known is None or flash.flashed_at >= known[0]:
                latest[flash.component] = (flash.flashed_at, flash.version)
        return firmware_versions({c: version for c, (_, version) in latest.items()})


@strawberry_django.type(
    mes_models.StationVisit, name="StationVisit", description="A unit at a station."
)
class StationVisitType:
    id: auto
    station: StationType
    unit: UnitType
    arrived_at: auto
    left_at: dt.datetime | None = strawberry_django.field(description="Null while it is there.")


@strawberry_django.type(mes_models.FirmwareFlash, name="FirmwareFlash")
class FirmwareFlashType:
    id: auto
    unit: UnitType
    station: StationType | None
    component: str = strawberry_django.field(description="ECU or component, e.g. EPS, BCM.")
    version: auto
    flashed_at: auto


@strawberry_django.type(mes_models.DefectCode, name="DefectCode")
class DefectCodeType:
    code: auto
    name: auto


@strawberry_django.type(
    mes_models.QualityEvent, name="QualityEvent", description="A defect found on a unit."
)
class QualityEventType:
    id: auto
    unit: UnitType
    defect: DefectCodeType
    station: StationType | None
    found_at: auto
    severity: str = strawberry_django.field(description="minor, major or critical.")
    source: str = strawberry_django.field(
        description="operator, inspection, test_rig, foresight, customer or legacy_mes."
    )
    description: auto


# -- Foresight --------------------------------------------------------------------------------


@strawberry_django.type(
    foresight_models.ModelVersion,
    name="ModelVersion",
    description="A trained Foresight detector of one station and where it is in its lifecycle.",
)
class ModelVersionType:
    id: auto
    version: auto
    station: StationType
    kind: str = strawberry_django.field(description="pca_t2q, isolation_forest, …")
    status: ModelStatus
    threshold: float = strawberry_django.field(description="Scores at or above it alert.")
    training_start: auto
    training_end: auto
    feature_names: list[str]
    metrics: JSON = strawberry_django.field(description="Training and backtest metrics.")
    sha256: str = strawberry_django.field(description="Of the ONNX artifact.")
    notes: auto
    created_at: auto
    promoted_at: auto
    archived_at: auto
    previous_production: ModelVersionType | None = strawberry_django.field(
        description="The production model it replaced: what a rollback brings back."
    )


@strawberry.type(description="What drove a score: one feature's part.")
class ExplanationRow:
    feature: str
    signal: str | None
    value: float | None
    z: float | None
    share: float | None = strawberry.field(description="Share of the total squared z.")


@strawberry_django.type(
    foresight_models.DefectAlert,
    name="DefectAlert",
    description="A predicted defect: a score crossed its threshold, or an SPC rule fired.",
)
class DefectAlertType:
    id: auto
    station: StationType
    ts: dt.datetime = strawberry_django.field(description="Instant of the triggering sample.")
    seq: auto
    unit: UnitType | None
    vin: auto
    work_order: WorkOrderType | None
    score: float
    threshold: float
    model_version: ModelVersionType | None = strawberry_django.field(
        description="Null when the statistical baseline or an SPC rule raised it."
    )
    source: AlertSource
    rule: str | None = strawberry_django.field(description="SPC: nelson_1 … nelson_8.")
    chart: str | None = strawberry_django.field(description="SPC: xbar, r, i or mr.")
    signal: str | None = strawberry_django.field(description="SPC: the charted signal.")
    status: AlertStatus
    note: auto
    acknowledged_at: auto
    resolved_at: auto
    created_at: dt.datetime = strawberry_django.field(description="When it was raised.")

    @strawberry_django.field(only=["feedback"], description="Given when it was resolved.")
    def feedback(self, root: foresight_models.DefectAlert) -> AlertFeedback | None:
        return foresight_models.AlertFeedback(root.feedback) if root.feedback else None

    @strawberry_django.field(only=["firmware"], description="Of the unit at ts.")
    def firmware(self, root: foresight_models.DefectAlert) -> list[FirmwareVersion]:
        return firmware_versions(root.firmware)

    @strawberry_django.field(only=["triggering"], description="The triggering sample's values.")
    def triggering(self, root: foresight_models.DefectAlert) -> list[SignalValue]:
        return signal_values(root.triggering)

    @strawberry_django.field(only=["triggering"], description="Torque of the triggering sample.")
    def trigger_torque_nm(self, root: foresight_models.DefectAlert) -> float | None:
        return _finite((root.triggering or {}).get("torque"))

    @strawberry_django.field(only=["explanation"])
    def explanation(self, root: foresight_models.DefectAlert) -> list[ExplanationRow]:
        return [
            ExplanationRow(
                feature=str(row.get("feature", "")),
                signal=row.get("signal"),
                value=_finite(row.get("value")),
                z=_finite(row.get("z")),
                share=_finite(row.get("share")),
            )
            for row in root.explanation or []
            if isinstance(row, dict)
        ]

    @strawberry_django.field(select_related=["acknowledged_by"], only=["acknowledged_by__username"])
    def acknowledged_by(self, root: foresight_models.DefectAlert) -> str | None:
        return root.acknowledged_by.get_username() if root.acknowledged_by else None

    @strawberry_django.field(select_related=["resolved_by"], only=["resolved_by__username"])
    def resolved_by(self, root: foresight_models.DefectAlert) -> str | None:
        return root.resolved_by.get_username() if root.resolved_by else None
