"""Drift checks: is a production model still looking at the process it was trained on?

Every hour (Celery beat, `foresight.drift_check`) each production model's features over the last
hour of its station's telemetry are binned by the training deciles the model keeps
(`metrics["drift_reference"]`, written by `foresight.detectors.train`), and compared with the
training shares by the population stability index (PSI) per feature. A PSI above PSI_LIMIT
(0.25, the usual "significant shift") on any important feature is drift: it is logged as a
warning, recorded on the model (`metrics["drift"]`), and the station is retrained — a new
candidate, never promoted automatically, and not more often than once per RETRAIN_COOLDOWN.

Important features are those whose training distribution can be binned: a feature that was
constant in training has equal deciles, and the slightest movement would give it an enormous
PSI while the model itself already judges it.

A check needs MIN_ROWS judged rows (after the longest window is full) in the hour; a station
that did not produce is skipped, not called drifted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

import numpy as np
import structlog
from django.db import transaction

from foresight.detectors import drift_shares, population_stability_index
from foresight.features import FeatureSpec
from foresight.models import ModelStatus, ModelVersion
from foresight.training import MAX_TRAINING_ROWS, build_dataset, iso_ms

logger = structlog.get_logger(__name__)

PSI_LIMIT = 0.25
WINDOW = dt.timedelta(hours=1)
MIN_ROWS = 1_000
RETRAIN_COOLDOWN = dt.timedelta(hours=6)
RETRAIN_RANGE = dt.timedelta(hours=24)
CHECKS_KEPT = 48  # on the model: two days of hourly checks
SHIFTED_LISTED = 10


@dataclass
class DriftReport:
    version: str
    station: str
    at: str
    status: str  # "stable", "drift", "skipped" or "failed"
    rows: int = 0
    max_psi: float | None = None
    shifted: list[dict] = field(default_factory=list)  # [{"feature", "psi"}], largest first
    reason: str = ""
    retrain: bool = False  # a retraining of the station should be started
    retrain_start: str | None = None
    retrain_end: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def important_features(edges: np.ndarray) -> np.ndarray:
    """Features whose training deciles are not all equal (edges: deciles x features)."""
    return np.ptp(edges, axis=0) > 0


def drift_check(*, model: ModelVersion, now: dt.datetime, window: dt.timedelta = WINDOW):
    """PSI of the last `window` of features against the model's training distribution;
    recorded on the model. Returns the report (retrain=True: start a retraining)."""
    station = model.station
    report = DriftReport(version=model.version, station=station.code, at=iso_ms(now), status="")
    reference = (model.metrics or {}).get("drift_reference")
    if not reference:
        report.status, report.reason = "skipped", "the model keeps no training distribution"
        return report
    spec = FeatureSpec.from_json(model.feature_spec)
    dataset = build_dataset(
        station=station, start=now - window, end=now, spec=spec, max_rows=MAX_TRAINING_ROWS
    )
    report.rows = int(dataset.features.shape[0])
    if report.rows < MIN_ROWS:
        report.status = "skipped"
        report.reason = f"{report.rows} judged samples in the last {window}; {MIN_ROWS} needed"
        _record(model, report)
        return report
    edges = np.asarray(reference["edges"], dtype=np.float64).T  # deciles x features
    psi = population_stability_index(
        np.asarray(reference["shares"], dtype=np.float64), drift_shares(dataset.features, edges)
    )
    important = important_features(edges)
    names = list(model.feature_names) or spec.names
    order = np.argsort(-np.where(important, psi, -np.inf))
    report.max_psi = float(psi[important].max()) if important.any() else 0.0
    report.shifted = [
        {"feature": names[i], "psi": round(float(psi[i]), 4)}
        for i in order[:SHIFTED_LISTED]
        if important[i] and psi[i] > PSI_LIMIT
    ]
    report.status = "drift" if report.shifted else "stable"
    if report.shifted:
        recent = ModelVersion.objects.filter(
            station=station,
            status=ModelStatus.CANDIDATE,
            created_at__gte=now - RETRAIN_COOLDOWN,
        ).first()
        if recent is None:
            report.retrain = True
            report.retrain_start = (now - RETRAIN_RANGE).isoformat()
            report.retrain_end = now.isoformat()
        else:
            report.reason = f"candidate {recent.version} is recent: no retraining started"
        logger.warning(
            "foresight.drift",
            version=model.version,
            station=station.code,
            max_psi=report.max_psi,
            shifted=report.shifted,
            retrain=report.retrain,
        )
    _record(model, report)
    return report


@transaction.atomic
def _record(model: ModelVersion, report: DriftReport) -> None:
    """The latest check and the recent history, on the model's metrics (a measurement, not a
    lifecycle change: no registry event)."""
    locked = ModelVersion.objects.select_for_update().get(pk=model.pk)
    metrics = dict(locked.metrics or {})
    entry = {
        "at": report.at,
        "status": report.status,
        "rows": report.rows,
        "max_psi": report.max_psi,
        "shifted": report.shifted,
        "retrain": report.retrain,
        "reason": report.reason,
    }
    history = [entry, *(metrics.get("drift") or {}).get("history", [])][:CHECKS_KEPT]
    metrics["drift"] = {"latest": entry, "history": history}
    ModelVersion.objects.filter(pk=locked.pk).update(metrics=metrics)
    model.metrics = metrics


def drift_check_all(*, now: dt.datetime) -> list[DriftReport]:
    """Every production model's check."""
    reports = []
    models = ModelVersion.objects.filter(status=ModelStatus.PRODUCTION).select_related("station")
    for model in models.order_by("station__code"):
        try:
            reports.append(drift_check(model=model, now=now))
        except Exception as error:
            logger.exception("foresight.drift_check_failed", version=model.version)
            reports.append(
                DriftReport(
                    version=model.version,
                    station=model.station.code,
                    at=iso_ms(now),
                    status="failed",
                    reason=f"{type(error).__name__}: {error}"[:300],
                )
            )
    return reports
