"""The Celery app: Redis broker, tasks discovered in every app, the beat schedule in code."""

import os

from celery import Celery, signals
from celery.schedules import crontab
from django_structlog.celery.steps import DjangoStructLogInitStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aegis.settings.development")

app = Celery("aegis")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Binds task_id (and the request_id of the web request that enqueued it) to every log line.
app.steps["worker"].add(DjangoStructLogInitStep)

app.conf.beat_schedule = {
    "heartbeat": {
        "task": "aegis.heartbeat",
        "schedule": 30.0,
        "options": {"expires": 25.0},
    },
    "telemetry-rollups": {
        "task": "telemetry.rollups_refresh",
        "schedule": 60.0,
        "options": {"expires": 55.0},
    },
    "telemetry-retention": {
        "task": "telemetry.retention_enforce",
        "schedule": 15 * 60.0,
        "options": {"expires": 14 * 60.0},
    },
    # Foresight: candidates per station of every line each night (never promoted by itself),
    # and each production model's drift against its training distribution every hour.
    "foresight-nightly-retrain": {
        "task": "foresight.retrain_lines",
        "schedule": crontab(hour=2, minute=15),
        "options": {"expires": 3 * 3600.0},
    },
    "foresight-drift-check": {
        "task": "foresight.drift_check",
        "schedule": crontab(minute=7),
        "options": {"expires": 50 * 60.0},
    },
}


@signals.task_postrun.connect
def _count_task(sender=None, state=None, **kwargs) -> None:
    from aegis.observability.metrics import CELERY_TASKS

    CELERY_TASKS.labels(getattr(sender, "name", "unknown"), (state or "unknown").lower()).inc()


@signals.worker_process_shutdown.connect
def _forget_pool_process(pid=None, **kwargs) -> None:
    from aegis.observability.metrics import mark_process_dead

    mark_process_dead(pid or os.getpid())
