"""The station page: live signals, Foresight's score against its threshold, SPC charts, recent
visits and downtime of one station over a time range chosen in the URL.

Charts are drawn by static/aegis/station.js from data embedded in the page (`json_script`), read
by the same selectors as the REST API (telemetry/selectors.py, foresight/api/selectors.py), so
the first paint needs no second request; `station.live` and `defect.alert` events over the
websocket keep a rolling range moving.

Also here: the helpers every page of UI-B uses to read instants from a URL and to turn chart
data into the columns uPlot draws.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass

from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from aegis.ui.navigation import page
from foresight.api.selectors import ScoreChart, score_chart
from foresight.models import DefectAlert
from mes.models import DowntimeEvent, Shift, Station, StationSignal, StationVisit
from telemetry import selectors as telemetry

# The ranges of the picker: key → (label, length); "shift" and "custom" are computed.
RANGES = {
    "5m": ("Last 5 minutes", dt.timedelta(minutes=5)),
    "1h": ("Last hour", dt.timedelta(hours=1)),
    "shift": ("This shift", None),
    "custom": ("Custom", None),
}
DEFAULT_RANGE = "5m"
# Without a shift on the line, "This shift" shows this much.
SHIFT_FALLBACK = dt.timedelta(hours=8)
# One bucket per pixel of a chart at 1280 px wide.
CHART_POINTS = 1200
RECENT_ROWS = 20
ALERT_ROWS = 50
# Rows of the tables that repeat a chart's data for screen readers and keyboard users.
TABLE_ROWS = 60


# -- instants in URLs (shared by the pages of UI-B) ---------------------------------------------

# "2025-03-10T11:22:47 02:00": a "+" that a hand-typed URL turned into a space.
_SPACED_OFFSET = re.compile(r"^(.*\d)\s(\d{2}(?::?\d{2})?)$")


def parse_instant(text: str, zone: dt.tzinfo) -> dt.datetime | None:
    """An ISO 8601 instant from a URL: with an offset (or Z) as given; without one, a
    wall-clock time of the plant (`zone`), as a datetime-local field sends it. None when it
    is not an instant (or not one of the years 2 to 9998)."""
    text = text.strip()
    match = _SPACED_OFFSET.match(text)
    if match:
        text = f"{match.group(1)}+{match.group(2)}"
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    # Windows and time zones around it must stay representable instants.
    return value if 2 <= value.year <= 9998 else None


def local_input(value: dt.datetime, zone: dt.tzinfo) -> str:
    """The value of a datetime-local field: the plant's wall-clock time to the millisecond."""
    return value.astimezone(zone).replace(tzinfo=None).isoformat(timespec="milliseconds")


