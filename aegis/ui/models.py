"""Foresight models: each station's versions with status, metrics, threshold and training
range; a chart of the production and shadow models' scores over a chosen range; and, for the
roles that may, buttons that promote and roll back through the existing REST operations
(/api/v1/foresight/models/<version>/promote, /api/v1/foresight/stations/<code>/rollback) with
the session and its CSRF token. The server refuses anyone else whatever the page shows."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from aegis.ui.navigation import page
from aegis.ui.station import score_columns
from foresight.api.selectors import model_version_list, score_chart
from foresight.models import ModelStatus, ModelVersion
from mes.models import Station

COMPARE_HOURS = (1, 8, 24, 72, 168)
DEFAULT_HOURS = 24
CHART_POINTS = 1000
# The metrics listed per model: its top-level numbers and words, the first of them.
LISTED_METRICS = 8


def metric_items(metrics: dict) -> list[tuple[str, str]]:
    """The scalar metrics of a model (nested ones, such as drift references, left out)."""
    items = []
    for name, value in (metrics or {}).items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float):
            items.append((name, f"{value:.4g}"))
        elif isinstance(value, int | str):
            items.append((name, str(value)))
        if len(items) == LISTED_METRICS:
            break
    dataset = (metrics or {}).get("dataset")
    if isinstance(dataset, dict) and "training_rows" in dataset:
        items.append(("training rows", f"{dataset['training_rows']:,}"))
    return items


def actions_for(model: ModelVersion, *, may_promote: bool, may_roll_back: bool) -> list[dict]:
    """The buttons a model gets: promotions its status allows, and a rollback for a
    production model that replaced another."""
    actions = []
    if may_promote and model.status == ModelStatus.CANDIDATE:
        actions.append({"kind": "promote", "to": "shadow", "label": "Promote to shadow"})
    if may_promote and model.status in (ModelStatus.CANDIDATE, ModelStatus.SHADOW):
        actions.append({"kind": "promote", "to": "production", "label": "Promote to production"})
    if (
        may_roll_back
        and model.status == ModelStatus.PRODUCTION
        and model.previous_production_id is not None
    ):
        actions.append({"kind": "rollback", "label": "Roll back"})
    return actions


def latest_score_at(station: Station) -> dt.datetime | None:
    """The newest score of any model at the station (one step down the score table's key)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(ts) FROM foresight_score WHERE station_id = %s", [station.pk])
        return cursor.fetchone()[0]


@page("foresight.view_modelversion")
def models_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    may_promote = user.has_perm("foresight.promote_modelversion")
    may_roll_back = user.has_perm("foresight.rollback_modelversion")
    stations = list(Station.objects.select_related("line").order_by("line__code", "position"))
    chosen = next((s for s in stations if s.code == request.GET.get("station")), None)
    versions = model_version_list().order_by("station__line__code", "station__position", "-id")
    if chosen is not None:
        versions = versions.filter(station=chosen)
    grouped: dict[Station, list[ModelVersion]] = defaultdict(list)
    for model in versions:
        model.actions = actions_for(model, may_promote=may_promote, may_roll_back=may_roll_back)
        model.metric_items = metric_items(model.metrics)
        grouped[model.station].append(model)
    error = ""
    hours_text = request.GET.get("hours", str(DEFAULT_HOURS))
    hours = int(hours_text) if hours_text.isdigit() else 0
    if hours not in COMPARE_HOURS:
        error = f"Compare over {', '.join(map(str, COMPARE_HOURS))} hours."
        hours = DEFAULT_HOURS
    if request.GET.get("station") and chosen is None:
        error = f"There is no station {request.GET['station']!r}."
    # The comparison: the chosen station, else the first one with a shadow model.
    compared = chosen or next(
        (s for s, models in grouped.items() if any(m.status == ModelStatus.SHADOW for m in models)),
        None,
    )
    chart_data = None
    compare_rows = []
    end = None
    if compared is not None and user.has_perm("foresight.view_score"):
        # The hours up to the station's latest score: a station scored last week still shows.
        end = min(timezone.now(), latest_score_at(compared) or timezone.now())
        chart = score_chart(
            station=compared, start=end - dt.timedelta(hours=hours), end=end, points=CHART_POINTS
        )
        columns = [c for c in score_columns(chart) if c["source"] == "model"]
        start = end - dt.timedelta(hours=hours)  # the chosen span, even if one bucket has data
        chart_data = {
            "station": compared.code,
            "series": columns,
            "start": start.timestamp(),
            "end": end.timestamp(),
        }
        for column in columns:
            highs = [v for v in column["max"] if v is not None]
            threshold = column["threshold"]
            compare_rows.append(
                {
                    "label": column["label"],
                    "shadow": column["shadow"],
                    "threshold": threshold,
                    "highest": max(highs) if highs else None,
                    "above": sum(1 for v in highs if threshold is not None and v >= threshold),
                    "buckets": len(highs),
                }
            )
    return render(
        request,
        "ui/models.html",
        {
            "stations": stations,
            "chosen": chosen,
            "grouped": dict(grouped),
            "compared": compared,
            "compare_end": end,
            "hours": hours,
            "hour_choices": COMPARE_HOURS,
            "chart_data": chart_data,
            "compare_rows": compare_rows,
            "may_promote": may_promote,
            "may_roll_back": may_roll_back,
            "error": error,
        },
        status=400 if error else 200,
    )
