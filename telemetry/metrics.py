"""Prometheus metrics of the telemetry ingest workers (summed over processes by /metrics).

Counters move once per batch (`inc(n)`), never once per sample: in multiprocess mode every
update writes to a memory-mapped file.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

import aegis.observability.metrics  # noqa: F401 - names this process's metric files first

MESSAGES_RECEIVED = Counter(
    "aegis_ingest_messages_received_total",
    "Telemetry messages pulled from the TELEMETRY stream (redeliveries included).",
)
SAMPLES_RECEIVED = Counter(
    "aegis_ingest_samples_received_total",
    "Samples in the telemetry messages that passed validation.",
)
SAMPLES_STORED = Counter(
    "aegis_ingest_samples_stored_total",
    "Samples written to telemetry_sample (committed).",
)
SAMPLES_DUPLICATE = Counter(
    "aegis_ingest_samples_duplicate_total",
    "Samples already stored (a redelivery or a repeated key), skipped by ON CONFLICT.",
)
DEAD_LETTERS = Counter(
    "aegis_ingest_dead_letters_total",
    "Messages published to aegis.deadletter.telemetry.<station> and terminated, by reason.",
    ["reason"],
)
DATABASE_FAILURES = Counter(
    "aegis_ingest_database_failures_total",
    "Failed attempts to store a batch or re-attribute rows (the batch is retried).",
)
ACK_FAILURES = Counter(
    "aegis_ingest_ack_failures_total",
    "Acknowledgements that could not be sent after a commit (the messages come back and are "
    "counted as duplicates).",
)
BATCH_MESSAGES = Histogram(
    "aegis_ingest_batch_messages",
    "Messages per batch.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
BATCH_SAMPLES = Histogram(
    "aegis_ingest_batch_samples",
    "Samples per batch (one COPY).",
    buckets=(1, 10, 100, 500, 1000, 5000, 10_000, 50_000, 100_000, 500_000),
)
COMMIT_SECONDS = Histogram(
    "aegis_ingest_commit_seconds",
    "From the start of a batch's COPY to its commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_PENDING = Gauge(
    "aegis_ingest_consumer_pending_messages",
    "Messages of the TELEMETRY stream not yet delivered to the ingest consumer (its lag).",
    multiprocess_mode="livemax",  # every worker sees the same consumer
)
CONSUMER_ACK_PENDING = Gauge(
    "aegis_ingest_consumer_ack_pending_messages",
    "Messages delivered to ingest workers and not acknowledged yet (max_ack_pending caps it).",
    multiprocess_mode="livemax",
)
MES_MESSAGES = Counter(
    "aegis_ingest_mes_messages_total",
    "MES state messages folded into the worker's history.",
)
SAMPLES_REATTRIBUTED = Counter(
    "aegis_ingest_samples_reattributed_total",
    "Stored samples whose enrichment was rewritten because MES facts arrived for their instant.",
)
