"""OEE: availability, performance, quality and OEE of a line or a station per business day or
per shift, the stations of the line side by side, the downtime Pareto, MTBF and MTTR.

Every number is read through mes/oee.py, the SQL functions the reporting views and the REST
API read too (docs/oee.md): this page never computes a ratio itself, it only draws them.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from aegis.ui.navigation import page
from mes import oee
from mes.models import Line, Station

DEFAULT_DAYS = 7
LONGEST_DAYS = 92  # a quarter: the trend charts stay readable
FACTORS = ("availability", "performance", "quality", "oee")


def _ratio(value) -> float | None:
    return None if value is None else float(value)


def percent(value) -> str:
    """A ratio of the reports (a fraction with six decimals) as a percentage to 0.01."""
    return "\N{EN DASH}" if value is None else f"{float(value) * 100:.2f} %"


def duration(seconds) -> str:
    """Seconds as a supervisor reads them: 6 h 57 min, 33 min 30 s, 45 s."""
    if seconds is None:
        return "\N{EN DASH}"
    total = round(float(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if not minutes:
        return f"{secs} s"
    return f"{minutes} min {secs} s" if secs else f"{minutes} min"


def with_percentages(rows: list[dict]) -> list[dict]:
    """Each row with `pct`: its factors as percentages (the ratios stay as they are)."""
    for row in rows:
        row["pct"] = {factor: percent(row.get(factor)) for factor in (*FACTORS, "share")}
        for field in ("cumulative_share",):
            row["pct"][field] = percent(row.get(field))
        for field in ("mtbf_seconds", "mttr_seconds"):
            if field in row:
                row[field.replace("seconds", "text")] = duration(row[field])
        for field in ("lost_seconds", "downtime_seconds"):
            if row.get(field) is not None:
                row[field.replace("seconds", "minutes")] = f"{float(row[field]) / 60:.1f}"
    return rows


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def _period_of(rows: list[dict], first_day: dt.date, last_day: dt.date, zone) -> tuple:
    """The instants the rows cover; without rows, the local calendar days asked for."""
    starts = [row["period_start"] for row in rows if row.get("period_start")]
    ends = [row["period_end"] for row in rows if row.get("period_end")]
    if starts and ends and max(ends) > min(starts):
        return min(starts), max(ends)
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return start, min(end, max(timezone.now(), start + dt.timedelta(seconds=1)))


def trend_columns(rows: list[dict], per: str) -> dict:
    """A, P, Q and OEE per day or shift in time order, as chart columns and labels."""
    ordered = sorted(rows, key=lambda row: row["period_start"])
    labels = []
    for row in ordered:
        if per == "shift":
            labels.append(f"{row['business_date']:%m-%d} {row['shift_name']}")
        else:
            labels.append(f"{row['business_date']:%Y-%m-%d}")
    return {
        "labels": labels,
        **{factor: [_ratio(row[factor]) for row in ordered] for factor in FACTORS},
    }


def pareto_columns(rows: list[dict]) -> dict:
    return {
        "labels": [row["key"] or "no reason" for row in rows],
        "names": [row["name"] for row in rows],
        "minutes": [float(row["lost_seconds"]) / 60 for row in rows],
        "cumulative": [float(row["cumulative_share"]) * 100 for row in rows],
    }


@page("mes.view_oee")
def oee_page(request: HttpRequest) -> HttpResponse:
    lines = list(Line.objects.select_related("area__site").order_by("code"))
    stations = list(Station.objects.select_related("line").order_by("line__code", "position"))
    context: dict = {"lines": lines, "stations": stations, "errors": []}
    if not lines:
        return render(request, "ui/oee.html", context)
    errors = context["errors"]
    line = next((x for x in lines if str(x.pk) == request.GET.get("line")), None)
    station = next((x for x in stations if x.code == request.GET.get("station")), None)
    if request.GET.get("station") and station is None:
        errors.append(f"There is no station {request.GET['station']!r}.")
    if station is not None:
        line = next(x for x in lines if x.pk == station.line_id)
    line = line or lines[0]
    zone = zoneinfo.ZoneInfo(line.area.site.timezone)
    today = timezone.now().astimezone(zone).date()
    per = request.GET.get("per", "day")
    if per not in ("day", "shift"):
        errors.append("Show the trend per day or per shift.")
        per = "day"
    last_day = _date(request.GET.get("last_day", "")) or today
    first_day = _date(request.GET.get("first_day", "")) or last_day - dt.timedelta(
        days=DEFAULT_DAYS - 1
    )
    if request.GET.get("first_day") and _date(request.GET["first_day"]) is None:
        errors.append("The first day is a date such as 2025-03-04.")
    if request.GET.get("last_day") and _date(request.GET["last_day"]) is None:
        errors.append("The last day is a date such as 2025-03-10.")
    if last_day < first_day:
        errors.append("The last day comes before the first: showing one week up to it.")
        first_day = last_day - dt.timedelta(days=DEFAULT_DAYS - 1)
    if (last_day - first_day).days >= LONGEST_DAYS:
        errors.append(f"At most {LONGEST_DAYS} days at once: showing the last {LONGEST_DAYS}.")
        first_day = last_day - dt.timedelta(days=LONGEST_DAYS - 1)

    scope = {"line": line, "station": station}
    level = "station" if station else "line"
    if per == "shift":
        trend = oee.oee_per_shift(first_day=first_day, last_day=last_day, per=level, **scope)
    else:
        trend = oee.oee_per_day(first_day=first_day, last_day=last_day, per=level, **scope)
    start, end = _period_of(trend, first_day, last_day, zone)
    totals = oee.oee_over_period(start=start, end=end, per=level, **scope)
    per_station = oee.oee_over_period(start=start, end=end, per="station", line=line)
    pareto = oee.downtime_pareto(start=start, end=end, by="reason", reason_depth=2, **scope)
    reliability = oee.reliability(start=start, end=end, per=level, **scope)
    context.update(
        line=line,
        station=station,
        per=per,
        first_day=first_day,
        last_day=last_day,
        zone=str(zone),
        start=start,
        end=end,
        trend=with_percentages(sorted(trend, key=lambda row: row["period_start"])),
        totals=with_percentages(totals)[0] if totals else None,
        per_station=with_percentages(per_station),
        pareto=with_percentages(pareto),
        reliability=with_percentages(reliability)[0] if reliability else None,
        chart_data={
            "per": per,
            "trend": trend_columns(trend, per),
            "pareto": pareto_columns(pareto),
        },
    )
    return render(request, "ui/oee.html", context, status=400 if errors else 200)
