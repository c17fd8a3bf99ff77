"""The bridge as a process against a real nats-server: batches, ids, health, full buffers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import yaml

from aegis.embedded.servers import free_port
from edge.config import EdgeConfigError, parse
from tests.edge.conftest import wait_until, write_config

STATION = "edge-st1"


def base_ts() -> int:
    return time.time_ns() // 1_000_000 - 600_000


def counts(samples: list[dict]) -> list[int]:
    return [int(sample["signals"]["count"]) for sample in samples]


# -- config ---------------------------------------------------------------------------------


def valid() -> dict:
    return {"edge_id": "press-shop-edge-1", "nats": {"url": "nats://aegis-nats:4222"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("edge_id"), "edge_id: expected"),
        (lambda d: d.update(edge_id="press shop"), "edge_id: expected"),
        (lambda d: d.update(buffer={"policy": "drop_newest"}), "buffer.policy: expected one of"),
        (lambda d: d.update(buffer={"max_bytes": -1}), "buffer.max_bytes: must be positive"),
        (lambda d: d.update(buffer={"fsync_every_ms": "50"}), "buffer.fsync_every_ms: expected"),
        (lambda d: d.update(buffer={"max_bytes": 1000}), "buffer.max_bytes: must be at least"),
        (lambda d: d.update(buffer={"fsync_every": 5}), "buffer.fsync_every: unknown key"),
        (lambda d: d.update(publish={"batch_max_samples": 20_000}), "publish.batch_max_samples"),
        (lambda d: d.update(nats={"url": "http://x"}), "nats.url: expected"),
        (lambda d: d.update(http={"port": 70_000}), "http.port: expected"),
        (lambda d: d.update(kafka=[]), ".kafka: unknown key"),
    ],
)
def test_a_wrong_config_is_refused_with_the_field_named(change, message):
    document = valid()
    change(document)
    with pytest.raises(EdgeConfigError, match=message.replace(".", r"\.")):
        parse(document)


def test_the_defaults_are_those_documented():
    config = parse(valid())
    assert config.buffer.policy == "block"
    assert config.buffer.max_bytes == 1 << 30
    assert (config.buffer.fsync_every_ms, config.buffer.fsync_every_messages) == (50, 500)
    assert (config.publish.batch_max_samples, config.publish.batch_max_ms) == (500, 100)
    assert config.http.port == 9108


def test_the_command_checks_a_config_without_a_database(tmp_path):
    import subprocess
    import sys

    from tests.support import REPO, environment_without_aegis

    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump({**valid(), "buffer": {"policy": "sometimes"}}))
    command = [sys.executable, "manage.py", "edge_bridge", "--config", str(config), "--check"]
    environment = environment_without_aegis(DJANGO_SETTINGS_MODULE="aegis.settings.edge")
    refused = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "buffer.policy: expected one of block, shed_oldest" in refused.stderr
    config.write_text(yaml.safe_dump(valid()))
    accepted = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    assert "valid; 0 sources" in accepted.stdout


# -- publishing -----------------------------------------------------------------------------


def test_samples_reach_the_stream_in_batches_with_ids_a_replay_would_repeat(
    tmp_path, private_nats, bridges
):
    private_nats.start()
    config = write_config(
        tmp_path / "edge.yaml", nats_url=private_nats.url, buffer_dir=tmp_path / "buffer"
    )
    bridge = bridges(config, f"{STATION}:{base_ts()}:0:1000:0")
    wait_until(
        lambda: bridge.metric("aegis_edge_published_samples_total") >= 1000, 30, "1000 published"
    )

    messages = private_nats.telemetry()
    assert {subject for subject, _h, _b in messages} == {f"aegis.telemetry.raw.{STATION}"}
    assert all(len(body["samples"]) <= 100 for _s, _h, body in messages)
    assert counts([s for _s, _h, b in messages for s in b["samples"]]) == list(range(1000))
    buffer_id = (tmp_path / "buffer" / "buffer.id").read_text().strip()
    assert [headers["Nats-Msg-Id"] for _s, headers, _b in messages] == [
        f"test-edge-{buffer_id}-{n}" for n in range(len(messages))
    ]
    status, health = bridge.health()
    assert status == 200, health
    assert health["nats_connected"] is True
    wait_until(lambda: bridge.metric("aegis_edge_buffered_samples") == 0, 5, "the buffer drained")
    assert bridge.metric("aegis_edge_replayed_samples_total") == 0  # nothing waited for NATS


def test_nats_credentials_come_from_the_environment_not_the_file(tmp_path, private_nats, bridges):
    private_nats.start()
    config = write_config(
        tmp_path / "edge.yaml",
        nats_url=f"nats://127.0.0.1:{private_nats.port}",
        buffer_dir=tmp_path / "buffer",
        nats={"username_env": "EDGE_TEST_NATS_USER", "password_env": "EDGE_TEST_NATS_PASSWORD"},
    )
    assert private_nats.password not in config.read_text()
    bridge = bridges(
        config,
        f"{STATION}:{base_ts()}:0:10:0",
        EDGE_TEST_NATS_USER=private_nats.user,
        EDGE_TEST_NATS_PASSWORD=private_nats.password,
    )
    wait_until(lambda: bridge.metric("aegis_edge_published_samples_total") == 10, 20, "sent")


def test_a_credential_variable_that_is_not_set_is_refused_by_name(monkeypatch):
    monkeypatch.delenv("EDGE_TEST_UNSET", raising=False)
    document = {**valid(), "nats": {"url": "nats://x:4222", "password_env": "EDGE_TEST_UNSET"}}
    with pytest.raises(EdgeConfigError, match=r"nats\.password_env: environment variable"):
        parse(document)


def test_health_says_503_and_why_while_nats_is_down(tmp_path, private_nats, bridges):
    config = write_config(
        tmp_path / "edge.yaml", nats_url=private_nats.url, buffer_dir=tmp_path / "buffer"
    )
    bridge = bridges(config, f"{STATION}:{base_ts()}:0:10:0")
    wait_until(lambda: bridge.health()[1]["buffer"]["samples"] == 10, 10, "10 samples buffered")
    status, health = bridge.health()
    assert status == 503
    assert health["problems"] == ["nats_disconnected"]
    assert health["sources"][f"counter:{STATION}"]["connected"] is True
    wait_until(lambda: bridge.health()[1]["buffer"]["oldest_age_s"] >= 0.5, 5, "the age grows")


def test_a_nats_restart_mid_stream_loses_and_repeats_nothing(tmp_path, private_nats, bridges):
    private_nats.start()
    config = write_config(
        tmp_path / "edge.yaml", nats_url=private_nats.url, buffer_dir=tmp_path / "buffer"
    )
    bridge = bridges(config, f"{STATION}:{base_ts()}:0:6000:2000")  # 3 s of samples
    wait_until(lambda: bridge.metric("aegis_edge_published_samples_total") > 500, 10, "flowing")
    private_nats.stop()
    wait_until(lambda: bridge.health()[0] == 503, 10, "the outage noticed")
    time.sleep(1.0)
    private_nats.start()
    wait_until(lambda: bridge.metric("aegis_edge_published_samples_total") == 6000, 60, "all sent")
    # Once each (the stream dropped what was sent again by its Nats-Msg-Id).
    assert sorted(counts(private_nats.telemetry_samples())) == list(range(6000))
    assert bridge.metric("aegis_edge_replayed_samples_total") > 0
    assert bridge.health()[0] == 200


# -- a full buffer --------------------------------------------------------------------------

TINY_BUFFER = {"max_bytes": 64 << 10, "segment_bytes": 16 << 10}
PRODUCED = 5000


def test_a_full_buffer_under_block_holds_the_source_back_and_loses_nothing(
    tmp_path, private_nats, bridges
):
    config = write_config(
        tmp_path / "edge.yaml",
        nats_url=private_nats.url,
        buffer_dir=tmp_path / "buffer",
        buffer={**TINY_BUFFER, "policy": "block"},
    )
    bridge = bridges(config, f"{STATION}:{base_ts()}:0:{PRODUCED}:0")
    wait_until(lambda: bridge.metric("aegis_edge_blocked_seconds_total") > 1.0, 30, "blocked 1 s")
    status, health = bridge.health()
    assert status == 503
    assert "buffer_full_blocking" in health["problems"]
    produced = health["sources"][f"counter:{STATION}"]["produced"]
    assert produced < PRODUCED  # the source waits: it could not hand over the rest
    assert health["buffer"]["bytes"] <= TINY_BUFFER["max_bytes"]
    assert bridge.metric("aegis_edge_shed_samples_total") == 0

    private_nats.start()
    wait_until(
        lambda: bridge.metric("aegis_edge_published_samples_total") >= PRODUCED, 60, "drained"
    )
    assert sorted(counts(private_nats.telemetry_samples())) == list(range(PRODUCED))
    assert bridge.metric("aegis_edge_replayed_samples_total") > 0
    assert bridge.health()[0] == 200


def test_a_full_buffer_under_shed_oldest_drops_the_oldest_and_counts_exactly_them(
    tmp_path, private_nats, bridges
):
    config = write_config(
        tmp_path / "edge.yaml",
        nats_url=private_nats.url,
        buffer_dir=tmp_path / "buffer",
        buffer={**TINY_BUFFER, "policy": "shed_oldest"},
    )
    bridge = bridges(config, f"{STATION}:{base_ts()}:0:{PRODUCED}:0")
    wait_until(
        lambda: bridge.health()[1]["sources"][f"counter:{STATION}"]["produced"] == PRODUCED,
        30,
        "the source never held back",
    )
    wait_until(lambda: bridge.metric("aegis_edge_synced_samples_total") > 0, 5, "synced")
    shed = bridge.metric("aegis_edge_shed_samples_total")
    assert shed > 0
    assert bridge.metric("aegis_edge_blocked_seconds_total") == 0

    private_nats.start()
    assert bridge.metric("aegis_edge_buffered_samples") == PRODUCED - shed
    wait_until(lambda: bridge.metric("aegis_edge_buffered_samples") == 0, 60, "drained")
    kept = counts(private_nats.telemetry_samples())
    assert len(kept) + shed == PRODUCED
    assert sorted(kept) == list(range(int(shed), PRODUCED))  # the newest are kept


def test_a_stopped_bridge_writes_the_batches_in_hand_and_publishes_them_after_a_restart(
    tmp_path, private_nats, bridges
):
    config = write_config(
        tmp_path / "edge.yaml",
        nats_url=private_nats.url,
        buffer_dir=tmp_path / "buffer",
        publish={"batch_max_samples": 10_000, "batch_max_ms": 600_000},  # batches stay open
    )
    bridge = bridges(config, f"{STATION}:{base_ts()}:0:1000:0")
    wait_until(
        lambda: bridge.health()[1]["sources"][f"counter:{STATION}"]["produced"] == 1000, 10, "read"
    )
    assert bridge.metric("aegis_edge_appended_samples_total") == 0
    assert bridge.terminate() == 0

    restarted = bridges(config)
    assert restarted.health()[1]["buffer"]["samples"] == 1000
    private_nats.start()
    wait_until(lambda: restarted.metric("aegis_edge_published_samples_total") == 1000, 30, "sent")
    assert counts(private_nats.telemetry_samples()) == list(range(1000))
    assert restarted.metric("aegis_edge_replayed_samples_total") == 1000


# -- the command with a real source ---------------------------------------------------------


class ModbusPlcInThread:
    """pymodbus's TCP server in a thread of its own, serving a counter in holding register 0
    that the test advances."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        from tests.edge.servers import modbus_device, modbus_server

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        device = modbus_device(holding=[0] * 4, input_registers=[0], coils=[0], discrete=[0])
        async with modbus_server(device, self.port) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ModbusPlcInThread:
        self.thread.start()
        assert self._ready.wait(10), "the Modbus server did not start"
        return self

    def __exit__(self, *exc_info) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def test_the_command_bridges_a_real_modbus_plc_into_the_stream(tmp_path, private_nats, bridges):
    private_nats.start()
    port = free_port()
    config = write_config(
        tmp_path / "edge.yaml",
        nats_url=private_nats.url,
        buffer_dir=tmp_path / "buffer",
        modbus=[
            {
                "host": "127.0.0.1",
                "port": port,
                "poll_groups": [
                    {
                        "station": "OP30",
                        "rate_hz": 50,
                        "registers": [{"signal": "strokes", "address": 0, "type": "uint16"}],
                    }
                ],
            }
        ],
    )
    with ModbusPlcInThread(port):
        bridge = bridges(config, command=True)
        wait_until(lambda: bridge.metric("aegis_edge_published_samples_total") >= 20, 30, "polls")
        status, health = bridge.health()
    assert status == 200, health
    samples = private_nats.telemetry_samples()
    assert {sample["seq"] for sample in samples} == {100_000}  # the group's slot
    assert {tuple(sample["signals"]) for sample in samples} == {("strokes",)}
    timestamps = [sample["ts"] for sample in samples]
    assert timestamps == sorted(timestamps)
    assert len(set(timestamps)) == len(timestamps)
