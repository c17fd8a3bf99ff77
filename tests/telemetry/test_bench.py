"""`manage.py bench_ingest --json` runs to completion with every key the docs promise, its
accounting is exact, and it leaves nothing behind (plant, scratch table). Small sizes: this
proves the benchmark works, the numbers in docs/benchmarks.md come from full-size runs."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from django.db import connection

from mes.models import Site, Station
from telemetry.bench import _ack_sequence
from tests.support import REPO, process_environment

KEYS = {
    "raw_copy_rows_per_s",
    "raw_consume_msgs_per_s",
    "batched_samples_per_s",
    "batched_ratio_vs_raw_copy",
    "single_msgs_per_s",
    "latency_rate_samples_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "published",
    "stored",
    "duplicates",
    "dead_lettered",
}


def bench(*arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "bench_ingest", *arguments],
        cwd=REPO,
        env=process_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scratch_tables() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'bench_sample_%'")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_small_run_reports_every_key_with_exact_accounting_and_cleans_up():
    stations_before = Station.objects.count()
    done = bench(
        "--json",
        "--stations=3",
        "--batched-samples=6000",
        "--single-messages=1500",
        "--latency-rate=3000",
        "--latency-seconds=3",
        "--latency-samples-per-message=10",
        "--workers=1,2",
        "--sync-intervals=always,2m",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = orjson.loads(done.stdout)

    assert result.keys() >= KEYS
    assert set(result["by_sync_interval"]) == {"always", "2m"}
    assert result["nats_sync_interval"] == "always"
    # Two worker counts per form: each sample published is drained twice, into an emptied table.
    assert result["published"] == 2 * (6000 + 1500)
    assert result["stored"] == result["published"]
    assert result["duplicates"] == 0
    assert result["dead_lettered"] == 0
    assert result["misattributed"] == 0
    for key in ("raw_copy_rows_per_s", "batched_samples_per_s", "single_msgs_per_s"):
        assert result[key] > 0, key
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"]
    assert result["latency_rate_samples_per_s"] > 2000
    assert result["worker_rss_mb_end"] > 10
    assert "raw COPY floor" in done.stderr  # progress goes to stderr, the JSON alone to stdout

    assert Station.objects.count() == stations_before
    assert not Site.objects.filter(code__startswith="bench-").exists()
    assert scratch_tables() == []


@pytest.mark.django_db
def test_without_json_it_prints_a_table_against_the_targets(capsys):
    done = bench(
        "--stations=2",
        "--batched-samples=2000",
        "--single-messages=400",
        "--latency-rate=1000",
        "--latency-seconds=2",
        "--latency-samples-per-message=10",
        "--workers=1",
        "--sync-intervals=2m",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "NATS sync_interval 2m (headline)" in done.stdout
    assert "target ≥ 100,000 samples/s:" in done.stdout
    assert "latency_p99_ms" in done.stdout


def test_sizes_that_cannot_run_are_refused_before_anything_starts():
    done = bench("--stations=0", timeout=60)
    assert done.returncode != 0
    assert "--stations must be 1-500" in done.stderr
    done = bench("--workers=1,x", timeout=60)
    assert done.returncode != 0
    assert "expected numbers separated by commas" in done.stderr


def test_help_names_what_is_measured():
    done = bench("--help", timeout=60)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # argparse wraps the help
    for words in ("raw COPY floor", "--latency-seconds", "--sync-intervals", "docs/benchmarks.md"):
        assert words in text
    assert "--serve-worker" not in done.stdout


def test_ack_subjects_give_the_stream_sequence_in_both_formats():
    assert _ack_sequence("$JS.ACK.TELEMETRY.ingest.1.4711.12.1732265000000000000.3") == 4711
    assert (
        _ack_sequence("$JS.ACK.hub.ACCHASH.TELEMETRY.ingest.2.815.9.1732265000000000000.0.r1")
        == 815
    )
    assert _ack_sequence("$JS.ACK.TELEMETRY") is None
