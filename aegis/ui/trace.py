"""The VIN trace: what was happening to one unit at one instant, and did Foresight see it
coming. `/trace/?vin=<VIN or serial>&at=<ISO instant>&window=<seconds>` is deep-linkable:
alerts, visits and work orders link here.

The page is a timeline of the unit's life across its stations (visits as bands; firmware
flashes, quality events, alerts and the work order's steps as markers; the instant as a
cursor) and, for the station it was at then, the telemetry and scores around the instant as
charts (static/aegis/trace.js) and as the table `#trace-telemetry`.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from aegis.ui.navigation import page
from aegis.ui.station import iso_ms, local_input, parse_instant, score_columns, series_columns
from foresight.models import DefectAlert
from mes.errors import UnknownReference
from telemetry import selectors as telemetry

CHART_POINTS = 1200


@dataclass
class Mark:
    """A band or marker of the timeline, placed in percent of its width."""

    kind: str  # visit, flash, quality, alert, work_order
    at: dt.datetime
    until: dt.datetime | None
    left: float
    width: float
    label: str
    link_at: dt.datetime
    outside: bool = False  # beyond the timeline's span: drawn at its edge


@dataclass
class TimelineRow:
    label: str
    station_code: str
    marks: list[Mark]


@dataclass
class Timeline:
    start: dt.datetime
    end: dt.datetime
    rows: list[TimelineRow]
    cursor: float | None  # the instant, in percent; None when outside the span
    ticks: list[tuple[float, dt.datetime]]


def default_instant(unit, now: dt.datetime) -> dt.datetime:
    """Without `at`: the unit's latest alert, else its latest arrival, else now."""
    alert = (
        DefectAlert.objects.filter(unit=unit).order_by("-ts").values_list("ts", flat=True)
    ).first()
    if alert is not None:
        return alert
    arrival = unit.visits.order_by("-arrived_at").values_list("arrived_at", flat=True)
    return arrival.first() or now


def build_timeline(trace: telemetry.VinTrace, now: dt.datetime) -> Timeline:
    """Rows per station in the order the unit reached them, with the work order on top."""
    work_order = trace.unit.work_order
    steps = [
        (name, stamp)
        for name, stamp in (
            ("released", work_order.released_at),
            ("started", work_order.started_at),
            ("completed", work_order.completed_at),
            ("cancelled", work_order.cancelled_at),
        )
        if stamp is not None
    ]
    instants = [trace.at]
    for visit in trace.visits:
        instants += [visit.arrived_at, visit.left_at or now]
    instants += [flash.flashed_at for flash in trace.flashes]
    instants += [alert.ts for alert in trace.alerts]
    life = [v for v in instants if v is not None]
    # Quality events found long after (a customer complaint) would squash the bands: they are
    # drawn at the edge unless within a day of what else the timeline spans.
    first, last = min(life), max(life)
    for event in trace.quality_events:
        if first - dt.timedelta(days=1) <= event.found_at <= last + dt.timedelta(days=1):
            first, last = min(first, event.found_at), max(last, event.found_at)
    pad = max((last - first) * 0.03, dt.timedelta(seconds=5))
    start, end = first - pad, last + pad
    total = (end - start).total_seconds()

    def place(at: dt.datetime) -> tuple[float, bool]:
        offset = (at - start).total_seconds() / total * 100
        return min(100.0, max(0.0, offset)), not 0 <= offset <= 100

    def mark(kind, at, label, until=None, link_at=None) -> Mark:
        left, outside = place(at)
        width = 0.0
        if until is not None:
            width = max(0.4, place(until)[0] - left)
        return Mark(kind, at, until, round(left, 3), round(width, 3), label, link_at or at, outside)

    rows: dict[str, TimelineRow] = {}
    for visit in trace.visits:
        code = visit.station.code
        row = rows.setdefault(code, TimelineRow(f"{code} {visit.station.name}", code, []))
        row.marks.append(mark("visit", visit.arrived_at, f"at {code}", until=visit.left_at or now))
    elsewhere = TimelineRow("No station", "", [])

    def row_for(station) -> TimelineRow:
        if station is None:
            return elsewhere
        return rows.setdefault(
            station.code, TimelineRow(f"{station.code} {station.name}", station.code, [])
        )

    for flash in trace.flashes:
        row_for(flash.station).marks.append(
            mark("flash", flash.flashed_at, f"{flash.component} {flash.version} flashed")
        )
    for event in trace.quality_events:
        row_for(event.station).marks.append(
            mark("quality", event.found_at, f"{event.defect.code} ({event.severity}) found")
        )
    for alert in trace.alerts:
        row_for(alert.station).marks.append(
            mark("alert", alert.ts, f"alert {alert.source} score {alert.score:.3g}")
        )
    order_row = TimelineRow(f"Work order {work_order.external_id}", "", [])
    for name, stamp in steps:
        order_row.marks.append(mark("work_order", stamp, f"work order {name}"))
    timeline_rows = [order_row, *rows.values()]
    if elsewhere.marks:
        timeline_rows.append(elsewhere)
    cursor, outside = place(trace.at)
    ticks = [
        (round(share * 100, 3), start + (end - start) * share) for share in (0, 0.25, 0.5, 0.75, 1)
    ]
    return Timeline(start, end, timeline_rows, None if outside else round(cursor, 3), ticks)


