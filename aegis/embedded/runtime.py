"""Starting, sharing and stopping the embedded servers of one data directory.

Every process that needs them (`make run`'s launcher, a `manage.py` command in another
terminal, a test session) takes a *lease*: under an inter-process lock it starts whichever
server is not running, records the servers and its own pid in `run/services.json`, and exports
their URLs into its environment so that its children use them without leasing again. When the
last live lease is released, the servers are stopped. Leases of processes that died without
releasing are dropped the next time anyone takes the lock.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import fasteners
import psutil

from aegis.embedded.servers import (
    START_TIMEOUT_S,
    EmbeddedServerError,
    NatsServer,
    PostgresServer,
    RedisServer,
    RunningServer,
    free_port,
    port_accepts,
    process_alive,
    write_private,
)

# Environment variable that points each process at a service, by service name.
SERVICE_URL_VARIABLES = {
    "postgresql": "AEGIS_DATABASE_URL",
    "nats": "AEGIS_NATS_URL",
    "redis": "AEGIS_REDIS_URL",
}
# Start order; stop order is the reverse (PostgreSQL last, after everything writing to it).
SERVICE_ORDER = ("postgresql", "redis", "nats")


@dataclass
class EmbeddedServices:
    data_dir: Path
    nats_sync_interval: str = "always"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.run_dir = self.data_dir / "run"
        self.state_file = self.run_dir / "services.json"
        self.lock = fasteners.InterProcessLock(str(self.run_dir / "services.lock"))

    # -- public API -------------------------------------------------------------------------

    def acquire(self, names: Iterable[str], holder_pid: int | None = None) -> dict[str, str]:
        """Ensure the named servers run and lease them for `holder_pid`; returns name → URL."""
        holder_pid = holder_pid or os.getpid()
        wanted = [name for name in SERVICE_ORDER if name in set(names)]
        self._ensure_dirs()
        with self.lock:
            state = self._read_state()
            urls = {}
            for name in wanted:
                server = self._server(name)
                running = self._known(state, name)
                if running is None or not self._still_running(server, running):
                    running = self._start(server, running.port if running else None)
                    state["servers"][name] = {"pid": running.pid, "port": running.port}
                    self._write_state(state)
                urls[name] = running.url
            lease = state["leases"].setdefault(
                str(holder_pid), {"started": _started_at(holder_pid), "services": []}
            )
            lease["services"] = sorted(set(lease["services"]) | set(wanted))
            self._write_state(state)
            return urls

    def release(self, holder_pid: int | None = None, *, delete_data: bool = False) -> list[str]:
        """Drop `holder_pid`'s lease; stop servers no live lease needs; return their names."""
        holder_pid = holder_pid or os.getpid()
        if not self.state_file.exists():
            return []
        with self.lock:
            state = self._read_state()
            state["leases"].pop(str(holder_pid), None)
            needed = {name for lease in state["leases"].values() for name in lease["services"]}
            stopped = self._stop(state, [n for n in state["servers"] if n not in needed])
            self._write_state(state)
        if delete_data and not state["servers"]:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return stopped

    def stop_all(self) -> list[str]:
        """Stop every server of the data directory, leased or not (`-m aegis.embedded stop`)."""
        if not self.state_file.exists():
            return []
        with self.lock:
            state = self._read_state()
            stopped = self._stop(state, list(state["servers"]))
            state["leases"] = {}
            self._write_state(state)
        return stopped

    def status(self) -> dict[str, dict[str, object]]:
        if not self.state_file.exists():
            return {}
        with self.lock:
            state = self._read_state()
        report = {}
        for name in state["servers"]:
            running = self._known(state, name)
            report[name] = {
                "pid": running.pid,
                "port": running.port,
                "running": self._server(name).is_running(running),
                "leased_by": [
                    int(pid) for pid, lease in state["leases"].items() if name in lease["services"]
                ],
            }
        return report

    def secrets(self) -> dict[str, str]:
        """Passwords generated on first start and kept (0600) in the data directory."""
        path = self.data_dir / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        if (self.data_dir / "postgres" / "PG_VERSION").exists():
            raise EmbeddedServerError(
                f"{path} is missing but {self.data_dir / 'postgres'} holds a database whose "
                "password was in it: restore the file, or delete the data directory "
                "(make clean-data) to start from scratch"
            )
        values = {name: secrets.token_urlsafe(24) for name in SERVICE_ORDER}
        write_private(path, json.dumps(values, indent=2))
        return values

    # -- internals --------------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Owner only; as root, PostgreSQL runs as another user that must traverse (not list) it.
        self.data_dir.chmod(0o711 if os.geteuid() == 0 else 0o700)

    def _server(self, name: str):
        password = self.secrets()[name]
        if name == "postgresql":
            return PostgresServer(self.data_dir, password)
        if name == "nats":
            return NatsServer(self.data_dir, password, self.nats_sync_interval)
        if name == "redis":
            return RedisServer(self.data_dir, password)
        raise EmbeddedServerError(f"unknown embedded service {name!r}")

    def _known(self, state: dict, name: str) -> RunningServer | None:
        known = state["servers"].get(name)
        if known is None:
            return None
        server = self._server(name)
        return RunningServer(name, known["pid"], known["port"], server.url(known["port"]))

    @staticmethod
    def _still_running(server, running: RunningServer) -> bool:
        """True when it serves. A live process that does not answer yet is waited for, never
        replaced: a second server on the same files would corrupt them."""
        if server.is_running(running):
            return True
        if not process_alive(running.pid, server.process_name):
            return False
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.is_running(running):
                return True
            time.sleep(0.1)
        raise EmbeddedServerError(
            f"{server.name} (pid {running.pid}) runs but does not answer on port {running.port}; "
            "stop it (python -m aegis.embedded stop) and try again"
        )

    @staticmethod
    def _start(server, previous_port: int | None) -> RunningServer:
        """Start on the previous port if free; retry on another if something took it meanwhile."""
        port = free_port(previous_port)
        attempts_left = 3
        while True:
            try:
                return server.start(port)
            except EmbeddedServerError:
                attempts_left -= 1
                if not attempts_left or not port_accepts(port):
                    raise
                port = free_port()  # another process took the port between probe and start

    def _read_state(self) -> dict:
        state = {"servers": {}, "leases": {}}
        if self.state_file.exists():
            state.update(json.loads(self.state_file.read_text()))
        state["leases"] = {
            pid: lease
            for pid, lease in state["leases"].items()
            if _started_at(int(pid)) == lease["started"]  # the pid may have been reused
        }
        return state

    def _write_state(self, state: dict) -> None:
        temporary = self.state_file.with_suffix(".tmp")
        write_private(temporary, json.dumps(state, indent=2))
        temporary.replace(self.state_file)

    def _stop(self, state: dict, names: list[str]) -> list[str]:
        stopped = []
        for name in reversed(SERVICE_ORDER):
            if name in names and name in state["servers"]:
                self._server(name).stop(self._known(state, name))
                del state["servers"][name]
                stopped.append(name)
        return stopped


