"""Celery tasks of Foresight; thin wrappers over foresight.training and foresight.drift.

- `foresight.train_model`: train one station's model and register it as a candidate, reporting
  progress as state PROGRESS with meta {"fraction", "message"} (`AsyncResult(id).info`).
- `foresight.retrain_lines` (beat, nightly): a `train_model` per station, line by line, for the
  stations with enough telemetry in the last 24 h. Candidates only: people promote.
- `foresight.drift_check` (beat, hourly): PSI of each production model's last hour; drift is
  logged, recorded on the model, and starts a `train_model` of the station.
"""

from __future__ import annotations

import time

import structlog
from celery import shared_task
from django.utils import timezone

from foresight import drift, training
from mes.audit import audit_context
from mes.errors import MesError
from mes.models import Station

logger = structlog.get_logger(__name__)

PROGRESS_EVERY_S = 1.0  # a state update is a Redis write: not for every chunk of rows
AUDIT_SOURCE = "system"


@shared_task(bind=True, name="foresight.train_model")
def train_model(
    self,
    station: str,
    start: str,
    end: str,
    kind: str | None = None,
    feature_spec: dict | None = None,
    reason: str = "requested",
) -> dict:
    """Train station `station` (code) on [start, end] (ISO 8601, inclusive). A refusal (too
    few samples, no labels for a supervised model) is the task's result, not a failure."""
    reported = [-1.0]

    def progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if self.request.id is None or (fraction < 1.0 and now - reported[0] < PROGRESS_EVERY_S):
            return
        reported[0] = now
        self.update_state(
            state="PROGRESS", meta={"fraction": round(fraction, 4), "message": message}
        )

    try:
        row = Station.objects.select_related("line").filter(code=station).first()
        if row is None:
            raise MesError(f"unknown station {station!r}")
        with audit_context(user=None, source=AUDIT_SOURCE):
            model = training.train_station_model(
                station=row,
                start=training.parse_instant(start, name="start"),
                end=training.parse_instant(end, name="end"),
                kind=kind or training.detectors.DEFAULT_KIND,
                spec=feature_spec,
                notes=f"{reason} retraining, {start} to {end}",
                progress=progress,
            )
    except MesError as error:
        logger.warning("foresight.training_refused", station=station, reason=error.detail)
        return {"status": "refused", "station": station, "reason": error.detail}
    logger.info("foresight.trained", station=station, version=model.version, reason=reason)
    return {
        "status": "registered",
        "station": station,
        "version": model.version,
        "kind": model.kind,
        "threshold": model.threshold,
        "rows": model.metrics.get("dataset", {}).get("training_rows"),
    }


def _arguments(request: dict) -> dict:
    return {key: request[key] for key in TRAIN_ARGUMENTS}


TRAIN_ARGUMENTS = ("station", "start", "end", "kind", "feature_spec", "reason")


@shared_task(name="foresight.retrain_lines")
def retrain_lines() -> list[dict]:
    plan = training.nightly_plan(now=timezone.now())
    for request in plan:
        train_model.delay(**_arguments(request))
    logger.info("foresight.nightly_retraining", stations=[r["station"] for r in plan])
    return plan


@shared_task(name="foresight.drift_check")
def drift_check() -> list[dict]:
    reports = drift.drift_check_all(now=timezone.now())
    for report in reports:
        if report.retrain:
            station = Station.objects.select_related("line").get(code=report.station)
            request = training.retrain_request(
                station=station,
                start=training.parse_instant(report.retrain_start, name="start"),
                end=training.parse_instant(report.retrain_end, name="end"),
                reason="drift",
            )
            train_model.delay(**_arguments(request))
    return [report.as_dict() for report in reports]
