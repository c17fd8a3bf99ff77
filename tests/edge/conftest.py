"""Shared fixtures of the edge tests: a NATS server of the test's own that can be down, the
bridge as a real process (killable with -9), and its config file."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import nats.js.errors
import orjson
import pytest
import yaml

from aegis import jetstream
from aegis.embedded.servers import NatsServer, RunningServer, free_port
from tests.support import REPO, http_get

BRIDGE_SCRIPT = REPO / "tests" / "edge" / "bridge_process.py"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


class PrivateNats:
    """A nats-server on a port chosen up front, so a bridge can be configured for it while it
    is down; `start()` provisions the Aegis streams, its data survives `stop()`."""

    def __init__(self, data_dir: Path) -> None:
        self.password = secrets.token_urlsafe(12)
        self.server = NatsServer(data_dir, password=self.password)
        self.port = free_port()
        self.url = self.server.url(self.port)
        self.user = NatsServer.user
        self.running: RunningServer | None = None

    def start(self) -> None:
        self.running = self.server.start(self.port)
        asyncio.run(self._provision())

    def stop(self) -> None:
        if self.running is not None and self.server.is_running(self.running):
            self.server.stop(self.running)
        self.running = None

    async def _provision(self) -> None:
        client = await nats.connect(self.url)
        try:
            await jetstream.provision(client.jetstream(), replicas=1)
        finally:
            await client.close()

    def telemetry(self) -> list[tuple[str, dict, dict]]:
        """(subject, headers, decoded body) of every message in TELEMETRY, in stream order."""
        return asyncio.run(self._telemetry())

    async def _telemetry(self) -> list[tuple[str, dict, dict]]:
        client = await nats.connect(self.url)
        try:
            js = client.jetstream()
            state = (await js.stream_info("TELEMETRY")).state
            found = []
            for sequence in range(state.first_seq, state.last_seq + 1):
                if not state.messages:
                    break
                try:
                    message = await js.get_msg("TELEMETRY", sequence)
                except nats.js.errors.NotFoundError:
                    continue
                found.append(
                    (message.subject, dict(message.headers or {}), orjson.loads(message.data))
                )
            return found
        finally:
            await client.close()

    def telemetry_samples(self) -> list[dict]:
        return [sample for _s, _h, body in self.telemetry() for sample in body["samples"]]


@pytest.fixture
def private_nats() -> Iterator[PrivateNats]:
    data_dir = Path(tempfile.mkdtemp(prefix="aegis-edge-nats-"))
    server = PrivateNats(data_dir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def write_config(path: Path, *, nats_url: str, buffer_dir: Path, **sections) -> Path:
    """An edge.yaml with test-sized defaults; `sections` replace or add top-level keys."""
    document = {
        "edge_id": "test-edge",
        "nats": {"url": nats_url, "connect_timeout_s": 1},
        "buffer": {
            "path": str(buffer_dir),
            "max_bytes": 64 << 20,
            "policy": "block",
            "fsync_every_ms": 20,
            "fsync_every_messages": 100,
            "segment_bytes": 1 << 20,
        },
        "publish": {"batch_max_samples": 100, "batch_max_ms": 20},
        "http": {"bind": "127.0.0.1", "port": free_port()},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    path.write_text(yaml.safe_dump(document))
    return path


class BridgeProcess:
    """The bridge as a real process: tests/edge/bridge_process.py with test counters, or
    the production command `manage.py edge_bridge` when `command` is set."""

    def __init__(
        self, config: Path, *counters: str, command: bool = False, **variables: str
    ) -> None:
        self.config = config
        self.port = yaml.safe_load(config.read_text())["http"]["port"]
        self.log_path = config.with_suffix(f".{secrets.token_hex(3)}.log")
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AEGIS_", "PROMETHEUS_")) and key != "DJANGO_SETTINGS_MODULE"
        }
        environment.update(PYTHONUNBUFFERED="1", AEGIS_LOG_FORMAT="console", AEGIS_LOG_LEVEL="info")
        environment.update(variables)
        if command:
            assert not counters, "the command runs only the config's sources"
            environment["DJANGO_SETTINGS_MODULE"] = "aegis.settings.edge"
            program = [sys.executable, "manage.py", "edge_bridge", "--config", str(config)]
        else:
            counter_arguments = [a for spec in counters for a in ("--counter", spec)]
            program = [sys.executable, str(BRIDGE_SCRIPT), "--config", str(config)]
            program += counter_arguments
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                program,
                cwd=REPO,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, 60, f"the bridge on port {self.port}\n{self.output()}")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"the bridge exited with {self.process.returncode}:\n{self.output()}"
            )
        try:
            http_get(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
        except OSError:
            return False
        return True

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> tuple[int, dict]:
        status, body = http_get(f"http://127.0.0.1:{self.port}/healthz")
        return status, orjson.loads(body)

    def metrics(self) -> dict[str, float]:
        """Every unlabelled sample of /metrics by name."""
        _status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


@pytest.fixture
def bridges() -> Iterator[Callable[..., BridgeProcess]]:
    """Start bridges with `bridges(config, *counters, command=False, **environment)`; every
    one is stopped afterwards."""
    started: list[BridgeProcess] = []

    def start(config: Path, *counters: str, command: bool = False, **variables: str):
        started.append(BridgeProcess(config, *counters, command=command, **variables))
        return started[-1]

    yield start
    for bridge in started:
        bridge.terminate()
