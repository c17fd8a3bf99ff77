"""Helpers for tests that run real Aegis processes (daphne, Celery, the launcher)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

from aegis.embedded.servers import free_port

REPO = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """URL of the database this test session uses (pytest-django's test_* database)."""
    database = connection.settings_dict
    return (
        f"postgresql://{quote(database['USER'])}:{quote(database['PASSWORD'], safe='')}"
        f"@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    )


def environment_without_aegis(**variables: str) -> dict[str, str]:
    """This environment minus every Aegis setting, as on a fresh shell, plus `variables`."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AEGIS_", "PROMETHEUS_")) and key != "DJANGO_SETTINGS_MODULE"
    }
    environment.update(variables)
    return environment


def process_environment(**overrides: str) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        {
            "DJANGO_SETTINGS_MODULE": "aegis.settings.test",
            "AEGIS_DATABASE_URL": test_database_url(),
            "AEGIS_NATS_URL": settings.NATS_URL,
            "AEGIS_REDIS_URL": settings.REDIS_URL,
            "PYTHONUNBUFFERED": "1",
        }
    )
    environment.update(overrides)
    return environment


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args} exited with {process.returncode} before {url}")
        try:
            http_get(url, timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def readyz(base_url: str) -> tuple[int, dict]:
    status, body = http_get(f"{base_url}/readyz")
    return status, json.loads(body)


@contextmanager
def daphne(**environment: str) -> Iterator[str]:
    """A real daphne process serving Aegis on a free port; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--verbosity",
            "0",
            "aegis.asgi:application",
        ],
        cwd=REPO,
        env=process_environment(**environment),
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base_url}/healthz", process=process)
        yield base_url
    finally:
        stop(process)


def stop(process: subprocess.Popen, timeout: float = 20.0) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ServedInThread:
    """`service.serve(handle_signals=False)` in a thread with its own event loop, as its
    command runs it; `with` starts it, and stops it by `request_stop` (re-raising what it
    raised)."""

    what = "service"

    def __init__(self, service) -> None:
        self.service = service
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._running = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._running.set()
            await self.service.serve(handle_signals=False)

        try:
            asyncio.run(main())
        except BaseException as error:  # noqa: BLE001 - reported by __exit__
            self.error = error
            self._running.set()

    def __enter__(self):
        self.thread.start()
        assert self._running.wait(10)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.service.request_stop)
        self.thread.join(30)
        assert not self.thread.is_alive(), f"the {self.what} did not stop within 30 s"
        if self.error is not None:
            raise self.error
