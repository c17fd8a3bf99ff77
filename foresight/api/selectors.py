"""Reads of Foresight for the API: lists that join what their representation shows (a page
costs the same queries whatever its length), and the decimated score series for charts."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import QuerySet

from foresight.models import BASELINE_MODEL_VERSION_ID, DefectAlert, ModelVersion
from mes.models import Station

# The statistical baseline's scores are max |z| / z-limit: anomalous from 1.0 (foresight.detectors).
BASELINE_THRESHOLD = 1.0


def model_version_list() -> QuerySet[ModelVersion]:
    return ModelVersion.objects.select_related(
        "station", "previous_production", "created_by", "promoted_by", "archived_by"
    )


def alert_list() -> QuerySet[DefectAlert]:
    return DefectAlert.objects.select_related(
        "station", "unit", "work_order", "model_version", "acknowledged_by", "resolved_by"
    )


@dataclass
class ScoreSeries:
    """One model's scores (or the baseline's), in buckets of equal width."""

    model_version: str | None
    source: str
    shadow: bool
    threshold: float | None
    points: list[dict] = field(default_factory=list)


@dataclass
class ScoreChart:
    station: str
    start: dt.datetime
    end: dt.datetime
    bucket_seconds: float
    series: list[ScoreSeries]


# Buckets by date_bin (PostgreSQL 14+, no TimescaleDB needed); the key (station, ts, …) is the
# index the range scan uses.
SCORE_BUCKETS_SQL = """
SELECT model_version_id, shadow,
       date_bin(%(width)s, ts, %(start)s) AS bucket,
       max(score), avg(score), count(*)
FROM foresight_score
WHERE station_id = %(station)s AND ts >= %(start)s AND ts <= %(end)s
  {model_filter}
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


def score_chart(
    *,
    station: Station,
    start: dt.datetime,
    end: dt.datetime,
    points: int,
    model: ModelVersion | None = None,
) -> ScoreChart:
    """The station's scores from `start` to `end` (inclusive) in at most `points` buckets per
    model: the maximum keeps every peak that crossed a threshold visible, the mean and the
    sample count say what the bucket held."""
    span_us = max(1, int((end - start) / dt.timedelta(microseconds=1)))
    # Strictly more than span/points, so the inclusive end still falls in the last bucket.
    width = dt.timedelta(microseconds=max(1000, span_us // points + 1))
    parameters = {"width": width, "start": start, "end": end, "station": station.pk}
    model_filter = ""
    if model is not None:
        model_filter = "AND model_version_id = %(model)s"
        parameters["model"] = model.pk
    with connection.cursor() as cursor:
        cursor.execute(SCORE_BUCKETS_SQL.format(model_filter=model_filter), parameters)
        rows = cursor.fetchall()
    ids = {row[0] for row in rows} - {BASELINE_MODEL_VERSION_ID}
    models = {m.pk: m for m in ModelVersion.objects.filter(pk__in=ids)}
    series: dict[tuple[int, bool], ScoreSeries] = {}
    for model_id, shadow, bucket, highest, mean, samples in rows:
        key = (model_id, shadow)
        if key not in series:
            known = models.get(model_id)
            baseline = model_id == BASELINE_MODEL_VERSION_ID
            series[key] = ScoreSeries(
                model_version=known.version if known else None,
                source="baseline" if baseline else "model",
                shadow=shadow,
                threshold=known.threshold if known else (BASELINE_THRESHOLD if baseline else None),
            )
        series[key].points.append(
            {
                "ts": bucket,
                "max": _finite_or_none(highest),
                "mean": _finite_or_none(mean),
                "samples": samples,
            }
        )
    return ScoreChart(
        station=station.code,
        start=start,
        end=end,
        bucket_seconds=width.total_seconds(),
        series=list(series.values()),
    )


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
