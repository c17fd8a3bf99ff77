"""`manage.py bench_alerts --json` runs the real path (publish → scorer → websocket) to the end,
counts every injected fault's alert, and leaves nothing behind. Small sizes: the numbers in
docs/benchmarks.md come from full-size runs."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from foresight.models import DefectAlert, ModelVersion
from mes.models import Site
from tests.support import REPO, process_environment

KEYS = {
    "alert_latency_p50_ms",
    "alert_latency_p99_ms",
    "background_samples_per_s",
    "alerts_expected",
    "alerts_received",
}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_small_run_receives_every_injected_alert_and_cleans_up():
    done = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "bench_alerts",
            "--json",
            "--stations=2",
            "--rate=2000",
            "--seconds=9",
            "--interval=1",
        ],
        cwd=REPO,
        env=process_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = orjson.loads(done.stdout)

    assert result.keys() >= KEYS
    assert result["alerts_expected"] >= 3
    assert result["alerts_received"] == result["alerts_expected"]
    assert result["alerts_unexpected"] == 0
    assert 0 < result["alert_latency_p50_ms"] <= result["alert_latency_p99_ms"] < 10_000
    assert result["background_samples_per_s"] > 1_500
    assert set(result["cpu_seconds"]) >= {"scorer", "ingest", "web", "postgresql"}
    assert not Site.objects.filter(code__startswith="bench-").exists()
    assert not DefectAlert.objects.exists()
    assert not ModelVersion.objects.exists()


def test_sizes_that_cannot_run_are_refused():
    done = subprocess.run(
        [sys.executable, "manage.py", "bench_alerts", "--seconds=2"],
        cwd=REPO,
        env=process_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "--seconds must exceed" in done.stderr
