"""The telemetry ingest worker (`manage.py ingest`): JetStream → validate → join → COPY → ack.

Any number of workers share the durable pull consumer `ingest` on the TELEMETRY stream; each
pulls batches (up to `INGEST_BATCH_SIZE` messages, 500, or whatever arrived within
`INGEST_BATCH_WAIT_MS`, 250 ms; and whatever has arrived as soon as the writer is idle, so that a
quiet line is not held back by the batch timer), and for each batch:

1. decodes and validates every message (`telemetry.payloads`, orjson);
2. looks the station up and joins every sample with the MES state valid at the sample's own
   timestamp (`telemetry.enrichment.StateHistory`: a bisect per sample, no database);
3. writes all rows with one COPY (`telemetry.storage`), which commits;
4. only then acknowledges the messages. Poison messages are published to
   `aegis.deadletter.telemetry.<station or unknown>` with their reason (the stream acknowledges
   the publish) and then terminated, so they are never delivered again, while the good
   messages of the same batch are stored.

Delivery is at-least-once and the table's key (station_id, ts, seq) makes it exactly-once: a
message redelivered after a crash, a lost ack or an expired ack_wait is stored once. Acks are
therefore sent without waiting for the server's reply: a lost ack costs a redelivery, which the
idempotent write absorbs and counts as duplicates, while waiting would cost a round trip per
message.

Pipeline. Pulling and joining (this task's CPU) run while the previous batch's COPY is in
PostgreSQL (another process's CPU): a queue of QUEUE_DEPTH prepared batches sits between the
puller and the writer. A worker thus holds at most (QUEUE_DEPTH + 2) batches unacknowledged;
the consumer's max_ack_pending (20,000) caps all workers together and is the backpressure that
stops JetStream delivering when the database falls behind.

Pulling. A raw pull request (`$JS.API.CONSUMER.MSG.NEXT.TELEMETRY.ingest`, replies to an inbox
subscription) instead of nats-py's `fetch()`: on a 2-core VM draining 100k messages of 95 bytes,
`fetch(500)` moved 31-32k msgs/s and the raw request 106-114k msgs/s (both acking each message).
`fetch()` awaits one `next_msg()` per message, each a task plus a timeout.

Failures. A database outage (any psycopg error but refused data) retries the batch in hand with
exponential back-off, 0.5 s doubling to 10 s, for as long as it lasts, telling JetStream every
few seconds that the messages are in progress so that no other worker gets them meanwhile;
nothing is acknowledged or dead-lettered because of it. Rows the server refuses (a data error)
are isolated message by message and only those messages are dead-lettered
(`rejected_by_database`). NATS restarts are absorbed by the client's reconnection; a pull
request lost with the connection simply times out and is sent again.

MES state. The history is loaded from the database at start (in a thread: Django's ORM is
sync), then kept current from `aegis.mes.state.>` by an *ordered ephemeral consumer* on
MES_STATE starting MES_REPLAY_MARGIN before the load's snapshot. Every worker needs every
message, the in-memory history is rebuilt from the database at each start, and replaying a
message is harmless (`apply` is idempotent), so a durable position would only add server-side
state to clean up when workers are scaled down; the margin covers the clock difference between
PostgreSQL and NATS and the relay's publish latency. When `apply` reports intervals whose
attribution changed, the rows already stored there are re-attributed on the writer's own
connection (`telemetry.reattribution.reattribute_async`), after every batch joined with the
older state has committed, so a batch in flight can never overwrite a repair.

Stopping. SIGTERM, SIGINT or SIGHUP: stop pulling, store and acknowledge the batches in hand,
run the pending re-attributions, close. When the database is down at that moment the batches
in hand stay unacknowledged and JetStream redelivers them after ack_wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from bisect import bisect_right
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
import orjson
import psycopg
import structlog
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from aegis import jetstream
from aegis.backoff import Backoff
from aegis.stopping import StopsOnSignals
from telemetry import metrics
from telemetry.enrichment import StateHistory, default_since, ms_datetime
from telemetry.payloads import (
    REJECTED_BY_DATABASE,
    UNKNOWN_STATION,
    Message,
    Rejection,
    parse_message,
    subject_station,
    time_window,
)
from telemetry.reattribution import intervals_as_datetimes, reattribute_async
from telemetry.storage import (
    REFUSED,
    TABLE,
    CopyRows,
    SampleStore,
    WriteResult,
    database_parameters,
)

logger = structlog.get_logger(__name__)

TELEMETRY_STREAM = "TELEMETRY"
CONSUMER = "ingest"
DEAD_LETTER_STREAM = "DEAD_LETTERS"
DEAD_LETTER_PREFIX = "aegis.deadletter.telemetry"
DEFAULT_BATCH_SIZE = 500
DEFAULT_BATCH_WAIT_MS = 250
QUEUE_DEPTH = 2
# A pull request also ends at this many bytes: a batch of large messages stays bounded.
PULL_MAX_BYTES = 64 << 20
MES_REPLAY_MARGIN = dt.timedelta(minutes=2)
LAG_INTERVAL_S = 5.0
PUBLISH_TIMEOUT_S = 5.0
# The relay publishes a committed MES change within a second; `advance` stays behind that.
MES_SETTLE_MS = 2_000


def configured_batch_size() -> int:
    return int(getattr(settings, "INGEST_BATCH_SIZE", DEFAULT_BATCH_SIZE))


def configured_batch_wait_ms() -> int:
    return int(getattr(settings, "INGEST_BATCH_WAIT_MS", DEFAULT_BATCH_WAIT_MS))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip().rstrip(":")


def _header_text(text: str, limit: int = 1000) -> str:
    """Header values are one line of printable text."""
    return " ".join(text.split())[:limit]


# -- batches --------------------------------------------------------------------------------


@dataclass(eq=False)
class Batch:
    """Messages pulled together, joined and encoded, waiting to be stored and acknowledged."""

    accepted: list[Msg]  # acknowledged after the commit
    rows: CopyRows
    rejected: list[tuple[Msg, Rejection]]  # dead-lettered, then terminated
    received: int
    version: int  # the history version the rows were joined with
    in_progress_at: float = field(default_factory=time.monotonic)
    unresolved: list[tuple[Msg, Message]] = field(default_factory=list)

    def messages(self) -> list[Msg]:
        return [*self.accepted, *(msg for msg, _ in self.rejected)]


@dataclass
class IngestTotals:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    reattributed: int = 0
    seconds: float = 0.0

    def add(self, batch: Batch, result: WriteResult | None, dead_lettered: int) -> None:
        self.received += batch.received
        self.batches += 1
        self.dead_lettered += dead_lettered
        if result is not None:
            self.stored += result.stored
            self.duplicates += result.duplicates


@dataclass
class BatchReport:
    """What one batch did, for `manage.py ingest -v 2`."""

    messages: int
    samples: int
    stored: int
    duplicates: int
    dead_lettered: int
    commit_seconds: float
    idempotent: bool


@dataclass
class _Reattribution:
    version: int
    intervals: list[tuple[int, int, int | None]]


# -- pulling --------------------------------------------------------------------------------


class Puller:
    """Raw pull requests on the durable consumer, replies collected by one inbox subscription.

    `request` asks for up to `batch` messages, expiring after `wait_s`; `collect` returns what
    arrived once the request ended: the batch is full, the server says it ended (408 expired,
    404, 409), or, if that status never comes (the connection dropped), a second after the
    expiry. The worker sends the next request as soon as the last one ended, so the server
    delivers it while the last batch is being joined. Messages arriving late for an earlier
    request simply join the next batch.

    Cutting early: `collect(ready=...)` also returns what has arrived as soon as `ready()` says
    the writer is idle, leaving the request outstanding (later messages of it make the next
    batch). Under load the writer is busy and batches fill to `batch`; on a quiet line a sample
    waits for the writer's last commit instead of the request's expiry (group commit). The
    writer calls `wake` when it becomes idle.
    """

    def __init__(self, client: Client, *, stream: str, consumer: str) -> None:
        self.client = client
        self.request_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = client.new_inbox()
        self.arrived: list[Msg] = []
        self.wanted = 0
        self.delivered = 0  # messages of the current request
        self.status: tuple[str, str] | None = None
        self.outstanding = False
        self.ended = False
        self._deadline = 0.0
        # Set when the request ends, when the first message of a batch arrives, and by `wake`.
        self._changed = asyncio.Event()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.client.subscribe(
            self.inbox,
            cb=self._on_message,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=4 * PULL_MAX_BYTES,
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        if not msg.reply:
            # Server status for a pull request (JetStream messages carry a $JS.ACK reply).
            headers = msg.headers or {}
            status = headers.get("Status", "")
            if status == "100":
                return  # heartbeat
            self.status = (status, headers.get("Description", ""))
            self.ended = True
            self._changed.set()
            return
        self.arrived.append(msg)
        self.delivered += 1
        if self.delivered >= self.wanted:
            self.ended = True
            self._changed.set()
        elif len(self.arrived) == 1:
            self._changed.set()  # not for every message: that would wake `collect` 100k times/s

    async def request(self, batch: int, wait_s: float) -> None:
        self.wanted = batch
        self.delivered = 0
        self.status = None
        self.ended = False
        self._deadline = time.monotonic() + wait_s + 1.0
        request = {"batch": batch, "expires": int(wait_s * 1e9), "max_bytes": PULL_MAX_BYTES}
        await self.client.publish(self.request_subject, orjson.dumps(request), reply=self.inbox)
        self.outstanding = True

    def wake(self) -> None:
        """The writer became idle: a waiting `collect` looks again at what has arrived."""
        self._changed.set()

    async def collect(self, ready: Callable[[], bool] | None = None) -> list[Msg]:
        while self.outstanding and not self.ended:
            if self.arrived and ready is not None and ready():
                break  # cut early; the request goes on
            remaining = self._deadline - time.monotonic()
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, remaining))
            except TimeoutError:
                self.ended = True  # no status came: the connection dropped meanwhile
        if self.ended:
            self.outstanding = False
        taken, self.arrived = self.arrived, []
        return taken


# -- the worker -----------------------------------------------------------------------------


# What interrupts talking to PostgreSQL; the batch is retried.
_DATABASE_ERRORS = (psycopg.Error, OSError)
# The database is unreachable, restarting or shedding load (deadlocks and serialization
# failures are OperationalErrors too): worth retrying anything.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, OSError)
# What interrupts talking to NATS.
_NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)


class IngestWorker(StopsOnSignals):
    """Stores the TELEMETRY stream: `serve()` until stopped (the `ingest` process)."""

    stopping_event = "ingest.stopping"

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        batch_wait_ms: int | None = None,
        database: dict | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        progress: Callable[[BatchReport], None] | None = None,
        table: str = TABLE,  # `bench_ingest` writes into a scratch copy of telemetry_sample
    ) -> None:
        self.batch_size = batch_size or configured_batch_size()
        self.batch_wait_s = (batch_wait_ms or configured_batch_wait_ms()) / 1000
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.progress = progress
        self.store = SampleStore(database or database_parameters(), table=table)
        self.totals = IngestTotals()
        self.client: Client | None = None
        self.js: JetStreamContext | None = None
        self.history: StateHistory | None = None
        self.puller: Puller | None = None
        self.ack_wait_s = next(
            spec.ack_wait_s for spec in jetstream.consumers() if spec.durable == CONSUMER
        )
        # Django's ORM is sync: the history load and its database look-ups run in one thread,
        # which keeps one connection.
        self._orm = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-orm")
        self._mes_subscription = None
        self._writer: asyncio.Future | None = None
        self._queue: asyncio.Queue[Batch | None] | None = None
        self._held: set[Batch] = set()
        self._history_lock: asyncio.Lock | None = None
        self._history_version = 0
        self._reattributions: list[_Reattribution] = []
        self._work: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._closing = False
        self._idle = False  # the writer waits for a batch

    # -- entry points -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the batches in hand, then stop (signal handlers call this in the loop)."""
        if self._stop is not None:
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def serve(self, *, handle_signals: bool = True) -> IngestTotals:
        self._stop = self._stop or asyncio.Event()
        self._work = asyncio.Event()
        self._history_lock = asyncio.Lock()
        self._queue = asyncio.Queue(maxsize=QUEUE_DEPTH)
        started = time.monotonic()
        if handle_signals:
            self._handle_signals()
        housekeeping = None
        try:
            await self._connect_nats()
            if self.client is None:
                return self.totals  # stopped while connecting
            await self._load_history()
            if self.history is None:
                return self.totals  # stopped while the database was away
            await self._follow_mes_state()
            if self._mes_subscription is None:
                return self.totals  # stopped while NATS was away
            self.puller = Puller(self.client, stream=TELEMETRY_STREAM, consumer=CONSUMER)
            await self.puller.start()
            logger.info(
                "ingest.started",
                pid=os.getpid(),
                batch_size=self.batch_size,
                batch_wait_ms=round(self.batch_wait_s * 1000),
            )
            housekeeping = asyncio.ensure_future(self._housekeeping())
            self._writer = asyncio.ensure_future(self._write_loop())
            # The writer ends only after a stop; if it fails, pulling stops too.
            self._writer.add_done_callback(lambda _: self.request_stop())
            try:
                await self._pull_loop()
            finally:
                await self._enqueue(None)  # the writer stores what is queued, then ends
                await self._writer
        finally:
            if housekeeping is not None:
                housekeeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await housekeeping
            if handle_signals:
                self._release_signals()
            await self._close()
            self.totals.seconds = time.monotonic() - started
            logger.info(
                "ingest.stopped",
                received=self.totals.received,
                stored=self.totals.stored,
                duplicates=self.totals.duplicates,
                dead_lettered=self.totals.dead_lettered,
            )
        return self.totals

    # -- start ------------------------------------------------------------------------------

    async def _connect_nats(self) -> None:
        """Connect, retrying every second until NATS answers or a stop is requested; from then
        on the client reconnects by itself."""

        async def disconnected() -> None:
            if not self._closing:
                logger.warning("ingest.nats_disconnected")

        async def reconnected() -> None:
            logger.info("ingest.nats_reconnected")

        async def error(failure: Exception) -> None:
            logger.debug("ingest.nats_error", error=_describe(failure))

        connecting = asyncio.ensure_future(
            jetstream.connect(
                "ingest",
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
        )
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([connecting, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
        if connecting.cancelled():
            return
        self.client = connecting.result()
        self.js = self.client.jetstream(timeout=PUBLISH_TIMEOUT_S)

    async def _in_orm_thread(self, function: Callable, *args):
        def call():
            close_old_connections()  # a session broken by an outage is replaced
            return function(*args)

        return await asyncio.get_running_loop().run_in_executor(self._orm, call)

    async def _load_history(self) -> None:
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while not self.stopping:
            try:
                self.history = await self._in_orm_thread(
                    lambda: StateHistory.load(since=default_since())
                )
                return
            except DatabaseError as error:
                metrics.DATABASE_FAILURES.inc()
                logger.warning("ingest.history_unavailable", error=_describe(error))
                await self._pause(backoff.next())

    async def _follow_mes_state(self) -> None:
        """Every MES state change since the history's snapshot (minus a margin), in order."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=ms_datetime(self.history.loaded_ms) - MES_REPLAY_MARGIN,
        )
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while not self.stopping:
            try:
                self._mes_subscription = await self.js.subscribe(
                    f"{jetstream.MES_STATE_SUBJECT_PREFIX}.>",
                    stream=jetstream.MES_STATE_STREAM,
                    cb=self._on_mes_message,
                    ordered_consumer=True,
                    config=config,
                )
                return
            except _NATS_ERRORS as error:
                logger.warning("ingest.mes_state_unavailable", error=_describe(error))
                await self._pause(backoff.next())

    # -- MES state --------------------------------------------------------------------------

    async def _on_mes_message(self, msg: Msg) -> None:
        try:
            payload = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            logger.warning("ingest.mes_message_undecodable", subject=msg.subject)
            return
        if not isinstance(payload, dict):
            return
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while True:
            try:
                if self.history.needs_lookup(payload):
                    await self._in_orm_thread(self.history.prepare, payload)
                # Lookups run in the event loop between awaits; the lock keeps the batch being
                # joined from reading a timeline while `apply` rewrites it in the thread.
                async with self._history_lock:
                    intervals = await self._in_orm_thread(self.history.apply, payload)
                break
            except DatabaseError as error:
                metrics.DATABASE_FAILURES.inc()
                logger.warning("ingest.mes_lookup_failed", error=_describe(error))
                if self.stopping:
                    return
                await self._pause(backoff.next())
        metrics.MES_MESSAGES.inc()
        if intervals:
            self._history_version += 1
            self._reattributions.append(_Reattribution(self._history_version, intervals))
            self._work.set()

    # -- pulling and joining ----------------------------------------------------------------

    async def _pull_loop(self) -> None:
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while True:
            try:
                if not self.puller.outstanding and not self.stopping:
                    await self.puller.request(self.batch_size, self.batch_wait_s)
                messages = await self.puller.collect(ready=self._writer_idle)
            except _NATS_ERRORS as error:
                logger.warning("ingest.pull_failed", error=_describe(error))
                await self._pause(backoff.next())
                continue
            status = self.puller.status
            if not self.stopping and not self.puller.outstanding:
                # The next batch travels while this one is joined; if the request cannot be
                # sent, the next round sends it again.
                with contextlib.suppress(*_NATS_ERRORS):
                    await self.puller.request(self.batch_size, self.batch_wait_s)
            if messages:
                backoff.reset()
                async with self._history_lock:
                    batch = self._prepare(messages)
                    self._held.add(batch)
                    if batch.unresolved:
                        await self._resolve_stations(batch)
                await self._enqueue(batch)
            elif status is not None and status[0] not in ("404", "408"):
                # 409 and friends: the consumer was deleted, changed or is full of waiters.
                logger.warning("ingest.pull_refused", status=status[0], description=status[1])
                await self._pause(backoff.next())
            if self.stopping and not self.puller.outstanding:
                return  # the batch in hand is queued; nothing more was asked for

    def _writer_idle(self) -> bool:
        return self._idle and self._queue.empty()

    async def _enqueue(self, batch: Batch | None) -> None:
        """Queue for the writer, waiting while the queue is full (backpressure) unless the
        writer has ended."""
        if self._writer.done():
            return
        put = asyncio.ensure_future(self._queue.put(batch))
        await asyncio.wait([put, self._writer], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    def _prepare(self, messages: list[Msg]) -> Batch:
        """Decode, validate and join a batch (sync: nothing else touches the history)."""
        window = time_window(
            now_ms=time.time_ns() // 1_000_000,
            retention_hours=settings.TELEMETRY_RETENTION_HOURS,
        )
        batch = Batch([], CopyRows(), [], len(messages), self._history_version)
        station_id_of = self.history.station_id
        for msg in messages:
            parsed = parse_message(msg.data, subject=msg.subject, window=window)
            if type(parsed) is Rejection:
                batch.rejected.append((msg, parsed))
                continue
            station_id = station_id_of(parsed.station)
            if station_id is None:
                batch.unresolved.append((msg, parsed))
                continue
            self._join(batch, msg, station_id, parsed)
        return batch

    def _join(self, batch: Batch, msg: Msg, station_id: int, parsed: Message) -> None:
        rows = batch.rows
        add = rows.add
        start = rows.mark()
        timeline = self.history.timeline(station_id)
        if timeline is None:
            for ts, seq, signals in parsed.samples:
                add(station_id, ts, seq, None, signals)
        else:
            starts, values = timeline
            for ts, seq, signals in parsed.samples:
                add(station_id, ts, seq, values[bisect_right(starts, ts) - 1], signals)
        rows.end_message(start)
        batch.accepted.append(msg)

    async def _resolve_stations(self, batch: Batch) -> None:
        """Stations created since the load are found in the database (at most one look-up
        per unknown code every 30 s); the rest is dead-lettered as unknown."""
        codes = sorted({parsed.station for _, parsed in batch.unresolved})
        try:
            await self._in_orm_thread(lambda: [self.history.resolve_station(c) for c in codes])
        except DatabaseError as error:
            # Not a reason to dead-letter: leave them unacknowledged, they come back.
            logger.warning("ingest.station_lookup_failed", error=_describe(error))
            batch.unresolved.clear()
            return
        for msg, parsed in batch.unresolved:
            station_id = self.history.station_id(parsed.station)
            if station_id is None:
                detail = f"no station with code {parsed.station[:40]!r}"
                batch.rejected.append((msg, Rejection(UNKNOWN_STATION, detail)))
            else:
                self._join(batch, msg, station_id, parsed)
        batch.unresolved.clear()

    # -- writing ----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                break
            try:
                await self._store(batch)
            finally:
                self._held.discard(batch)
            await self._reattribute()
        await self._reattribute()

    async def _next_batch(self) -> Batch | None:
        """The next batch; while none is queued, run the re-attributions that are due."""
        while True:
            await self._reattribute()
            if not self._queue.empty():
                return self._queue.get_nowait()
            self._work.clear()
            self._idle = True
            if self.puller is not None:
                self.puller.wake()
            getter = asyncio.ensure_future(self._queue.get())
            waker = asyncio.ensure_future(self._work.wait())
            done, _ = await asyncio.wait([getter, waker], return_when=asyncio.FIRST_COMPLETED)
            self._idle = False
            waker.cancel()
            if getter in done:
                return getter.result()
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter

    async def _store(self, batch: Batch) -> None:
        result = None
        if len(batch.rows):
            result = await self._write_rows(batch)
            if result is None:
                return  # stopped while the database is away: left for redelivery
            metrics.COMMIT_SECONDS.observe(result.seconds)
            metrics.SAMPLES_STORED.inc(result.stored)
            if result.duplicates:
                metrics.SAMPLES_DUPLICATE.inc(result.duplicates)
        await self._acknowledge(batch.accepted)
        dead_lettered = await self._dead_letter(batch.rejected)
        metrics.MESSAGES_RECEIVED.inc(batch.received)
        metrics.SAMPLES_RECEIVED.inc(len(batch.rows))
        metrics.BATCH_MESSAGES.observe(batch.received)
        metrics.BATCH_SAMPLES.observe(len(batch.rows))
        self.totals.add(batch, result, dead_lettered)
        if self.progress is not None:
            self.progress(
                BatchReport(
                    messages=batch.received,
                    samples=len(batch.rows),
                    stored=result.stored if result else 0,
                    duplicates=result.duplicates if result else 0,
                    dead_lettered=dead_lettered,
                    commit_seconds=result.seconds if result else 0.0,
                    idempotent=bool(result and result.idempotent),
                )
            )

    async def _write_rows(self, batch: Batch) -> WriteResult | None:
        """Commit the batch's rows, retrying through database outages; None when stopped."""
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        isolate = False
        while True:
            try:
                if not isolate:
                    return await self.store.write(batch.rows)
                result, refused = await self.store.write_each(batch.rows)
                self._refuse(batch, refused)
                return result
            except REFUSED as error:
                # The server refuses some row: store message by message to find which.
                logger.warning("ingest.rows_refused", error=_describe(error))
                isolate = True
            except _DATABASE_ERRORS as error:
                metrics.DATABASE_FAILURES.inc()
                await self.store.close()
                if self.stopping:
                    logger.warning("ingest.stopped_without_database", error=_describe(error))
                    return None
                delay = backoff.next()
                logger.warning(
                    "ingest.database_unavailable", error=_describe(error), retry_in_s=delay
                )
                await self._pause(delay)

    def _refuse(self, batch: Batch, refused: list[tuple[int, str]]) -> None:
        """Move messages whose rows the server refused from acknowledged to dead letters."""
        if not refused:
            return
        indexes = {index for index, _ in refused}
        for index, error in refused:
            batch.rejected.append((batch.accepted[index], Rejection(REJECTED_BY_DATABASE, error)))
        batch.accepted = [msg for i, msg in enumerate(batch.accepted) if i not in indexes]

    async def _acknowledge(self, messages: list[Msg]) -> None:
        """After the commit. Not waiting for the server's reply: a lost ack only brings the
        message back, and the write counts it as a duplicate."""
        failed = 0
        for msg in messages:
            try:
                await msg.ack()
            except _NATS_ERRORS:
                failed += 1
        if failed:
            metrics.ACK_FAILURES.inc(failed)
            logger.warning("ingest.ack_failed", messages=failed)

    async def _dead_letter(self, rejected: list[tuple[Msg, Rejection]]) -> int:
        if not rejected:
            return 0
        outcomes = await asyncio.gather(
            *(self._dead_letter_one(msg, rejection) for msg, rejection in rejected)
        )
        reasons: dict[str, int] = {}
        for (_msg, rejection), done in zip(rejected, outcomes, strict=True):
            if done:
                reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
        for reason, count in reasons.items():
            metrics.DEAD_LETTERS.labels(reason).inc(count)
        if reasons:
            logger.info("ingest.dead_lettered", reasons=reasons)
        return sum(reasons.values())

    async def _dead_letter_one(self, msg: Msg, rejection: Rejection) -> bool:
        """Publish to the dead letters (acknowledged by the stream), then terminate the
        original. A failure leaves the message unacknowledged: it comes back and is tried
        again, and the stream drops the repeated dead letter by its Nats-Msg-Id."""
        code = subject_station(msg.subject)
        known = code is not None and self.history.station_id(code) is not None
        sequence = msg.metadata.sequence.stream
        headers = {
            "Aegis-Reason": rejection.reason,
            "Aegis-Detail": _header_text(rejection.detail) or rejection.reason,
            "Aegis-Original-Subject": msg.subject,
            "Aegis-Original-Stream": TELEMETRY_STREAM,
            "Aegis-Original-Sequence": str(sequence),
            "Nats-Msg-Id": f"aegis-deadletter-telemetry-{sequence}",
        }
        try:
            await self.js.publish(
                f"{DEAD_LETTER_PREFIX}.{code if known else 'unknown'}",
                msg.data,
                headers=headers,
                stream=DEAD_LETTER_STREAM,
                timeout=PUBLISH_TIMEOUT_S,
            )
            await msg.term()
        except _NATS_ERRORS as error:
            logger.warning("ingest.dead_letter_failed", subject=msg.subject, error=_describe(error))
            return False
        return True

    # -- re-attribution ---------------------------------------------------------------------

    async def _reattribute(self) -> None:
        """Re-attribute the intervals reported by MES messages once every batch joined before
        those messages were applied is committed (a batch in flight would otherwise store rows
        with the older attribution after the repair)."""
        if not self._reattributions:
            return
        # Batches are joined with the history version of their moment; a repair of version v
        # waits for the held batches of versions below v.
        oldest_held = min((batch.version for batch in self._held), default=None)
        due = [r for r in self._reattributions if oldest_held is None or r.version <= oldest_held]
        if not due:
            return
        intervals = intervals_as_datetimes(i for r in due for i in r.intervals)
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while True:
            try:
                if not self.store.is_open:
                    await self.store.open()
                changed = 0
                async with self.store.connection.transaction():
                    for station_id, from_ts, to_ts in intervals:
                        changed += await reattribute_async(
                            self.store.connection,
                            station_id=station_id,
                            from_ts=from_ts,
                            to_ts=to_ts,
                        )
                break
            except _UNAVAILABLE as error:
                metrics.DATABASE_FAILURES.inc()
                await self.store.close()
                if self.stopping:
                    logger.error(
                        "ingest.reattribution_abandoned",
                        intervals=len(intervals),
                        error=_describe(error),
                    )
                    return
                await self._pause(backoff.next())
            except psycopg.Error as error:
                # Not an outage: retrying would stop ingestion behind a repair that cannot
                # succeed. `reattribute_all` repairs it once the cause is fixed.
                metrics.DATABASE_FAILURES.inc()
                logger.error(
                    "ingest.reattribution_failed",
                    intervals=[(s, str(f), str(t)) for s, f, t in intervals[:20]],
                    error=_describe(error),
                )
                changed = 0
                break
        self._reattributions = [r for r in self._reattributions if r not in due]
        self.totals.reattributed += changed
        metrics.SAMPLES_REATTRIBUTED.inc(changed)
        if changed:
            logger.info("ingest.reattributed", intervals=len(intervals), samples=changed)

    # -- housekeeping -----------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Consumer lag for the metrics, the history's known time, and in-progress signals
        for batches held longer than a third of ack_wait (a database outage)."""
        last_lag = 0.0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            due = [b for b in self._held if now - b.in_progress_at > self.ack_wait_s / 3]
            if due:
                # Held back by the writer: the messages of those batches and whatever the
                # puller holds behind them are still being worked on.
                messages = [msg for batch in due for msg in batch.messages()]
                for batch in due:
                    batch.in_progress_at = now
                for msg in [*messages, *self.puller.arrived]:
                    with contextlib.suppress(*_NATS_ERRORS):
                        await msg.in_progress()
            if now - last_lag < LAG_INTERVAL_S or not self.client.is_connected:
                continue
            last_lag = now
            try:
                info = await self.js.consumer_info(TELEMETRY_STREAM, CONSUMER)
                metrics.CONSUMER_PENDING.set(info.num_pending or 0)
                metrics.CONSUMER_ACK_PENDING.set(info.num_ack_pending or 0)
                if info.config.ack_wait:
                    self.ack_wait_s = info.config.ack_wait
            except nats.js.errors.NotFoundError:
                logger.error("ingest.consumer_missing", hint="run manage.py nats_setup")
            except _NATS_ERRORS as error:
                logger.debug("ingest.lag_unavailable", error=_describe(error))
            with contextlib.suppress(*_NATS_ERRORS):
                # Drained the MES stream: the history is complete up to now (minus the relay's
                # latency), which `known_until` reports.
                mes = await self._mes_subscription.consumer_info()
                if not mes.num_pending:
                    self.history.advance(time.time_ns() // 1_000_000 - MES_SETTLE_MS)

    # -- waiting, signals, closing ----------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _close(self) -> None:
        self._closing = True
        if self.puller is not None:
            await self.puller.stop()
        if self._mes_subscription is not None:
            with contextlib.suppress(*_NATS_ERRORS):
                await self._mes_subscription.unsubscribe()
        await self.store.close()
        if self.client is not None:
            if self.puller is not None:
                # Delivered after the last batch was taken: back to the stream for another
                # worker now, rather than after ack_wait.
                for msg in self.puller.arrived:
                    with contextlib.suppress(*_NATS_ERRORS):
                        await msg.nak()
            with contextlib.suppress(*_NATS_ERRORS):
                await self.client.flush(timeout=PUBLISH_TIMEOUT_S)  # the last acks
            with contextlib.suppress(*_NATS_ERRORS):
                await self.client.close()
        self.client = None
        await asyncio.get_running_loop().run_in_executor(self._orm, connections.close_all)
        self._orm.shutdown(wait=True)