def event_rows(trace: telemetry.VinTrace, now: dt.datetime) -> list[dict]:
    """Everything on the timeline as one chronological list (the timeline's table)."""
    events = []
    for visit in trace.visits:
        events.append(
            {
                "at": visit.arrived_at,
                "kind": "Arrived",
                "station": visit.station.code,
                "what": f"{visit.station.name}; left "
                + (f"{visit.left_at:%H:%M:%S}" if visit.left_at else "— still there"),
            }
        )
    for flash in trace.flashes:
        events.append(
            {
                "at": flash.flashed_at,
                "kind": "Firmware",
                "station": flash.station.code if flash.station else "",
                "what": f"{flash.component} {flash.version}",
            }
        )
    for event in trace.quality_events:
        events.append(
            {
                "at": event.found_at,
                "kind": "Quality event",
                "station": event.station.code if event.station else "",
                "what": f"{event.defect.code} — {event.defect.name}, {event.severity}, "
                f"by {event.source}" + (f": {event.description}" if event.description else ""),
            }
        )
    for alert in trace.alerts:
        what = f"{alert.source} score {alert.score:.4g} (threshold {alert.threshold:.4g})"
        if alert.rule:
            what += f", {alert.rule} on {alert.signal}"
        events.append(
            {
                "at": alert.ts,
                "kind": "Alert",
                "station": alert.station.code,
                "what": f"{what}; {alert.status}",
                "alert": alert.pk,
            }
        )
    work_order = trace.unit.work_order
    for name in ("released", "started", "completed", "cancelled"):
        stamp = getattr(work_order, f"{name}_at")
        if stamp is not None:
            events.append(
                {
                    "at": stamp,
                    "kind": "Work order",
                    "station": "",
                    "what": f"{work_order.external_id} {name}",
                }
            )
    events.sort(key=lambda row: row["at"])
    return events


def clock(value: dt.datetime, zone: dt.tzinfo, *, date: bool = False) -> str:
    """The plant's wall-clock time to the millisecond: 09:22:47.125."""
    local = value.astimezone(zone)
    text = local.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")
    return f"{text}.{local.microsecond // 1000:03d}"


def telemetry_table(
    trace_telemetry: telemetry.TraceTelemetry, at: dt.datetime, alerts, zone: dt.tzinfo
):
    """The rows of `#trace-telemetry`: each sample, the one nearest the instant and the ones
    that raised an alert marked."""
    rows = trace_telemetry.rows
    nearest = min(rows, key=lambda row: abs(row.ts - at), default=None)
    raised = {(alert.ts, alert.seq): alert.pk for alert in alerts}
    return [
        {
            "ts": row.ts,
            "iso": iso_ms(row.ts),
            "clock": clock(row.ts, zone),
            "seq": row.seq,
            "vin": row.vin,
            "serial": row.serial,
            "values": [(name, row.signals.get(name)) for name in trace_telemetry.signals],
            "nearest": row is nearest,
            "alert": raised.get((row.ts, row.seq)),
        }
        for row in rows
    ]


