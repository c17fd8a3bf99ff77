"""A Celery task runs in a real worker process through the real Redis broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from aegis.tasks import heartbeat, last_heartbeat
from tests.support import REPO, process_environment, stop

pytestmark = pytest.mark.slow


@pytest.fixture
def worker():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "--app",
            "aegis",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "--loglevel",
            "WARNING",
            "--hostname",
            f"test-{time.monotonic_ns()}@%h",
        ],
        cwd=REPO,
        env=process_environment(),
    )
    yield process
    assert stop(process, timeout=30) in (0, -15)


def test_a_task_runs_in_a_real_worker_process(worker, client):
    result = heartbeat.delay()
    beat = result.get(timeout=60)
    assert result.successful()
    assert beat["at"] <= time.time()
    assert beat["pid"] != os.getpid()  # ran in the worker's pool process, not here
    assert last_heartbeat() == beat
    # The worker's pool process counted the task in the shared metrics directory.
    text = client.get("/metrics").content.decode()
    assert 'aegis_celery_tasks_total{outcome="success",task="aegis.heartbeat"}' in text


def test_the_beat_schedule_is_defined_in_code():
    from aegis.celery import app

    entry = app.conf.beat_schedule["heartbeat"]
    assert entry["task"] == heartbeat.name
    assert entry["schedule"] <= 60
