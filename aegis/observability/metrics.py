"""Prometheus metrics, correct across processes.

With PROMETHEUS_MULTIPROC_DIR set (the launcher and the compose file set it, one directory per
host), every process writes its samples to files there and `/metrics` on any web process sums
them: web, Celery worker children and stream workers all show up in one scrape.
"""

from __future__ import annotations

import os
import socket

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

_HOST = socket.gethostname().replace("_", "-")  # "_" separates fields in the file names
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Files are named per process; with the hostname in the name, containers sharing one
    # directory (each with its own pid 1) never write into each other's files.
    values.ValueClass = values.MultiProcessValue(
        process_identifier=lambda: f"{_HOST}-{os.getpid()}"
    )

HTTP_REQUESTS = Counter(
    "aegis_http_requests_total",
    "HTTP requests answered, by route name, method and status code.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "aegis_http_request_duration_seconds",
    "Time to answer an HTTP request, by route name.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CELERY_TASKS = Counter(
    "aegis_celery_tasks_total",
    "Celery tasks finished, by task name and outcome.",
    ["task", "outcome"],
)
READINESS_FAILURES = Counter(
    "aegis_readiness_failures_total",
    "Readiness checks that found a dependency down, by dependency.",
    ["dependency"],
)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every process's metrics on this host."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a finished process's live gauges (Celery pool children call this on exit)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(f"{_HOST}-{pid}")
