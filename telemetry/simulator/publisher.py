"""Telemetry on the wire: payloads, message ids, and JetStream publishing with async acks.

Payload forms (subject `aegis.telemetry.raw.<station code>`, stream TELEMETRY):

- single sample, the original Aegis form (`--batch 1`)::

    {"station_id": "5", "timestamp": 1714234567890, "seq": 17, "torque": 121.3, "angle": 33.1, …}

- batch, one message carrying many samples of one station::

    {"station_id": "5", "samples": [{"ts": 1714234567890, "seq": 0,
                                     "signals": {"torque": 121.3, "angle": 33.1, …}}, …]}

`station_id` is the station's code (its subject token). Every message carries the header
`Nats-Msg-Id: <station>-<ts>-<seq>` of its (first) sample, so a message published again — a
retry after a lost ack, or a rerun with the same seed and start — is dropped by the stream's
duplicate window instead of stored twice.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from typing import NamedTuple

import nats.errors
import orjson
from nats.aio.client import Client

SUBJECT_PREFIX = "aegis.telemetry.raw"
SEQ_MASK = 0x7FFFFFFF  # the storage key's seq is a 32-bit integer


class Message(NamedTuple):
    subject: str
    payload: bytes
    msg_id: str
    samples: int


class StationStream:
    """Cuts one station's samples into messages of `batch` samples (1: the single form)."""

    __slots__ = ("batch", "code", "pending", "seq", "subject")

    def __init__(self, code: str, *, batch: int) -> None:
        self.code = code
        self.subject = f"{SUBJECT_PREFIX}.{code}"
        self.batch = batch
        self.seq = 0
        self.pending: list[dict] = []

    def add(self, ts: int, signals: dict[str, float]) -> Message | None:
        seq = self.seq
        self.seq = (seq + 1) & SEQ_MASK
        if self.batch == 1:
            payload = orjson.dumps(
                {"station_id": self.code, "timestamp": ts, "seq": seq, **signals}
            )
            return Message(self.subject, payload, f"{self.code}-{ts}-{seq}", 1)
        self.pending.append({"ts": ts, "seq": seq, "signals": signals})
        if len(self.pending) >= self.batch:
            return self.flush()
        return None

    def flush(self) -> Message | None:
        if not self.pending:
            return None
        samples, self.pending = self.pending, []
        first = samples[0]
        payload = orjson.dumps({"station_id": self.code, "samples": samples})
        return Message(
            self.subject, payload, f"{self.code}-{first['ts']}-{first['seq']}", len(samples)
        )


