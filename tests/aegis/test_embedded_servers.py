"""The embedded servers are real: they start, serve, persist, are shared by lease, and stop."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nats
import psutil
import psycopg
import pytest
import redis

from aegis.embedded import EmbeddedServerError, EmbeddedServices
from aegis.embedded.servers import port_accepts
from tests.support import REPO, environment_without_aegis

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir():
    path = Path(tempfile.mkdtemp(prefix="aegis-embedded-"))
    yield path
    EmbeddedServices(path).stop_all()
    shutil.rmtree(path, ignore_errors=True)


def _jetstream_roundtrip(url: str, publish: bytes | None) -> bytes:
    async def run() -> bytes:
        client = await nats.connect(url, allow_reconnect=False)
        js = client.jetstream()
        if publish is not None:
            await js.add_stream(name="PROBE", subjects=["probe.>"])
            await js.publish("probe.one", publish)
        message = await js.get_last_msg("PROBE", "probe.one")
        await client.close()
        return message.data

    return asyncio.run(run())


def _server_pids(services: EmbeddedServices) -> dict[str, int]:
    return {name: info["pid"] for name, info in services.status().items()}


def test_servers_start_serve_persist_and_stop(data_dir):
    services = EmbeddedServices(data_dir, nats_sync_interval="always")
    urls = services.acquire(["postgresql", "nats", "redis"])
    status = services.status()
    assert {name: info["running"] for name, info in status.items()} == {
        "postgresql": True,
        "nats": True,
        "redis": True,
    }
    assert all(url.startswith(("postgresql://", "nats://", "redis://")) for url in urls.values())

    with psycopg.connect(urls["postgresql"], autocommit=True) as connection:
        connection.execute("CREATE TABLE probe (value text)")
        connection.execute("INSERT INTO probe VALUES ('kept')")
    assert _jetstream_roundtrip(urls["nats"], b"kept") == b"kept"
    client = redis.Redis.from_url(urls["redis"])
    client.set("probe", "kept")
    client.save()  # the AOF is fsynced every second; SAVE makes the assertion deterministic
    client.close()

    pids = _server_pids(services)
    ports = {name: info["port"] for name, info in status.items()}
    assert services.release() == ["nats", "redis", "postgresql"]
    for name, pid in pids.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", name
        assert not port_accepts(ports[name]), name

    urls = services.acquire(["postgresql", "nats", "redis"])
    with psycopg.connect(urls["postgresql"]) as connection:
        assert connection.execute("SELECT value FROM probe").fetchall() == [("kept",)]
    assert _jetstream_roundtrip(urls["nats"], None) == b"kept"
    client = redis.Redis.from_url(urls["redis"])
    assert client.get("probe") == b"kept"
    client.close()
    services.release()


def test_servers_require_their_generated_passwords(data_dir):
    services = EmbeddedServices(data_dir)
    urls = services.acquire(["postgresql", "redis"])
    try:
        port = services.status()["postgresql"]["port"]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://postgres:wrong@127.0.0.1:{port}/aegis")
        redis_port = services.status()["redis"]["port"]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port, password="wrong").ping()
        assert oct((data_dir / "secrets.json").stat().st_mode & 0o777) == "0o600"
        assert urls["postgresql"].split("@")[0].endswith(services.secrets()["postgresql"])
    finally:
        services.release()


def test_servers_stay_up_while_another_process_holds_a_lease(data_dir):
    services = EmbeddedServices(data_dir)
    services.acquire(["redis"])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from aegis.embedded import EmbeddedServices;"
            f"EmbeddedServices({str(data_dir)!r}).acquire(['redis']);"
            "print('leased', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "leased"
        assert services.release() == []  # the other process still needs Redis
        assert services.status()["redis"]["running"]
        holder.kill()  # dies without releasing: its lease is stale from now on
        holder.wait()
        assert services.release() == ["redis"]
        assert services.status() == {}
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_taken_port_is_never_reused(data_dir):
    services = EmbeddedServices(data_dir)
    first = services.acquire(["redis"])
    port = services.status()["redis"]["port"]
    services.release()
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        second = services.acquire(["redis"])
        try:
            assert services.status()["redis"]["port"] != port
            assert redis.Redis.from_url(second["redis"]).ping()
        finally:
            services.release()
    assert first["redis"] != second["redis"]


def test_cli_reports_and_stops_servers(data_dir):
    services = EmbeddedServices(data_dir)
    services.acquire(["nats"])
    environment = {**os.environ, "AEGIS_DATA_DIR": str(data_dir)}
    status = subprocess.run(
        [sys.executable, "-m", "aegis.embedded", "status"],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    assert '"running": true' in status.stdout
    stopped = subprocess.run(
        [sys.executable, "-m", "aegis.embedded", "stop"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "stopped: nats"
    assert services.status() == {}


def _manage(data_dir: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=REPO,
        env=environment_without_aegis(AEGIS_DATA_DIR=str(data_dir)),
        capture_output=True,
        text=True,
        timeout=120,
    )


PRINT_DATABASE_PORT = (
    "from django.db import connection; connection.ensure_connection();"
    "print(connection.settings_dict['PORT'])"
)


def test_a_management_command_shares_running_servers_and_leaves_them_running(data_dir):
    services = EmbeddedServices(data_dir)
    services.acquire(["postgresql", "nats", "redis"])  # as `make run` holds them
    result = _manage(data_dir, PRINT_DATABASE_PORT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == services.status()["postgresql"]["port"]
    assert all(info["running"] for info in services.status().values())
    services.release()


def test_a_management_command_starts_missing_servers_and_stops_them_after(data_dir):
    result = _manage(data_dir, PRINT_DATABASE_PORT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) > 0
    assert EmbeddedServices(data_dir).status() == {}


@pytest.mark.parametrize("sync_interval", ["always", "2m", "250ms"])
def test_embedded_nats_configuration_is_valid_for_each_fsync_policy(tmp_path, sync_interval):
    from aegis.embedded.servers import NatsServer

    server = NatsServer(tmp_path, "pw", sync_interval)
    server.config_file.parent.mkdir(parents=True)
    server.config_file.write_text("\n".join(server.config_lines(4222)))
    result = subprocess.run(
        [str(server.binary()), "-t", "-c", str(server.config_file)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout + result.stderr


def test_a_malformed_fsync_policy_is_refused_naming_the_variable(tmp_path):
    from aegis.embedded import EmbeddedServerError
    from aegis.embedded.servers import NatsServer

    with pytest.raises(EmbeddedServerError, match="AEGIS_NATS_SYNC_INTERVAL"):
        NatsServer(tmp_path, "pw", "sometimes")


def test_secrets_stay_private_to_the_owner(data_dir):
    services = EmbeddedServices(data_dir)
    urls = services.acquire(["nats", "redis"])
    try:
        for path in (
            data_dir / "secrets.json",
            data_dir / "run" / "services.json",
            data_dir / "nats" / "nats.conf",
            data_dir / "redis" / "redis.conf",
        ):
            assert path.stat().st_mode & 0o077 == 0, path
        assert data_dir.stat().st_mode & 0o066 == 0  # nobody else may list or write it
        state = (data_dir / "run" / "services.json").read_text()
        for name, password in services.secrets().items():
            assert password not in state, name
        assert services.secrets()["redis"] in urls["redis"]
    finally:
        services.release()


def test_a_lost_password_file_is_reported_not_papered_over(data_dir):
    services = EmbeddedServices(data_dir)
    services.acquire(["postgresql"])
    services.release()
    (data_dir / "secrets.json").unlink()
    with pytest.raises(EmbeddedServerError, match=r"secrets.json is missing"):
        services.acquire(["postgresql"])
    assert services.status() == {}
    assert not any("postgres" in p.name() for p in _children_of_data_dir(data_dir))


def _children_of_data_dir(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(data_dir) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_a_lease_whose_pid_was_reused_does_not_keep_servers_running(data_dir):
    import json

    services = EmbeddedServices(data_dir)
    services.acquire(["redis"])
    state_file = data_dir / "run" / "services.json"
    state = json.loads(state_file.read_text())
    # pid 1 always exists, but it is not the process that took this lease.
    state["leases"]["1"] = {"started": 0.0, "services": ["redis"]}
    state_file.write_text(json.dumps(state))
    assert services.release() == ["redis"]
