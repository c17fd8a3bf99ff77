"""The bridge core: sources → per-station batches → disk buffer (group fsync) → JetStream.

`Bridge` is the `SampleSink` every source writes to. Samples of one station are collected into
one batch-form message (docs/telemetry-payloads.md) until `batch_max_samples` or
`batch_max_ms`, then appended to the buffer as one record; a sync task fsyncs the buffer every
`fsync_every_ms` or `fsync_every_messages` records, whichever comes first, and hands the
durable records to the publisher.

`put()` returns once the sample is in its station's batch: it does not wait for the fsync,
which would hold an OPC UA subscription or an MQTT client for up to batch_max_ms +
fsync_every_ms per sample (docs/edge.md, "Buffer and durability", has the numbers). A power
loss therefore loses at most the samples of the last batch_max_ms + fsync_every_ms.

The bridge takes its sources as objects, so tests (and a plant with its own source class) run
the same core with sources that the config file does not describe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import orjson
import structlog

from aegis.stopping import StopsOnSignals
from edge import metrics
from edge.buffer import DiskBuffer
from edge.config import EdgeConfig
from edge.publisher import Publisher
from edge.samples import EdgeSample, Source

logger = structlog.get_logger(__name__)

SUBJECT_PREFIX = "aegis.telemetry.raw."
BLOCK = "block"
SHED_OLDEST = "shed_oldest"


@dataclass
class _Batch:
    opened: float  # monotonic
    samples: list[dict] = field(default_factory=list)


class Bridge(StopsOnSignals):
    stopping_event = "edge.stopping"

    def __init__(self, config: EdgeConfig, sources: list[Source]) -> None:
        self.config = config
        self.sources = sources
        self.buffer = DiskBuffer(
            config.buffer.path,
            max_bytes=config.buffer.max_bytes,
            segment_bytes=config.buffer.segment_bytes,
        )
        if self.buffer.truncated_bytes:
            logger.warning("edge.torn_tail_truncated", bytes=self.buffer.truncated_bytes)
        self.pending_samples = self.buffer.pending_samples()
        self.publisher = Publisher(
            buffer=self.buffer,
            edge_id=config.edge_id,
            url=config.nats.url,
            connect_timeout_s=config.nats.connect_timeout_s,
            user=config.nats.user,
            password=config.nats.password,
            acknowledged=self._acknowledged,
        )
        self._batches: dict[str, _Batch] = {}
        self._blocked = False
        self._room: asyncio.Event | None = None
        self._unsynced_records = 0
        self._unsynced_samples = 0
        self._unsynced_since: float | None = None
        self._sync_due: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._oldest_cache: tuple[int, int] | None = None  # (cursor, appended_ms)
        self.blocked_s = 0.0
        self.shed_samples = 0
        metrics.BUFFER_MAX_BYTES.set(config.buffer.max_bytes)
        self.update_gauges()

    # -- the sink ------------------------------------------------------------------------------

    async def put(self, sample: EdgeSample) -> None:
        while self._blocked:
            started = time.monotonic()
            # Woken every quarter second so the metric grows during a long wait, not after it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), 0.25)
            waited = time.monotonic() - started
            self.blocked_s += waited
            metrics.BLOCKED_SECONDS.inc(waited)
        batch = self._batches.get(sample.station)
        if batch is None:
            batch = self._batches[sample.station] = _Batch(time.monotonic())
        batch.samples.append({"ts": sample.ts_ms, "seq": sample.seq, "signals": sample.signals})
        if len(batch.samples) >= self.config.publish.batch_max_samples:
            self._flush(sample.station)

    def _flush(self, station: str) -> bool:
        """Append the station's batch as one record; False when the block policy holds it."""
        batch = self._batches[station]
        body = orjson.dumps({"station_id": station, "samples": batch.samples})
        subject = SUBJECT_PREFIX + station
        record_bytes = len(body) + len(subject) + 64
        while not self.buffer.fits(record_bytes) and record_bytes <= self.buffer.max_bytes:
            if self.config.buffer.policy == BLOCK:
                if not self._blocked:
                    logger.warning("edge.buffer_full_blocking", bytes=self.buffer.size)
                self._blocked = True
                self._room.clear()
                return False
            if not self.buffer.segments:
                break  # nothing left to shed: the record is written anyway
            shed = self.buffer.shed_oldest()
            self.shed_samples += shed
            self.pending_samples -= shed
            metrics.SHED.inc(shed)
            logger.warning("edge.buffer_full_shed", samples=shed, shed_total=self.shed_samples)
            self.publisher.records_available.set()
        self.buffer.append(subject, body, len(batch.samples))
        del self._batches[station]
        count = len(batch.samples)
        self.pending_samples += count
        metrics.APPENDED.inc(count)
        self._unsynced_records += 1
        self._unsynced_samples += count
        if self._unsynced_since is None:
            self._unsynced_since = time.monotonic()
        if self._unsynced_records >= self.config.buffer.fsync_every_messages:
            self._sync_due.set()
        return True

    def _flush_due(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        age_s = self.config.publish.batch_max_ms / 1000
        for station in list(self._batches):
            batch = self._batches[station]
            full = len(batch.samples) >= self.config.publish.batch_max_samples
            if (everything or full or now - batch.opened >= age_s) and not self._flush(station):
                return
        if self._blocked:
            self._blocked = False
            self._room.set()
            logger.info("edge.buffer_room_again", bytes=self.buffer.size)

    def _acknowledged(self, up_to: int, samples: int) -> None:
        self.pending_samples -= samples
        if self._blocked:
            self._flush_due()

    # -- tasks ---------------------------------------------------------------------------------

    async def _batching(self) -> None:
        tick_s = max(0.002, self.config.publish.batch_max_ms / 4000)
        while True:
            await asyncio.sleep(tick_s)
            self._flush_due()

    async def _syncing(self) -> None:
        every_s = self.config.buffer.fsync_every_ms / 1000
        while True:
            if self._unsynced_since is None:
                self._sync_due.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._sync_due.wait(), every_s)
                continue
            remaining = self._unsynced_since + every_s - time.monotonic()
            if remaining > 0 and self._unsynced_records < self.config.buffer.fsync_every_messages:
                self._sync_due.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._sync_due.wait(), remaining)
                continue
            await self._sync()

    async def _sync(self) -> None:
        samples = self._unsynced_samples
        self._unsynced_records = 0
        self._unsynced_samples = 0
        self._unsynced_since = None
        await asyncio.to_thread(self.buffer.sync)
        metrics.SYNCED.inc(samples)
        self.publisher.records_available.set()

    async def _gauges(self) -> None:
        while True:
            self.update_gauges()
            await asyncio.sleep(1.0)

    def update_gauges(self) -> None:
        metrics.BUFFERED_BYTES.set(self.buffer.size)
        metrics.BUFFERED_SAMPLES.set(self.pending_samples)
        metrics.OLDEST_BUFFERED_AGE.set(self.oldest_buffered_age_s())

    def oldest_buffered_age_s(self) -> float:
        cursor = self.buffer.acked
        if cursor >= self.buffer.synced:
            return 0.0
        if self._oldest_cache is None or self._oldest_cache[0] != cursor:
            records = self.buffer.read(cursor, cursor + 1, max_records=1)
            if not records:
                return 0.0
            self._oldest_cache = (cursor, records[0].appended_ms)
        return max(0.0, time.time() - self._oldest_cache[1] / 1000)

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict:
        """What /healthz answers. Healthy: connected to NATS, every source connected, and the
        buffer neither blocking sources nor above 90 % of max_bytes."""
        sources = {source.name: source.health() for source in self.sources}
        problems = []
        if not self.publisher.connected:
            problems.append("nats_disconnected")
        if self._blocked:
            problems.append("buffer_full_blocking")
        elif self.buffer.size > 0.9 * self.config.buffer.max_bytes:
            problems.append("buffer_nearly_full")
        problems += [
            f"source_disconnected:{name}" for name, h in sources.items() if not h.get("connected")
        ]
        return {
            "healthy": not problems,
            "problems": problems,
            "edge_id": self.config.edge_id,
            "nats_connected": self.publisher.connected,
            "buffer": {
                "policy": self.config.buffer.policy,
                "bytes": self.buffer.size,
                "max_bytes": self.config.buffer.max_bytes,
                "samples": self.pending_samples,
                "records": self.buffer.pending_records,
                "oldest_age_s": round(self.oldest_buffered_age_s(), 3),
                "blocked_s": round(self.blocked_s, 3),
                "shed_samples": self.shed_samples,
            },
            "sources": sources,
        }

    # -- running -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Run the sources, the buffer and the publisher until stopped; on a stop, the batches
        in hand are appended and fsynced before returning."""
        from edge.http import serve_http

        self._room = asyncio.Event()
        self._room.set()
        self._sync_due = asyncio.Event()
        self._stop = asyncio.Event()
        if handle_signals:
            self._handle_signals()
        logger.info(
            "edge.started",
            edge_id=self.config.edge_id,
            sources=[source.name for source in self.sources],
            buffered_samples=self.pending_samples,
            buffered_records=self.buffer.pending_records,
        )
        http_server = await serve_http(self, self.config.http.bind, self.config.http.port)
        tasks = [
            asyncio.create_task(self._batching(), name="batching"),
            asyncio.create_task(self._syncing(), name="syncing"),
            asyncio.create_task(self._gauges(), name="gauges"),
            asyncio.create_task(self._run_publisher(), name="publisher"),
            *(
                asyncio.create_task(self._run_source(source), name=source.name)
                for source in self.sources
            ),
        ]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            http_server.close()
            if self._blocked:
                logger.warning("edge.stopped_while_full", held_samples=self._held_samples())
            else:
                self._flush_due(everything=True)
            self.buffer.sync()
            self.buffer.close()
            if handle_signals:
                self._release_signals()
            logger.info("edge.stopped", buffered_samples=self.pending_samples)

    def _held_samples(self) -> int:
        return sum(len(batch.samples) for batch in self._batches.values())

    async def _run_publisher(self) -> None:
        # Network errors are handled inside; anything else (a damaged segment, a bug) must not
        # end publishing for good while sources go on filling the buffer.
        while True:
            try:
                await self.publisher.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("edge.publisher_crashed")
                await asyncio.sleep(5)

    async def _run_source(self, source: Source) -> None:
        # A source is meant never to raise; if one does, log it and start it again, so one
        # broken source does not stop the others.
        while True:
            try:
                await source.run(self)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("edge.source_crashed", source=source.name)
                await asyncio.sleep(5)