def iso_ms(value: dt.datetime) -> str:
    """UTC with milliseconds and Z: how the pages put instants into URLs and attributes."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def site_zone(station: Station) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(station.line.area.site.timezone)


# -- chart data as uPlot columns ---------------------------------------------------------------


def _seconds(values) -> list[float]:
    return [round(value.timestamp(), 3) for value in values]


def series_columns(
    chart: telemetry.SeriesChart, nominal: dict[str, tuple] | None = None
) -> list[dict]:
    """Each signal as columns: bucket starts (epoch seconds), lowest, highest and mean values."""
    nominal = nominal or {}
    return [
        {
            "name": series.signal,
            "unit": series.unit,
            "nominal": nominal.get(series.signal, (None, None)),
            "ts": _seconds(point["ts"] for point in series.points),
            "min": [point["min"] for point in series.points],
            "max": [point["max"] for point in series.points],
            "mean": [point["mean"] for point in series.points],
        }
        for series in chart.series
    ]


def score_columns(chart: ScoreChart) -> list[dict]:
    """Each scoring model (production, shadows, the baseline) as columns of bucket maxima."""
    return [
        {
            "label": series.model_version or "baseline",
            "source": series.source,
            "shadow": series.shadow,
            "threshold": series.threshold,
            "ts": _seconds(point["ts"] for point in series.points),
            "max": [point["max"] for point in series.points],
        }
        for series in chart.series
    ]


def table_rows(columns: dict, most: int = TABLE_ROWS) -> list[dict]:
    """A signal's buckets merged to at most `most` rows (extremes kept), for its data table."""
    count = len(columns["ts"])
    if not count:
        return []
    step = -(-count // most)
    rows = []
    for first in range(0, count, step):
        lows = [v for v in columns["min"][first : first + step] if v is not None]
        highs = [v for v in columns["max"][first : first + step] if v is not None]
        rows.append(
            {
                "ts": dt.datetime.fromtimestamp(columns["ts"][first], tz=dt.UTC),
                "min": min(lows) if lows else None,
                "max": max(highs) if highs else None,
            }
        )
    return rows


def signal_summary(columns: dict) -> dict:
    lows = [v for v in columns["min"] if v is not None]
    highs = [v for v in columns["max"] if v is not None]
    means = [v for v in columns["mean"] if v is not None]
    return {
        "min": min(lows) if lows else None,
        "max": max(highs) if highs else None,
        "last": means[-1] if means else None,
    }


# -- the time range ----------------------------------------------------------------------------


@dataclass
class TimeRange:
    key: str
    start: dt.datetime
    end: dt.datetime
    live: bool  # a range that ends now and moves on with live events
    label: str
    notice: str = ""
    error: str = ""


def time_range(params, *, station: Station, now: dt.datetime, zone: dt.tzinfo) -> TimeRange:
    """The range the URL asks for: `range` 5m, 1h, shift (the line's running shift, else the
    last one) or custom with `from` and `to`. A bad request falls back to the last 5 minutes
    and says why."""
    key = params.get("range", DEFAULT_RANGE)
    if key not in RANGES:
        fallback = _rolling(DEFAULT_RANGE, now)
        fallback.error = f"There is no range {key!r}: showing the last 5 minutes."
        return fallback
    if key == "shift":
        shifts = Shift.objects.filter(line_id=station.line_id, starts_at__lte=now)
        shift = shifts.filter(ends_at__gt=now).first() or shifts.order_by("-ends_at").first()
        if shift is None:
            return TimeRange(
                "shift",
                now - SHIFT_FALLBACK,
                now,
                True,
                "Last 8 hours",
                notice="No shift is scheduled on this line: showing the last 8 hours.",
            )
        running = shift.ends_at > now
        label = f"{shift.name} shift of {shift.business_date:%Y-%m-%d}"
        end = now if running else shift.ends_at
        return TimeRange("shift", shift.starts_at, end, running, label)
    if key == "custom":
        start = parse_instant(params.get("from", ""), zone)
        end = parse_instant(params.get("to", ""), zone)
        problem = ""
        if start is None or end is None:
            problem = "Give both ends of a custom range as date and time."
        elif end <= start:
            problem = "A custom range ends after it starts."
        elif end - start > telemetry.MAX_RANGE:
            problem = f"A custom range is at most {telemetry.MAX_RANGE.days} days long."
        if problem:
            fallback = _rolling(DEFAULT_RANGE, now)
            fallback.error = f"{problem} Showing the last 5 minutes."
            return fallback
        return TimeRange("custom", start, end, False, "Custom range")
    return _rolling(key, now)


def _rolling(key: str, now: dt.datetime) -> TimeRange:
    label, length = RANGES[key]
    return TimeRange(key, now - length, now, True, label)


# -- page reads ---------------------------------------------------------------------------------


def recent_visits(station: Station, *, until: dt.datetime) -> list[StationVisit]:
    """The last visits that began by `until`, newest first."""
    return list(
        StationVisit.objects.filter(station=station, arrived_at__lte=until)
        .select_related("unit__work_order")
        .order_by("-arrived_at")[:RECENT_ROWS]
    )


def recent_downtime(station: Station, *, until: dt.datetime) -> list[DowntimeEvent]:
    return list(
        DowntimeEvent.objects.filter(station=station, started_at__lte=until)
        .select_related("reason")
        .order_by("-started_at")[:RECENT_ROWS]
    )


def alerts_between(station: Station, start: dt.datetime, end: dt.datetime) -> list[DefectAlert]:
    return list(
        DefectAlert.objects.filter(station=station, ts__gte=start, ts__lte=end)
        .select_related("unit", "model_version")
        .order_by("-ts", "-id")[:ALERT_ROWS]
    )


def current_visit(station: Station, now: dt.datetime) -> StationVisit | None:
    return (
        StationVisit.objects.filter(station=station, arrived_at__lte=now)
        .filter(Q(left_at__isnull=True) | Q(left_at__gt=now))
        .select_related("unit__work_order")
        .first()
    )


# -- the page -----------------------------------------------------------------------------------


@page("mes.view_station")
def station_page(request: HttpRequest, code: str) -> HttpResponse:
    station = get_object_or_404(
        Station.objects.select_related("line__area__site"), code=code.replace("\x00", "")
    )
    now = timezone.now()
    zone = site_zone(station)
    span = time_range(request.GET, station=station, now=now, zone=zone)
    nominal = {
        signal.name: (signal.nominal_min, signal.nominal_max)
        for signal in StationSignal.objects.filter(station=station)
    }
    signals = series_columns(
        telemetry.signal_series(
            station=station, start=span.start, end=span.end, points=CHART_POINTS
        ),
        nominal,
    )
    scores = score_chart(station=station, start=span.start, end=span.end, points=CHART_POINTS)
    charts = [
        telemetry.spc_chart(limits=limits, start=span.start, end=span.end)
        for limits in telemetry.active_control_limits(station)
    ]
    alerts = alerts_between(station, span.start, span.end)
    chart_data = {
        "station": station.code,
        "line": station.line_id,
        "zone": str(zone),
        "start": span.start.timestamp(),
        "end": span.end.timestamp(),
        "live": span.live,
        "lengthSeconds": (span.end - span.start).total_seconds(),
        "signals": signals,
        "scores": score_columns(scores),
        "alerts": [
            {"id": a.pk, "ts": a.ts.timestamp(), "score": a.score, "source": a.source}
            for a in alerts
        ],
        "spc": [_spc_columns(chart) for chart in charts],
    }
    context = {
        "station": station,
        "zone": str(zone),
        "span": span,
        "ranges": [(key, label) for key, (label, _) in RANGES.items()],
        "custom_from": local_input(span.start, zone),
        "custom_to": local_input(span.end, zone),
        "signals": [
            {**columns, "summary": signal_summary(columns), "rows": table_rows(columns)}
            for columns in signals
        ],
        "scores": scores,
        "score_summary": _score_summary(scores),
        "spc_charts": charts,
        "alerts": alerts,
        "visit": current_visit(station, now),
        "visits": recent_visits(station, until=span.end),
        "downtime": recent_downtime(station, until=span.end),
        "chart_data": chart_data,
        "now": now,
    }
    return render(request, "ui/station.html", context, status=400 if span.error else 200)


def _score_summary(chart: ScoreChart) -> list[dict]:
    """Per scoring model: its threshold, highest score in the range and buckets above it."""
    rows = []
    for series in chart.series:
        highs = [p["max"] for p in series.points if p["max"] is not None]
        threshold = series.threshold
        rows.append(
            {
                "label": series.model_version or "statistical baseline",
                "role": "shadow"
                if series.shadow
                else ("production" if series.source == "model" else "baseline"),
                "threshold": threshold,
                "highest": max(highs) if highs else None,
                "last": highs[-1] if highs else None,
                "above": sum(1 for h in highs if threshold is not None and h >= threshold),
            }
        )
    return rows


def _spc_columns(chart: telemetry.SpcChartData) -> dict:
    limits = chart.limits
    sigma = chart.limits.ucl - chart.limits.centre
    return {
        "signal": limits.signal,
        "location": chart.location,
        "spread": chart.spread,
        "subgroup": limits.subgroup_size,
        "centre": limits.centre,
        "ucl": limits.ucl,
        "lcl": limits.lcl,
        "zone": sigma / 3.0,
        "range_centre": limits.range_centre,
        "range_ucl": limits.range_ucl,
        "range_lcl": limits.range_lcl,
        "ts": _seconds(chart.ts),
        "points": chart.points,
        "spread_points": chart.spread_points,
        "violations": [
            {
                "ts": alert.ts.timestamp(),
                "value": alert.score,
                "rule": alert.rule,
                "chart": alert.chart,
            }
            for alert in chart.violations
        ],
    }
