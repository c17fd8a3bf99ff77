"""`make run`: everything Aegis needs, in order, then every process of the product under honcho."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import fasteners
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from honcho.environ import parse_procfile
from honcho.manager import Manager

from aegis.health import check_dependencies


class Command(BaseCommand):
    help = (
        "Run the whole product: check PostgreSQL, NATS and Redis (embedded servers are started "
        "by the settings when their URLs are unset), migrate, provision JetStream, create the "
        "demo plant and users, then start every process in the Procfile (daphne, Celery worker "
        "and beat, stream workers) under honcho. Ctrl-C or SIGTERM stops the processes, then "
        "the embedded servers. AEGIS_PORT (default 8000) and AEGIS_BIND (default 127.0.0.1) "
        "choose where the web server listens. The plant simulator (Procfile process "
        "`simulator`, AEGIS_SIMULATOR_RATE_HZ samples per second per station) runs only with the "
        "demo plant: it records simulated units in the MES. With it, demo stations without a "
        "production Foresight model get one while the processes start (manage.py "
        "foresight_demo_models)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--demo",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=(
                "create the demo plant and demo users (default: only when the database is the "
                "embedded one, never on a database this command did not start)"
            ),
        )
        parser.add_argument(
            "--procfile",
            default=str(settings.BASE_DIR / "Procfile"),
            help="Procfile to run (default: the repository's)",
        )
        parser.add_argument(
            "--only",
            default="",
            help="comma-separated Procfile process names to run (default: all of them, the "
            "simulator only with the demo plant)",
        )
        parser.add_argument(
            "--simulator",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=(
                "run the plant simulator, which publishes telemetry and records simulated units, "
                "visits and work orders in the MES (default: only with the demo plant, never "
                "on another database unless asked)"
            ),
        )

    def step(self, text: str) -> float:
        self.stdout.write(self.style.MIGRATE_HEADING(f"==> {text}"))
        return time.monotonic()

    def done(self, started: float) -> None:
        self.stdout.write(f"    done in {time.monotonic() - started:.1f} s")

    def handle(
        self,
        *args,
        demo: bool | None,
        procfile: str,
        only: str,
        simulator: bool | None,
        **options,
    ):
        bind = os.environ.get("AEGIS_BIND", "127.0.0.1")
        port = _port_from_environment()
        launcher_lock = fasteners.InterProcessLock(str(settings.DATA_DIR / "run" / "launcher.lock"))
        if not launcher_lock.acquire(blocking=False):
            raise CommandError(
                f"another `make run` is using {settings.DATA_DIR}; stop it first, or give this "
                "one its own AEGIS_DATA_DIR"
            )
        _require_free_port(bind, port)
        if demo is None:
            demo = "postgresql" in os.environ.get("AEGIS_EMBEDDED_SERVICES", "").split(",")

        started = self.step("checking PostgreSQL, NATS and Redis")
        statuses = check_dependencies()
        for name, status in statuses.items():
            self.stdout.write(f"    {name:<10} {'ok  ' if status.ok else 'DOWN'} {status.detail}")
        down = [status for status in statuses.values() if not status.ok]
        if down:
            raise CommandError(
                "cannot start: "
                + "; ".join(f"{status.name} is unreachable ({status.detail})" for status in down)
            )
        self.done(started)

        started = self.step("applying database migrations")
        call_command("migrate", interactive=False, verbosity=1)
        self.done(started)

        started = self.step("provisioning JetStream streams, consumers and KV buckets")
        call_command("nats_setup", stdout=self.stdout)
        self.done(started)

        if demo:
            started = self.step("creating the demo plant and demo users")
            call_command("seed_demo", stdout=self.stdout)
            self.done(started)

        environment = self._process_environment(bind, port)
        processes = parse_procfile(Path(procfile).read_text()).processes
        chosen = [name.strip() for name in only.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(processes))
        if unknown:
            raise CommandError(f"--only names processes not in {procfile}: {', '.join(unknown)}")
        wanted = processes_to_run(list(processes), only=chosen, demo=demo, simulator=simulator)

        wildcard = bind in ("0.0.0.0", "::")  # noqa: S104 - only to print a reachable URL
        url = f"http://{'127.0.0.1' if wildcard else bind}:{port}/"
        self.stdout.write(self.style.SUCCESS(f"\nAegis is starting on {url}"))
        self.stdout.write(
            "    sign in with a demo user above; /admin/ for administration, /readyz for health"
        )
        self.stdout.write(f"    processes: {', '.join(wanted)} (Ctrl-C stops everything)")
        left_out = sorted((DEMO_ONLY & set(processes)) - set(wanted))
        if left_out and not chosen and simulator is None:
            self.stdout.write(
                f"    left out: {', '.join(left_out)} (not the demo plant; --simulator runs it)"
            )
        self.stdout.write("")
        sys.stdout.flush()

        manager = Manager()
        for name in wanted:
            manager.add_process(name, processes[name], env=environment, cwd=str(settings.BASE_DIR))
        if demo_models_wanted(demo=demo, processes=wanted):
            train_demo_models_meanwhile(until=dt.datetime.now(dt.UTC), stdout=self.stdout)

        # honcho stops everything on SIGINT and SIGTERM; a closed terminal (SIGHUP) too.
        def hang_up(signum, frame) -> None:
            manager.returncode = 129
            manager.terminate()

        signal.signal(signal.SIGHUP, hang_up)
        manager.loop()
        # The embedded servers are released by the settings' exit hook, after the processes.
        if manager.returncode not in (0, None, *STOP_REQUESTED):
            raise CommandError(f"a process of the Procfile exited with {manager.returncode}")

    def _process_environment(self, bind: str, port: int) -> dict[str, str]:
        metrics_dir = settings.DATA_DIR / "run" / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # counters restart with the processes
        metrics_dir.mkdir(parents=True)
        environment = dict(os.environ)
        environment.update(
            {
                "AEGIS_BIND": bind,
                "AEGIS_PORT": str(port),
                "AEGIS_DATA_DIR": str(settings.DATA_DIR),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "PYTHONUNBUFFERED": "1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        return environment


# Procfile processes for the demo plant only: the simulator writes simulated units, visits and
# work orders into the MES, which must never happen to a plant's database unasked.
DEMO_ONLY = frozenset({"simulator"})


def processes_to_run(
    processes: list[str], *, only: list[str], demo: bool, simulator: bool | None
) -> list[str]:
    """The Procfile processes to start, in Procfile order: those `--only` names, else all of
    them but the demo-only ones when the demo plant is not in use; `--simulator` and
    `--no-simulator` add or drop the simulator either way."""
    wanted = set(only) if only else {name for name in processes if name not in DEMO_ONLY or demo}
    if simulator is not None:
        wanted = wanted | DEMO_ONLY if simulator else wanted - DEMO_ONLY
    return [name for name in processes if name in wanted]


def demo_models_wanted(*, demo: bool, processes: list[str]) -> bool:
    """Whether `make run` trains the demo stations' Foresight models: with the demo plant and
    its simulator, whose samples they are made for."""
    return demo and bool(DEMO_ONLY & set(processes))


def train_demo_models_meanwhile(*, until: dt.datetime, stdout) -> threading.Thread:
    """`foresight_demo_models` in a thread while the processes start (about a minute the first
    time, nothing afterwards), so it does not delay the web server; the scorer swaps each model
    in as it is promoted. Its simulated history ends at `until`, before the live simulator
    starts, so the two never interleave. A failure leaves the stations on their baseline."""
    output = _Prefixed(stdout, "demo-models")

    def train() -> None:
        try:
            call_command("foresight_demo_models", until=until.isoformat(), stdout=output)
        except Exception as error:  # noqa: BLE001 - the product runs on without demo models
            output.write(f"no demo models: {type(error).__name__}: {error}\n")
        finally:
            connections.close_all()

    thread = threading.Thread(target=train, name="foresight-demo-models", daemon=True)
    thread.start()
    return thread


class _Prefixed:
    """Lines written as honcho writes its processes' (`09:31:02 name | line`)."""

    def __init__(self, stdout, name: str) -> None:
        self.stdout = stdout
        self.name = name

    def write(self, text: str) -> None:
        for line in text.splitlines():
            self.stdout.write(f"{dt.datetime.now():%H:%M:%S} {self.name} | {line}\n")
        self.stdout.flush()

    def flush(self) -> None:
        self.stdout.flush()


def _port_from_environment() -> int:
    raw = os.environ.get("AEGIS_PORT", "8000")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise CommandError(f"AEGIS_PORT: expected a TCP port number, got {raw!r}")
    return int(raw)


def _require_free_port(bind: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError as error:
            raise CommandError(
                f"cannot listen on {bind}:{port} ({error.strerror}); is Aegis already running? "
                "Set AEGIS_PORT to use another port."
            ) from None


# honcho's return code when it was asked to stop (SIGINT, SIGTERM), not when a process died.
STOP_REQUESTED = (129, 130, 143)