def product_processes(data_dir: Path) -> list[psutil.Process]:
    """Aegis processes (web, workers) started by a launcher for `data_dir`, found by the
    AEGIS_DATA_DIR it exports to them: what a launcher killed with SIGKILL leaves behind."""
    wanted = str(Path(data_dir).expanduser().resolve())
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get("AEGIS_DATA_DIR") == wanted:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _started_at(pid: int) -> float | None:
    """When `pid` started, to tell a live lease holder from a new process that reused its pid."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def default_data_dir() -> Path:
    base_dir = Path(__file__).resolve().parent.parent.parent
    return Path(os.environ.get("AEGIS_DATA_DIR") or base_dir / "var")


def use_embedded_services(
    data_dir: Path, *, nats_sync_interval: str = "always", delete_on_exit: bool = False
) -> dict[str, str]:
    """Lease embedded servers for every service whose URL variable is unset, export their URLs.

    Called once per process by the development and test settings; a no-op for services that
    the environment already points at (including this process's children, which inherit URLs).
    """
    missing = [
        name for name, var in SERVICE_URL_VARIABLES.items() if not os.environ.get(var, "").strip()
    ]
    if not missing:
        return {}
    services = EmbeddedServices(data_dir, nats_sync_interval=nats_sync_interval)
    urls = services.acquire(missing)
    for name, url in urls.items():
        os.environ[SERVICE_URL_VARIABLES[name]] = url
    os.environ["AEGIS_EMBEDDED_DATA_DIR"] = str(services.data_dir)
    os.environ["AEGIS_EMBEDDED_SERVICES"] = ",".join(sorted(urls))
    owner = os.getpid()

    def release_on_exit() -> None:
        # Forked children (Celery's pool) inherit atexit hooks; only the lease holder releases.
        if os.getpid() == owner:
            services.release(owner, delete_data=delete_on_exit)

    atexit.register(release_on_exit)
    _exit_cleanly_on_termination()
    return urls


def _exit_cleanly_on_termination() -> None:
    """SIGTERM and SIGHUP (a closed terminal) raise SystemExit in the lease holder, so its exit
    hooks run and the servers it holds are released. Handlers set by others are kept."""
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum, frame):
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, leave)
