"""Shared helpers for the telemetry tests: the JetStream topology, publishing, dead letters,
and the ingest worker run in a thread or as a real `manage.py ingest` process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import orjson
import pytest
from nats.js import api

from aegis import jetstream
from telemetry.ingest import CONSUMER, DEAD_LETTER_STREAM, TELEMETRY_STREAM, IngestWorker
from tests.support import REPO, ServedInThread, process_environment, stop


def run(coroutine):
    return asyncio.run(coroutine)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


# -- the topology ---------------------------------------------------------------------------


async def reset_telemetry_streams(
    *, ack_wait_s: float | None = None, consumers: tuple[str, ...] = (CONSUMER,)
) -> None:
    """Provisioned topology, TELEMETRY and DEAD_LETTERS empty, fresh `consumers` (`ingest`;
    optionally with a short ack_wait, so a killed worker's messages come back quickly)."""
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        js = client.jetstream()
        await jetstream.provision(js, replicas=1)
        await js.purge_stream(TELEMETRY_STREAM)
        await js.purge_stream(DEAD_LETTER_STREAM)
        for durable in consumers:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(TELEMETRY_STREAM, durable)
            (spec,) = [s for s in jetstream.consumers() if s.durable == durable]
            config = spec.config(replicas=1)
            if ack_wait_s is not None:
                config.ack_wait = ack_wait_s
            await js.add_consumer(TELEMETRY_STREAM, config)
    finally:
        await client.close()


@pytest.fixture
def telemetry_streams() -> Iterator[None]:
    run(reset_telemetry_streams())
    yield
    run(reset_telemetry_streams())  # the next test (or nats_setup) finds the usual consumer


async def _consumer_info() -> api.ConsumerInfo:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        return await client.jetstream().consumer_info(TELEMETRY_STREAM, CONSUMER)
    finally:
        await client.close()


def consumer_info() -> api.ConsumerInfo:
    return run(_consumer_info())


# -- messages -------------------------------------------------------------------------------


@dataclass
class Published:
    subject: str
    body: bytes
    msg_id: str | None = None


def single(station: str, ts: int, seq: int = 0, **signals: float) -> bytes:
    return orjson.dumps({"station_id": station, "timestamp": ts, "seq": seq, **signals})


def batch_body(station: str, first_ts: int, samples: int, signals: int = 4) -> bytes:
    names = ["torque", "angle", "speed", "temperature", "current", "voltage"][:signals]
    return orjson.dumps(
        {
            "station_id": station,
            "samples": [
                {
                    "ts": first_ts + n,
                    "seq": 0,
                    "signals": {name: 40.0 + n % 7 + i for i, name in enumerate(names)},
                }
                for n in range(samples)
            ],
        }
    )


async def publish_all(messages: list[Published], *, window: int = 1000) -> None:
    """Publish with JetStream acks, `window` at a time (core publishes into a stream are
    dropped under load)."""
    client = await jetstream.connect("test-publisher", allow_reconnect=False)
    try:
        js = client.jetstream(timeout=20)
        for start in range(0, len(messages), window):
            await asyncio.gather(
                *(
                    js.publish(
                        m.subject,
                        m.body,
                        headers={"Nats-Msg-Id": m.msg_id} if m.msg_id else None,
                    )
                    for m in messages[start : start + window]
                )
            )
    finally:
        await client.close()


def publish(messages: list[Published]) -> None:
    run(publish_all(messages))


class PacedPublisher:
    """Publishes messages at a steady rate from a thread, retrying each (same Nats-Msg-Id)
    until the stream acknowledges it: an edge that keeps sending through a NATS restart."""

    def __init__(self, messages: list[Published], *, per_second: float, chunk: int = 50) -> None:
        self.messages = messages
        self.per_second = per_second
        self.chunk = chunk
        self.acknowledged = 0
        self.retries = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            run(self._main())
        except BaseException as error:  # noqa: BLE001 - reported by join()
            self.error = error

    async def _main(self) -> None:
        async def quiet(_error: Exception) -> None:
            pass  # reconnecting during a restart is expected

        client = await jetstream.connect("test-edge", pending_size=0, error_cb=quiet)
        js = client.jetstream(timeout=2)
        started = time.monotonic()
        try:
            for start in range(0, len(self.messages), self.chunk):
                chunk = self.messages[start : start + self.chunk]
                while True:
                    outcomes = await asyncio.gather(
                        *(
                            js.publish(m.subject, m.body, headers={"Nats-Msg-Id": m.msg_id})
                            for m in chunk
                        ),
                        return_exceptions=True,
                    )
                    failed = [
                        m
                        for m, o in zip(chunk, outcomes, strict=True)
                        if isinstance(o, BaseException)
                    ]
                    self.acknowledged += len(chunk) - len(failed)
                    if not failed:
                        break
                    self.retries += 1
                    chunk = failed
                    await asyncio.sleep(0.2)
                due = started + (start + self.chunk) / self.per_second
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await client.close()

    def start(self) -> PacedPublisher:
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the publisher did not finish within {timeout} s"
        if self.error is not None:
            raise self.error


# -- dead letters ---------------------------------------------------------------------------


@dataclass
class DeadLetter:
    subject: str
    headers: dict[str, str]
    body: bytes


async def _dead_letters() -> list[DeadLetter]:
    client = await jetstream.connect("test", allow_reconnect=False)
    try:
        js = client.jetstream()
        info = await js.stream_info(DEAD_LETTER_STREAM)
        found = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            if not info.state.messages:
                break
            try:
                message = await js.get_msg(DEAD_LETTER_STREAM, sequence)
            except nats.js.errors.NotFoundError:
                continue
            found.append(DeadLetter(message.subject, dict(message.headers or {}), message.data))
        return found
    finally:
        await client.close()


def dead_letters() -> list[DeadLetter]:
    return run(_dead_letters())


# -- the worker ------------------------------------------------------------------------------


class RunningWorker(ServedInThread):
    """`IngestWorker.serve()` in a thread with its own event loop."""

    what = "worker"

    def __init__(self, **options) -> None:
        super().__init__(IngestWorker(**options))
        self.worker = self.service


class IngestProcess:
    """A real `manage.py ingest` against the test servers (or those `environment` names);
    its output goes to a file, read by `output()`."""

    def __init__(self, *arguments: str, **environment: str) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by __exit__
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "ingest", *arguments],
            cwd=REPO,
            env=process_environment(**environment),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def assert_running(self) -> None:
        assert self.process.poll() is None, f"ingest exited early:\n{self.output()}"

    def __enter__(self) -> IngestProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        stop(self.process)
        self.log.close()
