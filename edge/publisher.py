"""Publishing the buffer to JetStream, in record order, never advancing past an unacked one.

The publisher reads durable (fsynced) records from the acknowledged cursor on, sends up to
`window` of them at once (pipelined on one connection, so they reach the stream in order),
and moves the cursor over the acknowledged prefix. When a publish fails (NATS down, a timeout,
no stream), it waits for the others in flight, keeps the prefix that was acknowledged, backs
off and starts again from the cursor: records after a failed one may be sent twice, and
JetStream drops the repeat by its `Nats-Msg-Id` (the table key drops a later one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import nats
import nats.errors
import structlog
from nats.aio.client import Client

from aegis.backoff import Backoff
from edge import metrics
from edge.buffer import DiskBuffer, Record

logger = structlog.get_logger(__name__)


def message_id(edge_id: str, buffer_id: str, number: int) -> str:
    """Stable for a record: a replay after a reconnect or restart carries its first send's id.
    The buffer's random id keeps a re-created buffer from reusing the ids of an old one."""
    return f"{edge_id}-{buffer_id}-{number}"


class Publisher:
    def __init__(
        self,
        *,
        buffer: DiskBuffer,
        edge_id: str,
        url: str,
        connect_timeout_s: float,
        user: str | None = None,
        password: str | None = None,
        acknowledged: Callable[[int, int], None],
        window: int = 256,
        ack_timeout_s: float = 5.0,
    ) -> None:
        self.buffer = buffer
        self.edge_id = edge_id
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._credentials = {"user": user, "password": password} if user or password else {}
        self.acknowledged = acknowledged  # (records up to, samples acked) after each advance
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.client: Client | None = None
        self.records_available = asyncio.Event()
        # Records below this were buffered before this process started, or while NATS was
        # unreachable (until the reconnect): publishing them is a replay.
        self.backlog_end = buffer.next_number
        self.errors = 0
        self.last_error: str | None = None
        self._last_error_logged = -1e9

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    async def _on_disconnected(self) -> None:
        metrics.NATS_CONNECTED.set(0)
        logger.warning("edge.nats_disconnected")

    async def _on_reconnected(self) -> None:
        metrics.NATS_CONNECTED.set(1)
        self.backlog_end = self.buffer.next_number
        self.records_available.set()
        logger.info("edge.nats_reconnected")

    async def _on_error(self, error: Exception) -> None:
        self.errors += 1
        self.last_error = str(error) or type(error).__name__
        # nats-py retries inside connect() and after a disconnect, reporting every attempt
        # here: log at most one line in 30 s.
        now = time.monotonic()
        if now - self._last_error_logged >= 30.0:
            self._last_error_logged = now
            logger.warning("edge.nats_unavailable", error=self.last_error, errors=self.errors)

    async def _connect(self) -> Client:
        backoff = Backoff(initial_s=0.5, cap_s=10.0)
        errors_before = self.errors
        while True:
            try:
                client = await nats.connect(
                    self.url,
                    name=f"aegis-edge-{self.edge_id}",
                    connect_timeout=self.connect_timeout_s,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    # Fail a publish at once while disconnected rather than queue it: the
                    # buffer is the queue, and the cursor decides what is sent again.
                    pending_size=0,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                    **self._credentials,
                )
            except (TimeoutError, OSError, nats.errors.Error) as error:
                self.errors += 1
                self.last_error = str(error) or type(error).__name__
                delay = backoff.next()
                logger.info("edge.nats_unavailable", error=self.last_error, retry_in_s=delay)
                await asyncio.sleep(delay)
                continue
            metrics.NATS_CONNECTED.set(1)
            if self.errors > errors_before:  # nats-py also retries inside connect()
                # NATS was down at start: what was buffered meanwhile is a backlog too.
                self.backlog_end = self.buffer.next_number
            logger.info("edge.nats_connected")
            return client

    async def run(self) -> None:
        """Publish until cancelled."""
        self.client = await self._connect()
        js = self.client.jetstream(timeout=self.ack_timeout_s)
        backoff = Backoff(initial_s=0.2, cap_s=5.0)
        position = self.buffer.acked
        try:
            while True:
                position = max(position, self.buffer.acked)  # shedding moves the cursor on
                if position >= self.buffer.synced or not self.client.is_connected:
                    self.records_available.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.records_available.wait(), 1.0)
                    continue
                records = self.buffer.read(
                    position, self.buffer.synced, max_records=self.window, remember=True
                )
                if not records:
                    position = self.buffer.synced
                    continue
                acked_to, failure = await self._publish(js, records)
                if acked_to > position:
                    position = acked_to
                    backoff.reset()
                if failure is not None:
                    self.errors += 1
                    self.last_error = failure
                    metrics.PUBLISH_FAILURES.inc()
                    position = self.buffer.acked
                    delay = backoff.next()
                    logger.info("edge.publish_failed", error=failure, retry_in_s=delay)
                    await asyncio.sleep(delay)
        finally:
            metrics.NATS_CONNECTED.set(0)
            with contextlib.suppress(Exception):
                await self.client.close()

    async def _publish(self, js, records: list[Record]) -> tuple[int, str | None]:
        """Send `records` at once; advance the cursor over the acknowledged prefix. Returns the
        new cursor and the first failure, if any."""
        buffer_id = self.buffer.buffer_id
        latencies: list[float] = []

        async def send(record: Record) -> None:
            started = time.perf_counter()
            await js.publish(
                record.subject,
                record.body,
                headers={"Nats-Msg-Id": message_id(self.edge_id, buffer_id, record.number)},
            )
            latencies.append(time.perf_counter() - started)

        outcomes = await asyncio.gather(*(send(r) for r in records), return_exceptions=True)
        for latency in latencies:
            metrics.PUBLISH_LATENCY.observe(latency)
        acked: list[Record] = []
        failure = None
        for record, outcome in zip(records, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                failure = f"{type(outcome).__name__}: {outcome}".rstrip(": ")
                break
            acked.append(record)
        if not acked:
            return self.buffer.acked, failure
        end = acked[-1].number + 1
        samples = 0
        replayed = 0
        for record in acked:
            if record.number >= self.buffer.acked:  # not shed while in flight
                samples += record.samples
                if record.number < self.backlog_end:
                    replayed += record.samples
        await asyncio.to_thread(self.buffer.acknowledge, end)
        metrics.PUBLISHED.inc(samples)
        metrics.PUBLISHED_MESSAGES.inc(len(acked))
        if replayed:
            metrics.REPLAYED.inc(replayed)
        self.acknowledged(end, samples)
        return self.buffer.acked, failure
