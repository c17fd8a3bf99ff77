"""Prometheus metrics of the edge bridge (`/metrics` on its HTTP port).

An edge box runs one bridge process, so these live in the default registry of that process;
counters move once per record or per group, never once per sample.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BUFFERED_SAMPLES = Gauge(
    "aegis_edge_buffered_samples",
    "Samples in the disk buffer not yet acknowledged by JetStream.",
)
BUFFERED_BYTES = Gauge(
    "aegis_edge_buffered_bytes",
    "Bytes of segment files in the disk buffer (bounded by buffer.max_bytes).",
)
BUFFER_MAX_BYTES = Gauge("aegis_edge_buffer_max_bytes", "The configured buffer.max_bytes.")
OLDEST_BUFFERED_AGE = Gauge(
    "aegis_edge_oldest_buffered_age_seconds",
    "How long the oldest unacknowledged record has waited (0 when the buffer is drained).",
)
APPENDED = Counter("aegis_edge_appended_samples_total", "Samples appended to the disk buffer.")
SYNCED = Counter(
    "aegis_edge_synced_samples_total", "Samples made durable on disk by a group fsync."
)
PUBLISHED = Counter(
    "aegis_edge_published_samples_total",
    "Samples acknowledged by JetStream (replays included).",
)
PUBLISHED_MESSAGES = Counter(
    "aegis_edge_published_messages_total", "Messages acknowledged by JetStream."
)
REPLAYED = Counter(
    "aegis_edge_replayed_samples_total",
    "Samples published from the backlog: buffered before the last reconnect or restart.",
)
SHED = Counter(
    "aegis_edge_shed_samples_total",
    "Samples dropped unpublished by the shed_oldest policy to make room for newer ones.",
)
BLOCKED_SECONDS = Counter(
    "aegis_edge_blocked_seconds_total",
    "Time sources waited for room in a full buffer (the block policy), summed over sources.",
)
PUBLISH_FAILURES = Counter(
    "aegis_edge_publish_failures_total",
    "Publishes not acknowledged (timeouts, no stream, disconnects): retried from the cursor.",
)
PUBLISH_LATENCY = Histogram(
    "aegis_edge_publish_latency_seconds",
    "From sending a message to JetStream's acknowledgement.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
NATS_CONNECTED = Gauge("aegis_edge_nats_connected", "1 while connected to NATS, else 0.")
