"""`manage.py bench_alerts --json` runs the real path (publish → scorers → websocket) to the end,
with two partitioned scorer processes, counts every injected fault's alert, explains where the
CPU went, and leaves nothing behind. Small sizes: the numbers in docs/benchmarks.md come from
full-size runs."""

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
    "scorers",
    "scorer_cpu_us_per_sample",
    "scorer_lag_max_s",
}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_small_run_with_two_scorers_receives_every_injected_alert_and_cleans_up():
    done = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "bench_alerts",
            "--json",
            "--stations=3",
            "--scorers=2",
            "--rate=3000",
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
    assert result["scorers"] == 2
    assert result["nats_sync_interval"] == "always"
    assert len(result["scorer_cpu_seconds_each"]) == 2
    assert result["cpu_seconds"]["scorer"] == pytest.approx(sum(result["scorer_cpu_seconds_each"]))
    assert 0 < result["scorer_cpu_us_per_sample"] < 10_000
    assert result["scorer_lag_max_s"] >= result["scorer_lag_mean_s"] >= 0
    assert not Site.objects.filter(code__startswith="bench-").exists()
    assert not DefectAlert.objects.exists()
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--seconds=2"], "--seconds must exceed"),
        (["--scorers=3", "--stations=2"], "--scorers"),
        (["--sync-interval=often"], "--sync-interval must be"),
    ],
)
def test_sizes_that_cannot_run_are_refused(arguments, complaint):
    done = subprocess.run(
        [sys.executable, "manage.py", "bench_alerts", *arguments],
        cwd=REPO,
        env=process_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert complaint in done.stderr
