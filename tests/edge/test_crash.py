"""The issue's test of record: kill -9 the bridge while NATS is down and its buffer holds data,
start both again, and every sample is stored exactly once, in order per signal."""

from __future__ import annotations

import random
import secrets
import time

import pytest
from django.db import connection
from django.test import override_settings

from tests.edge.conftest import wait_until, write_config
from tests.factories import StationFactory
from tests.telemetry.conftest import RunningWorker

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def stored_rows(station) -> list[tuple[int, int, float]]:
    """(ts in epoch ms, seq, count signal) of the station's rows, in time order."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (extract(epoch FROM ts) * 1000)::bigint, seq, (signals->>'count')::float "
            "FROM telemetry_sample WHERE station_id = %s ORDER BY ts, seq",
            [station.id],
        )
        return cursor.fetchall()


def test_kill_9_while_nats_is_down_then_restart_stores_every_sample_once_in_order(
    tmp_path, private_nats, bridges
):
    station = StationFactory(code=f"edge-{secrets.token_hex(3)}")
    base = time.time_ns() // 1_000_000 - 600_000
    first, second = 3000, 2000
    config = write_config(
        tmp_path / "edge.yaml",
        nats_url=private_nats.url,
        buffer_dir=tmp_path / "buffer",
        buffer={"segment_bytes": 32 << 10},  # several segments
    )

    # NATS is down: the bridge buffers, then dies without a chance to flush or close.
    bridge = bridges(config, f"{station.code}:{base}:0:{first}:5000")
    wait_until(
        lambda: bridge.metric("aegis_edge_synced_samples_total") == first, 30, "first part synced"
    )
    bridge.kill()
    segments = sorted((tmp_path / "buffer").glob("segment-*.log"))
    assert len(segments) > 1
    # As if the kill had landed in the middle of the next write.
    with open(segments[-1], "ab") as tail:
        tail.write(b"\x40\x00\x00\x00\x12\x34\x56\x78partial record")

    # Started again, still without NATS: it finds the backlog and keeps buffering.
    bridge = bridges(config, f"{station.code}:{base}:{first}:{second}:5000")
    wait_until(
        lambda: bridge.metric("aegis_edge_synced_samples_total") == second, 30, "second part"
    )
    status, health = bridge.health()
    assert status == 503
    assert health["buffer"]["samples"] == first + second
    assert "edge.torn_tail_truncated" in bridge.output()

    # NATS and an ingest worker come back: the backlog drains into the table.
    private_nats.start()
    with override_settings(NATS_URL=private_nats.url), RunningWorker(batch_wait_ms=50):
        wait_until(
            lambda: len(stored_rows(station)) >= first + second,
            60,
            f"every sample stored\n{bridge.output()[-3000:]}",
        )
        time.sleep(0.5)  # a duplicate would arrive now, and be refused by the key
        rows = stored_rows(station)

    total = first + second
    assert [(ts, seq) for ts, seq, _count in rows] == [(base + n, 0) for n in range(total)]
    assert [count for _ts, _seq, count in rows] == [float(n) for n in range(total)]
    assert bridge.metric("aegis_edge_replayed_samples_total") == total
    assert bridge.metric("aegis_edge_published_samples_total") == total
    assert bridge.metric("aegis_edge_buffered_samples") == 0
    # Every message went to the stream once: the ids never repeated a record.
    messages = private_nats.telemetry()
    ids = [headers["Nats-Msg-Id"] for _s, headers, _b in messages]
    assert len(ids) == len(set(ids))
    assert sum(len(body["samples"]) for _s, _h, body in messages) == total


def test_a_kill_mid_write_loses_nothing_that_was_fsynced(tmp_path, private_nats, bridges):
    """Killed at a random moment while a fast source writes: what the bridge reported synced
    before the kill is still there after the restart, as a gap-free prefix."""
    base = time.time_ns() // 1_000_000 - 600_000
    station = "edge-kill"
    config = write_config(
        tmp_path / "edge.yaml",
        nats_url=private_nats.url,
        buffer_dir=tmp_path / "buffer",
        buffer={"segment_bytes": 256 << 10},
    )
    bridge = bridges(config, f"{station}:{base}:0:5000000:0")  # as fast as it goes
    wait_until(lambda: bridge.metric("aegis_edge_synced_samples_total") > 0, 30, "writing")
    time.sleep(random.uniform(0.2, 1.0))
    synced_before = bridge.metric("aegis_edge_synced_samples_total")
    bridge.kill()
    assert synced_before < 5_000_000  # killed while the source was still writing

    restarted = bridges(config)  # no source: only the backlog
    buffered = restarted.health()[1]["buffer"]["samples"]
    assert buffered >= synced_before
    private_nats.start()
    drain_s = wait_until(
        lambda: restarted.metric("aegis_edge_published_samples_total") >= buffered, 60, "drained"
    )
    counts = sorted(int(s["signals"]["count"]) for s in private_nats.telemetry_samples())
    assert counts == list(range(buffered))
    print(
        f"synced before the kill {synced_before:.0f}, found after it {buffered}, "
        f"replayed to JetStream in {drain_s:.1f} s"
    )
