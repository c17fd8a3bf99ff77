"""`manage.py run` (what `make run` starts) as a newcomer uses it: up, serving, then gone.

Runs the launcher with no service URLs set, so it starts its own embedded servers in a private
data directory, exactly as on a fresh laptop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from aegis.embedded.servers import free_port, port_accepts
from aegis.management.commands.run import processes_to_run
from tests.support import REPO, environment_without_aegis, http_get, readyz, wait_for_http

pytestmark = pytest.mark.slow


def _launcher_environment(data_dir: Path, port: int) -> dict[str, str]:
    return environment_without_aegis(
        AEGIS_DATA_DIR=str(data_dir),
        AEGIS_PORT=str(port),
        AEGIS_NATS_SYNC_INTERVAL="2m",
        AEGIS_WORKER_CONCURRENCY="1",
    )


def _processes_of(data_dir: Path) -> list[psutil.Process]:
    """Every live process started for this data directory (by environment or command line)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            in_command = str(data_dir) in " ".join(process.info["cmdline"] or [])
            in_environment = process.environ().get("AEGIS_DATA_DIR") == str(data_dir)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if in_command or in_environment:
            found.append(process)
    return found


def _wait_gone(data_dir: Path, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _processes_of(data_dir)
        if not left:
            return []
        time.sleep(0.2)
    return _processes_of(data_dir)


def _start(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "run"],
        cwd=REPO,
        env=_launcher_environment(data_dir, port),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )


def _wait_ready(base_url: str, launcher: subprocess.Popen, log: Path) -> dict:
    wait_for_http(f"{base_url}/healthz", timeout=180, process=launcher)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = readyz(base_url)
        if status == 200:
            return body
        time.sleep(0.5)
    raise AssertionError(f"/readyz never became ready: {body}\n{log.read_text()[-3000:]}")


@pytest.fixture
def data_dir():
    path = Path(tempfile.mkdtemp(prefix="aegis-run-"))
    yield path
    for process in _processes_of(path):
        process.kill()
    subprocess.run([sys.executable, "-m", "aegis.embedded", "stop", "--data-dir", str(path)])
    shutil.rmtree(path, ignore_errors=True)


def _samples_stored(base_url: str) -> float:
    """Telemetry samples the ingest workers committed, as /metrics sums them."""
    found = re.search(
        r"^aegis_ingest_samples_stored_total (\S+)$",
        http_get(f"{base_url}/metrics")[1].decode(),
        re.M,
    )
    return float(found[1]) if found else 0.0


def _json(url: str, body: dict | None = None, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, headers)  # noqa: S310 - loopback HTTP
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback HTTP
        return json.loads(response.read())


def _api_get(base_url: str, path: str, data_dir: Path) -> dict:
    """GET an API path as the demo admin, with a token issued for the purpose."""
    (password,) = [
        user["password"]
        for user in json.loads((data_dir / "demo-credentials.json").read_text())
        if user["username"] == "admin"
    ]
    issued = _json(f"{base_url}/api/v1/auth/token", {"username": "admin", "password": password})
    return _json(f"{base_url}{path}", token=issued["token"])


