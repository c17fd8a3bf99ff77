"""Reads of the MES.

List selectors return querysets that already join or prefetch what their API representation
shows, so a page costs the same number of queries whatever its length. `*_by_*` selectors
resolve the references a request names and raise UnknownReference (422) when there is none.
"""

from __future__ import annotations

import datetime as dt

from django.contrib.auth import get_user_model
from django.db.models import Model, Prefetch, Q, QuerySet

from mes.errors import UnknownReference
from mes.models import (
    ApiToken,
    Area,
    AuditEntry,
    DefectCode,
    DowntimeEvent,
    DowntimeReason,
    FirmwareFlash,
    Line,
    Product,
    ProductionCount,
    QualityEvent,
    Route,
    RouteOperation,
    ScrapReason,
    Shift,
    Site,
    Station,
    StationVisit,
    Unit,
    WorkOrder,
)


def plant_overview() -> list[Site]:
    """Sites with their areas, lines and stations in plant order, in four queries."""
    return list(
        Site.objects.prefetch_related(
            "areas",
            Prefetch("areas__lines", queryset=Line.objects.order_by("code")),
            Prefetch("areas__lines__stations", queryset=Station.objects.order_by("position")),
        )
    )


# -- lists ----------------------------------------------------------------------------------


def site_list() -> QuerySet[Site]:
    return Site.objects.all()


def area_list() -> QuerySet[Area]:
    return Area.objects.select_related("site")


def line_list() -> QuerySet[Line]:
    return Line.objects.select_related("area__site")


def station_list() -> QuerySet[Station]:
    return Station.objects.prefetch_related("signals")


def product_list() -> QuerySet[Product]:
    return Product.objects.all()


def route_list() -> QuerySet[Route]:
    return Route.objects.select_related("product").prefetch_related(
        Prefetch("operations", queryset=RouteOperation.objects.select_related("station"))
    )


def work_order_list() -> QuerySet[WorkOrder]:
    return WorkOrder.objects.select_related("product")


def unit_list() -> QuerySet[Unit]:
    return Unit.objects.select_related("work_order")


def station_visit_list() -> QuerySet[StationVisit]:
    return StationVisit.objects.select_related("unit", "station")


def firmware_flash_list() -> QuerySet[FirmwareFlash]:
    return FirmwareFlash.objects.select_related("unit", "station")


def shift_list() -> QuerySet[Shift]:
    return Shift.objects.prefetch_related("breaks")


def downtime_reason_list() -> QuerySet[DowntimeReason]:
    return DowntimeReason.objects.select_related("parent")


def downtime_event_list() -> QuerySet[DowntimeEvent]:
    return DowntimeEvent.objects.select_related("station", "reason", "reported_by")


def scrap_reason_list() -> QuerySet[ScrapReason]:
    return ScrapReason.objects.all()


def production_count_list() -> QuerySet[ProductionCount]:
    return ProductionCount.objects.select_related("station", "work_order", "scrap_reason")


def defect_code_list() -> QuerySet[DefectCode]:
    return DefectCode.objects.all()


def quality_event_list() -> QuerySet[QualityEvent]:
    return QualityEvent.objects.select_related("unit", "defect", "station", "detected_by")


def audit_entry_list() -> QuerySet[AuditEntry]:
    return AuditEntry.objects.all()


def user_list() -> QuerySet:
    return get_user_model().objects.order_by("username").prefetch_related("groups")


def api_token_list(*, user) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user)


def visits_covering(visits: QuerySet[StationVisit], at: dt.datetime) -> QuerySet[StationVisit]:
    """The visits in progress at the instant `at`: arrived at or before it, not yet left."""
    return visits.filter(Q(left_at__isnull=True) | Q(left_at__gt=at), arrived_at__lte=at)


def shifts_covering(shifts: QuerySet[Shift], at: dt.datetime) -> QuerySet[Shift]:
    return shifts.filter(starts_at__lte=at, ends_at__gt=at)


# -- references named in requests -------------------------------------------------------------


def _one(queryset: QuerySet, field: str, what: str, **lookup) -> Model:
    instance = queryset.filter(**lookup).first()
    if instance is None:
        value = next(iter(lookup.values()))
        raise UnknownReference(f"no {what} {value!r}", fields={field: [f"unknown {what}"]})
    return instance


def station_by_code(code: str, *, field: str = "station") -> Station:
    return _one(Station.objects.all(), field, "station", code=code)


def line_by_id(line_id: int, *, field: str = "line") -> Line:
    return _one(Line.objects.all(), field, "line", pk=line_id)


def product_by_code(code: str, *, field: str = "product") -> Product:
    return _one(Product.objects.all(), field, "product", code=code)


def work_order_by_external_id(external_id: str, *, field: str = "work_order") -> WorkOrder:
    return _one(
        WorkOrder.objects.select_related("product"), field, "work order", external_id=external_id
    )


def unit_by_serial(serial: str, *, field: str = "unit") -> Unit:
    return _one(Unit.objects.select_related("work_order__product"), field, "unit", serial=serial)


def unit_by_vin(vin: str, *, field: str = "vin") -> Unit:
    return _one(Unit.objects.select_related("work_order__product"), field, "VIN", vin=vin)


def downtime_reason_by_code(code: str, *, field: str = "reason") -> DowntimeReason:
    return _one(DowntimeReason.objects.all(), field, "downtime reason", code=code)


def scrap_reason_by_code(code: str, *, field: str = "scrap_reason") -> ScrapReason:
    return _one(ScrapReason.objects.all(), field, "scrap reason", code=code)


def defect_code_by_code(code: str, *, field: str = "defect") -> DefectCode:
    return _one(DefectCode.objects.all(), field, "defect code", code=code)
