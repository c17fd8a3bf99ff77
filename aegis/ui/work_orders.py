"""Work orders: a filtered list with each order's progress, and one order's units with where
each is and a link to its trace. Every list costs the same few queries whatever its length
(counts and each unit's last visit are annotations, not queries per row)."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from aegis.ui.navigation import page
from mes.models import Line, Product, StationVisit, Unit, UnitStatus, WorkOrder, WorkOrderStatus

PAGE_SIZE = 50


def work_orders_with_progress() -> QuerySet[WorkOrder]:
    """Work orders with their product and line and the count of their units by status."""
    return WorkOrder.objects.select_related("product", "line").annotate(
        units_total=Count("units"),
        units_done=Count("units", filter=Q(units__status=UnitStatus.COMPLETED)),
        units_in_progress=Count("units", filter=Q(units__status=UnitStatus.IN_PROGRESS)),
        units_scrapped=Count("units", filter=Q(units__status=UnitStatus.SCRAPPED)),
    )


def filtered(queryset: QuerySet[WorkOrder], params) -> tuple[QuerySet[WorkOrder], dict]:
    """Filters from the URL: status, line (id), product (code) and a search in the number.
    Values that match nothing known are ignored and reported."""
    chosen = {
        "status": params.get("status", ""),
        "line": params.get("line", ""),
        "product": params.get("product", ""),
        "q": params.get("q", "").strip().replace("\x00", "")[:64],
    }
    if chosen["status"] in WorkOrderStatus.values:
        queryset = queryset.filter(status=chosen["status"])
    elif chosen["status"] == "open":
        queryset = queryset.exclude(
            status__in=[WorkOrderStatus.COMPLETED, WorkOrderStatus.CANCELLED]
        )
    else:
        chosen["status"] = ""
    if chosen["line"].isdigit() and len(chosen["line"]) < 10:
        queryset = queryset.filter(line_id=int(chosen["line"]))
    else:
        chosen["line"] = ""
    if chosen["product"]:
        queryset = queryset.filter(product__code=chosen["product"].replace("\x00", ""))
    if chosen["q"]:
        queryset = queryset.filter(external_id__icontains=chosen["q"])
    return queryset, chosen


def progress(work_order: WorkOrder) -> dict:
    """Units done against the quantity planned, for the progress bar."""
    planned = work_order.quantity
    done = work_order.units_done
    return {
        "done": done,
        "planned": planned,
        "percent": min(100, round(100 * done / planned)) if planned else 0,
        "in_progress": work_order.units_in_progress,
        "scrapped": work_order.units_scrapped,
        "created": work_order.units_total,
    }


@page("mes.view_workorder")
def work_order_list_page(request: HttpRequest) -> HttpResponse:
    queryset, chosen = filtered(work_orders_with_progress(), request.GET)
    pages = Paginator(queryset.order_by("-created_at", "-id"), PAGE_SIZE)
    listed = pages.get_page(request.GET.get("page"))
    for work_order in listed:
        work_order.progress = progress(work_order)
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "ui/work_orders.html",
        {
            "page_obj": listed,
            "chosen": chosen,
            "statuses": [("open", "open (not completed or cancelled)"), *WorkOrderStatus.choices],
            "lines": Line.objects.order_by("code"),
            "products": Product.objects.order_by("code"),
            "query": query.urlencode(),
        },
    )


def units_with_whereabouts(work_order: WorkOrder) -> QuerySet[Unit]:
    """The order's units, each with its latest visit's station and times and its counts of
    alerts and quality events."""
    latest = StationVisit.objects.filter(unit=OuterRef("pk")).order_by("-arrived_at")
    return (
        Unit.objects.filter(work_order=work_order)
        .annotate(
            last_station=Subquery(latest.values("station__code")[:1]),
            last_station_name=Subquery(latest.values("station__name")[:1]),
            last_arrived_at=Subquery(latest.values("arrived_at")[:1]),
            last_left_at=Subquery(latest.values("left_at")[:1]),
            alert_count=Count("defect_alerts", distinct=True),
            quality_count=Count("quality_events", distinct=True),
        )
        .order_by("serial")
    )


@page("mes.view_workorder")
def work_order_page(request: HttpRequest, number: str) -> HttpResponse:
    work_order = (
        work_orders_with_progress()
        .select_related("line__area__site")
        .filter(external_id=number.replace("\x00", ""))
        .first()
    )
    if work_order is None:
        raise Http404(f"no work order {number}")
    work_order.progress = progress(work_order)
    units = (
        list(units_with_whereabouts(work_order)) if request.user.has_perm("mes.view_unit") else []
    )
    return render(
        request,
        "ui/work_orders_detail.html",
        {"work_order": work_order, "units": units, "zone": work_order.line.area.site.timezone},
    )