class TelemetryPublisher:
    """JetStream publishing with async acks: many messages in flight, each PubAck counted.

    A JetStream publish is a NATS request to the stream's subject; the stream answers on the
    reply subject with a PubAck (or an error). Each message here gets the reply subject
    `<inbox>.<n>` and one wildcard subscription on `<inbox>.*` gathers the acks, matching them
    by `n`. That is what nats-py's `publish_async` does with a future, a semaphore and a NUID
    per message; doing it with a counter and a dict measured twice as fast (docs/simulator.md).

    At most `max_pending` messages wait for their ack (`publish` waits for room: that is the
    back-pressure on the simulator). A message the stream could not take yet (no stream,
    NATS reconnecting) or whose ack does not arrive within `ack_timeout_s` is published again
    with the same `Nats-Msg-Id`; one the stream refuses is counted as refused.
    """

    def __init__(
        self,
        client: Client,
        *,
        max_pending: int = 4000,
        ack_timeout_s: float = 10.0,
        retry_wait_s: float = 0.5,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.client = client
        self.stop = stop
        self.ack_timeout_s = ack_timeout_s
        self.retry_wait_s = retry_wait_s
        self._window = asyncio.Semaphore(max_pending)
        self._tokens = itertools.count()
        self._in_flight: dict[str, tuple[Message, float]] = {}  # reply token → (message, sent)
        self._retry: deque[Message] = deque()
        self._inbox = ""
        self._subscription = None
        self._sweeper: asyncio.Task | None = None
        self.sent_messages = 0
        self.sent_samples = 0
        self.acked_messages = 0
        self.acked_samples = 0
        self.duplicates = 0
        self.retries = 0
        self.rejected = 0
        self.unsent = 0  # given up on while stopping with NATS away
        self.last_error = ""

    async def start(self) -> None:
        self._inbox = f"{self.client.new_inbox()}."
        self._subscription = await self.client.subscribe(f"{self._inbox}*", cb=self._acked)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Give up on acks that did not come, even while `publish` waits for room."""
        while True:
            await asyncio.sleep(min(1.0, self.ack_timeout_s / 4))
            self._expire()

    @property
    def outstanding(self) -> int:
        return len(self._in_flight) + len(self._retry)

    async def publish(self, message: Message) -> None:
        await self._send(message)
        self.sent_messages += 1
        self.sent_samples += message.samples

    async def _send(self, message: Message) -> None:
        await self._window.acquire()
        token = str(next(self._tokens))
        # Registered before the write: the ack may be read while `publish` is still flushing.
        self._in_flight[token] = (message, time.monotonic())
        while True:
            try:
                await self.client.publish(
                    message.subject,
                    message.payload,
                    reply=self._inbox + token,
                    headers={"Nats-Msg-Id": message.msg_id},
                )
                return
            except nats.errors.MaxPayloadError:
                self._in_flight.pop(token, None)
                self._window.release()
                self._refused(message, "larger than the server's max_payload")
                return
            except (nats.errors.Error, OSError) as error:
                # Not connected and the reconnect buffer is full: wait for NATS to come back,
                # unless the run is being stopped.
                self.last_error = f"{type(error).__name__}: {error}"
                if self.stop is not None and self.stop.is_set():
                    self._in_flight.pop(token, None)
                    self._window.release()
                    self.unsent += 1
                    return
                await asyncio.sleep(self.retry_wait_s)

    async def _acked(self, msg) -> None:
        entry = self._in_flight.pop(msg.subject[len(self._inbox) :], None)
        if entry is None:
            return  # the ack of a message already timed out and published again
        self._window.release()
        message = entry[0]
        data = msg.data
        if msg.headers and msg.headers.get("Status") == "503":
            self.last_error = "no stream takes aegis.telemetry.raw (run manage.py nats_setup)"
            self._retry.append(message)
        elif b'"error"' in data:
            error = orjson.loads(data).get("error", {})
            self.last_error = f"{message.msg_id}: {error.get('description', error)}"
            if error.get("code") == 503:
                self._retry.append(message)
            else:
                self._refused(message, str(error.get("description", error)))
        else:
            self.acked_messages += 1
            self.acked_samples += message.samples
            if b'"duplicate"' in data and orjson.loads(data).get("duplicate"):
                self.duplicates += 1

    def _refused(self, message: Message, why: str) -> None:
        self.rejected += 1
        self.last_error = f"{message.subject} {message.msg_id}: {why}"

    def _expire(self) -> None:
        deadline = time.monotonic() - self.ack_timeout_s
        expired = []
        for token, (_, sent) in self._in_flight.items():
            if sent > deadline:
                break  # in send order: the rest are younger
            expired.append(token)
        for token in expired:
            message, _ = self._in_flight.pop(token)
            self._window.release()
            self.last_error = f"no ack within {self.ack_timeout_s:g} s"
            self._retry.append(message)

    async def retry_failed(self) -> None:
        """Publish again what failed or timed out (after a pause, so an outage is not a spin)."""
        self._expire()
        if not self._retry:
            return
        await asyncio.sleep(self.retry_wait_s)
        while self._retry:
            self.retries += 1
            await self._send(self._retry.popleft())

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every message is acked (or refused); False when time ran out."""
        deadline = time.monotonic() + timeout_s
        while self.outstanding and time.monotonic() < deadline:
            await self.retry_failed()
            await asyncio.sleep(0.01)
        return not self.outstanding

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._subscription is not None:
            await self._subscription.unsubscribe()