def _wait_for_simulated_data(base_url: str, data_dir: Path, log: Path) -> None:
    """The simulator of the Procfile publishes telemetry that ingest stores, and records the
    units it moves in the MES."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and _samples_stored(base_url) == 0:
        time.sleep(1)
    assert _samples_stored(base_url) > 0, log.read_text()[-3000:]
    visits = _api_get(base_url, "/api/v1/station-visits/", data_dir)
    assert visits["count"] >= 12, visits  # a unit at every demo station from the start


def test_make_run_serves_stops_cleanly_and_keeps_its_data(data_dir):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = data_dir.parent / f"{data_dir.name}.log"

    launcher = _start(data_dir, port, log)
    started = time.monotonic()
    body = _wait_ready(base_url, launcher, log)
    startup_s = time.monotonic() - started
    assert body["down"] == []
    assert http_get(f"{base_url}/")[0] == 200
    assert http_get(f"{base_url}/admin/login/")[0] == 200
    assert f"Aegis is starting on {base_url}/" in log.read_text()
    credentials = (data_dir / "demo-credentials.json").read_text()
    print(f"first start: ready in {startup_s:.1f} s")
    assert startup_s < 180  # the budget for a fresh clone on 2 cores, install aside
    (processes,) = re.findall(r"processes: (.*) \(Ctrl-C", log.read_text())
    assert {"web", "ingest", "relay", "simulator"} <= set(processes.split(", "))
    _wait_for_simulated_data(base_url, data_dir, log)
    assert "simulating every station" in log.read_text()

    os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    assert launcher.wait(60) == 0, log.read_text()[-3000:]
    assert _wait_gone(data_dir, 10) == []
    assert not port_accepts(port)

    launcher = _start(data_dir, port, log)
    _wait_ready(base_url, launcher, log)
    assert (data_dir / "demo-credentials.json").read_text() == credentials
    assert "demo plant ready (nothing new created)" in log.read_text()

    launcher.send_signal(signal.SIGTERM)  # a service manager stopping the launcher alone
    assert launcher.wait(60) == 0, log.read_text()[-3000:]
    assert _wait_gone(data_dir, 10) == []
    assert not port_accepts(port)

    launcher = _start(data_dir, port, log)
    _wait_ready(base_url, launcher, log)
    launcher.send_signal(signal.SIGHUP)  # the terminal running it was closed
    assert launcher.wait(60) == 0, log.read_text()[-3000:]
    assert _wait_gone(data_dir, 10) == []
    log.unlink()


@pytest.mark.parametrize(
    ("only", "demo", "simulator", "expected"),
    [
        # The demo plant (embedded database, or --demo): everything, the simulator too.
        ([], True, None, ["web", "worker", "relay", "simulator"]),
        # A plant's own database: the simulator never writes into it unasked...
        ([], False, None, ["web", "worker", "relay"]),
        # ...but may when asked, by --simulator or by naming it.
        ([], False, True, ["web", "worker", "relay", "simulator"]),
        (["web", "simulator"], False, None, ["web", "simulator"]),
        # --no-simulator leaves it out of the demo, --only is exactly what it names.
        ([], True, False, ["web", "worker", "relay"]),
        (["worker", "web"], True, None, ["web", "worker"]),
        (["web"], True, True, ["web", "simulator"]),
    ],
)
def test_the_simulator_runs_only_with_the_demo_plant_unless_asked(only, demo, simulator, expected):
    procfile = ["web", "worker", "relay", "simulator"]
    assert processes_to_run(procfile, only=only, demo=demo, simulator=simulator) == expected


def test_stop_services_cleans_up_after_a_launcher_killed_with_sigkill(data_dir):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = data_dir.parent / f"{data_dir.name}.log"
    launcher = _start(data_dir, port, log)
    _wait_ready(base_url, launcher, log)
    second = subprocess.run(
        [sys.executable, "manage.py", "run"],
        cwd=REPO,
        env=_launcher_environment(data_dir, free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode != 0
    assert "another `make run` is using" in second.stderr

    os.killpg(launcher.pid, signal.SIGKILL)  # no chance to clean up anything
    launcher.wait()
    assert _processes_of(data_dir), "daphne, Celery and the servers outlive a SIGKILL"
    stopped = subprocess.run(
        [sys.executable, "-m", "aegis.embedded", "stop"],
        cwd=REPO,
        env=_launcher_environment(data_dir, port),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped: nats, redis, postgresql" in stopped.stdout
    assert _wait_gone(data_dir, 15) == []
    assert not port_accepts(port)
    log.unlink()


def test_a_malformed_url_fails_before_any_embedded_server_starts(data_dir):
    environment = _launcher_environment(data_dir, free_port())
    environment["AEGIS_REDIS_URL"] = "redis://:pw@/0"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "AEGIS_REDIS_URL: malformed URL: no host" in result.stderr
    assert not (data_dir / "postgres").exists()


def test_make_run_refuses_a_port_already_in_use(data_dir):
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "run"],
            cwd=REPO,
            env=_launcher_environment(data_dir, port),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert _wait_gone(data_dir, 10) == []


def test_make_run_names_an_unreachable_external_server(data_dir):
    environment = _launcher_environment(data_dir, free_port())
    environment["AEGIS_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "manage.py", "run"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "cannot start: nats is unreachable" in result.stderr
    assert _wait_gone(data_dir, 10) == []
