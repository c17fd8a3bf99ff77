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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import fasteners
import psutil

from aegis.embedded.servers import (
    EmbeddedServerError,
    NatsServer,
    PostgresServer,
    RedisServer,
    RunningServer,
    free_port,
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
            for name in wanted:
                known = state["servers"].get(name)
                server = self._server(name)
                running = RunningServer(**known) if known else None
                if running and server.is_running(running):
                    continue
                port = free_port(running.port if running else None)
                state["servers"][name] = server.start(port).as_dict()
                self._write_state(state)
            leases = state["leases"]
            leases[str(holder_pid)] = sorted(set(leases.get(str(holder_pid), [])) | set(wanted))
            self._write_state(state)
            return {name: state["servers"][name]["url"] for name in wanted}

    def release(self, holder_pid: int | None = None, *, delete_data: bool = False) -> list[str]:
        """Drop `holder_pid`'s lease; stop servers no live lease needs; return their names."""
        holder_pid = holder_pid or os.getpid()
        if not self.state_file.exists():
            return []
        with self.lock:
            state = self._read_state()
            state["leases"].pop(str(holder_pid), None)
            needed = {name for names in state["leases"].values() for name in names}
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
        for name, known in state["servers"].items():
            running = RunningServer(**known)
            report[name] = {
                "pid": running.pid,
                "port": running.port,
                "running": self._server(name).is_running(running),
                "leased_by": [int(p) for p, names in state["leases"].items() if name in names],
            }
        return report

    # -- internals --------------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o755)

    def secrets(self) -> dict[str, str]:
        """Passwords generated on first start and kept (0600) in the data directory."""
        path = self.data_dir / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        values = {name: secrets.token_urlsafe(24) for name in SERVICE_ORDER}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(values, indent=2))
        return values

    def _server(self, name: str):
        password = self.secrets()[name]
        if name == "postgresql":
            return PostgresServer(self.data_dir, password)
        if name == "nats":
            return NatsServer(self.data_dir, password, self.nats_sync_interval)
        if name == "redis":
            return RedisServer(self.data_dir, password)
        raise EmbeddedServerError(f"unknown embedded service {name!r}")

    def _read_state(self) -> dict:
        state = {"servers": {}, "leases": {}}
        if self.state_file.exists():
            state.update(json.loads(self.state_file.read_text()))
        state["leases"] = {
            pid: names for pid, names in state["leases"].items() if psutil.pid_exists(int(pid))
        }
        return state

    def _write_state(self, state: dict) -> None:
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(self.state_file)

    def _stop(self, state: dict, names: list[str]) -> list[str]:
        stopped = []
        for name in reversed(SERVICE_ORDER):
            if name in names and name in state["servers"]:
                self._server(name).stop(RunningServer(**state["servers"].pop(name)))
                stopped.append(name)
        return stopped


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
    missing = [name for name, var in SERVICE_URL_VARIABLES.items() if not os.environ.get(var)]
    if not missing:
        return {}
    services = EmbeddedServices(data_dir, nats_sync_interval=nats_sync_interval)
    urls = services.acquire(missing)
    for name, url in urls.items():
        os.environ[SERVICE_URL_VARIABLES[name]] = url
    os.environ["AEGIS_EMBEDDED_DATA_DIR"] = str(services.data_dir)
    owner = os.getpid()

    def release_on_exit() -> None:
        # Forked children (Celery's pool) inherit atexit hooks; only the lease holder releases.
        if os.getpid() == owner:
            services.release(owner, delete_data=delete_on_exit)

    atexit.register(release_on_exit)
    return urls