@page("mes.view_unit")
def trace_page(request: HttpRequest) -> HttpResponse:
    wanted = request.GET.get("vin", "").strip()
    at_text = request.GET.get("at", "").strip()
    window_text = request.GET.get("window", str(telemetry.DEFAULT_TRACE_WINDOW))
    context: dict = {
        "query": wanted,
        "at_text": at_text,
        "windows": telemetry.TRACE_WINDOWS,
        "window": telemetry.DEFAULT_TRACE_WINDOW,
        "recent": recent_alerted_units(),
    }
    if window_text.isdigit() and int(window_text) in telemetry.TRACE_WINDOWS:
        context["window"] = int(window_text)
    elif "window" in request.GET:
        context["error"] = (
            f"The window is one of {', '.join(map(str, telemetry.TRACE_WINDOWS))} seconds."
        )
        return render(request, "ui/trace.html", context, status=400)
    if not wanted:
        return render(request, "ui/trace.html", context)
    try:
        unit = telemetry.unit_by_vin_or_serial(wanted)
    except UnknownReference:
        context["error"] = f"No unit has the VIN or serial “{wanted}”. Check the 17 characters."
        return render(request, "ui/trace.html", context, status=404)
    zone = zoneinfo.ZoneInfo(unit.work_order.line.area.site.timezone)
    now = timezone.now()
    if at_text:
        at = parse_instant(at_text, zone)
        if at is None:
            context["error"] = (
                f"“{at_text}” is not an instant: use e.g. 2025-03-10T09:22:47Z, an offset "
                "such as +01:00, or the plant's local time."
            )
            context["unit"] = unit
            return render(request, "ui/trace.html", context, status=400)
    else:
        at = default_instant(unit, now)
        context["notice"] = (
            "No instant given: showing the unit's latest alert, or else its latest arrival."
        )
    trace = telemetry.vin_trace(
        unit=unit, at=at, window=context["window"], points=CHART_POINTS, now=now
    )
    context.update(
        unit=unit,
        trace=trace,
        zone=str(zone),
        at_local=local_input(at, zone),
        at_iso=iso_ms(at),
        at_clock=clock(at, zone, date=True),
        timeline=build_timeline(trace, now),
        events=event_rows(trace, now),
    )
    if trace.telemetry is not None:
        window_alerts = [
            a
            for a in trace.alerts
            if a.station_id == trace.telemetry.station.pk
            and trace.telemetry.start <= a.ts <= trace.telemetry.end
        ]
        # Alerts of other units at this station in the window matter too (did it fire early?).
        window_alerts += list(
            DefectAlert.objects.filter(
                station=trace.telemetry.station,
                ts__gte=trace.telemetry.start,
                ts__lte=trace.telemetry.end,
            )
            .exclude(pk__in=[a.pk for a in window_alerts])
            .select_related("station")
        )
        context["rows"] = telemetry_table(trace.telemetry, at, window_alerts, zone)
        context["columns"] = [
            (name, trace.telemetry.units.get(name, "")) for name in trace.telemetry.signals
        ]
        context["window_alerts"] = sorted(window_alerts, key=lambda a: a.ts)
        context["chart_data"] = {
            "zone": str(zone),
            "at": at.timestamp(),
            "start": trace.telemetry.start.timestamp(),
            "end": trace.telemetry.end.timestamp(),
            "signals": series_columns(trace.telemetry.series),
            "scores": score_columns(trace.telemetry.scores),
            "alerts": [
                {"ts": a.ts.timestamp(), "score": a.score, "id": a.pk} for a in window_alerts
            ],
        }
    return render(request, "ui/trace.html", context)


def recent_alerted_units(limit: int = 8) -> list[DefectAlert]:
    """The latest alerts with a unit: starting points for a trace."""
    return list(
        DefectAlert.objects.filter(unit__isnull=False)
        .select_related("station", "unit")
        .order_by("-ts")[:limit]
    )
