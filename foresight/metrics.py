"""Prometheus metrics of the Foresight scorer (summed over processes by /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

import aegis.observability.metrics  # noqa: F401 - names this process's metric files first

SAMPLES_SCORED = Counter(
    "aegis_foresight_samples_scored_total",
    "Samples scored (by the production model, its fallback or the station baseline).",
)
SAMPLES_UNSCORABLE = Counter(
    "aegis_foresight_samples_unscorable_total",
    "Messages the ingest rejects and samples of stations the MES does not know: not scored.",
)
SCORING_ERRORS = Counter(
    "aegis_foresight_scoring_errors_total",
    "Model calls that failed; the batch was scored by the model's baseline (fail-open).",
)
MODEL_LOAD_FAILURES = Counter(
    "aegis_foresight_model_load_failures_total",
    "Model versions whose artifact could not be loaded or verified (the baseline scores).",
)
MODEL_SWAPS = Counter(
    "aegis_foresight_model_swaps_total",
    "Changes of a station's production or shadow models taken into use.",
)
ALERTS = Counter("aegis_foresight_alerts_total", "Defect alerts raised, by source.", ["source"])
DATABASE_FAILURES = Counter(
    "aegis_foresight_database_failures_total",
    "Failed attempts to store scores or record an alert.",
)
BATCH_SECONDS = Histogram(
    "aegis_foresight_batch_seconds",
    "From a pull's arrival to its acknowledgement: features, scoring, COPY, alerts.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REDELIVERIES_SKIPPED = Counter(
    "aegis_foresight_redeliveries_skipped_total",
    "Messages delivered again after this scorer had handled them: acknowledged, not rescored.",
)
CONSUMER_PENDING = Gauge(
    "aegis_foresight_consumer_pending_messages",
    "Messages of a scorer consumer not yet delivered or not yet acknowledged (its backlog).",
    ["consumer"],
    multiprocess_mode="livemax",
)
LAG_SECONDS = Gauge(
    "aegis_foresight_lag_seconds",
    "From the newest scored message's arrival in the stream to its scores being stored.",
    ["consumer"],
    multiprocess_mode="livemax",
)
