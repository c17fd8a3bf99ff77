"""`manage.py run` (what `make run` starts) as a newcomer uses it: up, serving, then gone.

Runs the launcher with no service URLs set, so it starts its own embedded servers in a private
data directory, exactly as on a fresh laptop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from aegis.embedded.servers import free_port, port_accepts
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
