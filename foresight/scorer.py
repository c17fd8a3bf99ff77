"""The Foresight scorer (`manage.py foresight`): live telemetry → scores, alerts → browsers.

It reads the TELEMETRY stream through a durable consumer of its own, independent of the ingest
workers: a scorer that is slow, stopped or failing never delays storage. For each batch
(whatever has arrived, taken at most every GATHER_S: it never waits for a batch to fill, latency
matters more than batch size here, but pushing a station's samples into its windows a message at
a time would cost several times the CPU):

1. decodes the messages into columns per station (the ingest's validation: a batch message whose
   fields are all plainly valid is checked with a few C-level passes over the whole message, any
   other goes through `telemetry.payloads.parse_message`, which knows every rule; what it rejects
   is acknowledged and counted here, the ingest dead-letters it);
2. per station, in arrival order, computes the window features and scores them
   (`foresight.scoring.StationScorer`: production model, shadows, or the running baseline; a
   failing model falls back to the baseline — fail-open);
3. writes every score (station, ts, seq, model version, score, shadow) with one binary COPY
   into `foresight_score` (idempotent on its key, as for telemetry) and, at the same time, raises
   the alerts of episodes that opened (`foresight.registry.raise_alert`: the row, the audit entry
   and the NATS publication through the outbox) and pushes each at once to the websocket groups
   of its station, its line and the plant;
4. acknowledges the messages.

A message the scorer has already handled in this process (a redelivery: an acknowledgement that
came too late) is acknowledged again and skipped, so a station's windows never see a sample twice.

Partitions. A station's windows need all of its samples in one process. `--partition I/N`
(or AEGIS_FORESIGHT_PARTITION) runs scorer I of N: it scores the stations whose
crc32(code) mod N is I - 1, through the durable consumer `foresight-scorer-I-of-N`, filtered to
those stations' subjects (`filter_subjects`, NATS 2.10+) and acknowledged with AckPolicy.ALL: one
acknowledgement per batch covers every message before it, which is sound because exactly one
process consumes the consumer and handles its messages in order (a second process on the same
partition is refused at start). After a crash the messages past the acknowledgement floor are
still pending; the restarted scorer recreates the consumer at that floor, so they come back
first and in order, instead of being acknowledged over by the next batch. The stations are
reloaded every STATIONS_POLL_S seconds; a new station of the partition is caught up (its samples
since the previous reload, read through a short-lived consumer while pulling pauses) and then
added to the durable consumer's filter. 1/1, the default, is the provisioned consumer
`foresight-scorer` (all stations, acknowledged message by message) as before.

Changing N. A partition consumer created for the first time (or found older than the scorers of
another layout that ran since) starts where the layout that ran last left off: at the lowest
acknowledgement floor of that layout's consumers. Nothing that layout had not acknowledged is
left behind, and only what lies between its partitions' floors is scored again (idempotently).

Hot-swap. The relay mirrors every registry change into the KV bucket `foresight_models` (key:
station code). The scorer watches the bucket and, on a change, loads that station's production
and shadow versions from the database and their artifacts from the store (sha256 verified) in a
thread, then swaps them in between two batches (a batch is scored in one synchronous stretch of
the event loop): every sample is scored by exactly one production model (or the baseline), none
twice, and the swap takes effect milliseconds after the KV update, with or without traffic. A
full reload every RESYNC_S seconds repairs anything a dropped watch missed. An artifact that
fails to load leaves the station on the baseline and is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter

import nats.errors
import numpy as np
import orjson
import psycopg
import structlog
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from aegis import jetstream
from aegis.backoff import Backoff
from aegis.realtime import PLANT_GROUP, broadcast_async
from aegis.stopping import StopsOnSignals
from foresight import metrics
from foresight.detectors import BaselineScorer, OnnxModel
from foresight.explain import DEFAULT_Z_LIMIT
from foresight.features import FeatureSpec
from foresight.live import LiveFeed, production_scores
from foresight.models import ModelStatus, ModelVersion
from foresight.scoring import SCORE_COLUMNS, Alert, LoadedModel, Scored, ScoreRows, StationScorer
from foresight.spc import SpcMonitor, Violation
from mes.models import Station, StationSignal
from mes.outbox import REGISTRY_BUCKET
from telemetry.ingest import TELEMETRY_STREAM, Puller
from telemetry.payloads import (
    MAX_MESSAGE_BYTES,
    MAX_SAMPLES,
    MAX_SEQ,
    SUBJECT_PREFIX,
    Message,
    Rejection,
    TimeWindow,
    parse_message,
    time_window,
)
from telemetry.storage import SampleStore, database_parameters

logger = structlog.get_logger(__name__)

CONSUMER = "foresight-scorer"
SCORE_TABLE = "foresight_score"
BATCH_SIZE = 1_000
BATCH_WAIT_S = 0.25
# Batches are taken at most this often: a station's samples are pushed into its windows a
# message's worth at a time otherwise, and a push has a fixed cost several times that of its
# samples (numpy calls per window and statistic, a model call). Under load this trades up to
# GATHER_S of latency for a fraction of the CPU; a batch already behind is taken at once.
GATHER_S = 0.05
RESYNC_S = 30.0
STATIONS_POLL_S = 5.0
LAG_INTERVAL_S = 5.0
# A station new to a partition's filter when its scorer starts may have appeared during the last
# seconds of the run before (its later samples come through the consumer, which has not moved
# since): its samples from this long before that run's last delivery are caught up.
STARTUP_LOOKBACK_S = 60.0
PARTITION_ENV = "AEGIS_FORESIGHT_PARTITION"
MAX_PARTITIONS = 64
_NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


def station_group(code: str) -> str:
    return f"station.{code}"


def line_group(line_id: int) -> str:
    return f"line.{line_id}"


# -- partitions -----------------------------------------------------------------------------

_PARTITION_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_LAYOUT_CONSUMER = re.compile(rf"{CONSUMER}(?:-(\d+)-of-(\d+))?")


class PartitionBusy(RuntimeError):
    """Another process already consumes this partition's consumer."""


def partition_of(code: str, count: int) -> int:
    """The partition (1…count) that scores station `code`: crc32 of the code, modulo count.
    Stable across processes, hosts and Python versions (unlike hash())."""
    return zlib.crc32(code.encode()) % count + 1


@dataclass(frozen=True)
class Partition:
    """Scorer `index` of `count` (1-based); 1/1 scores every station."""

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_PARTITIONS or not 1 <= self.index <= self.count:
            raise ValueError(
                f"a partition is I/N with 1 ≤ I ≤ N ≤ {MAX_PARTITIONS}, "
                f"not {self.index}/{self.count}"
            )

    @classmethod
    def parse(cls, text: str) -> Partition:
        match = _PARTITION_TEXT.fullmatch(text or "")
        if match is None:
            raise ValueError(f"a partition is written I/N (e.g. 1/2), not {text!r}")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def from_settings(cls) -> Partition:
        """settings.FORESIGHT_PARTITION (AEGIS_FORESIGHT_PARTITION), else every station."""
        return cls.parse(settings.FORESIGHT_PARTITION or "1/1")

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def consumer(self) -> str:
        return CONSUMER if self.whole else f"{CONSUMER}-{self.index}-of-{self.count}"

    def owns(self, code: str) -> bool:
        return self.whole or partition_of(code, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _filters(config: api.ConsumerConfig, subject: str) -> bool:
    """Whether a consumer's filter takes `subject` (NATS wildcards * and >)."""
    patterns = config.filter_subjects or [config.filter_subject or ">"]
    tokens = subject.split(".")
    for pattern in patterns:
        parts = pattern.split(".")
        for index, part in enumerate(parts):
            if part == ">":
                if len(tokens) > index:
                    return True
                break
            if index >= len(tokens) or part not in ("*", tokens[index]):
                break
        else:
            if len(parts) == len(tokens):
                return True
    return False


def _last_active(info: api.ConsumerInfo) -> dt.datetime:
    return info.delivered.last_active or info.created


def _layout(consumer_name: str) -> int | None:
    """N of a scorer consumer's layout (1 for `foresight-scorer`), None for other consumers."""
    match = _LAYOUT_CONSUMER.fullmatch(consumer_name)
    if match is None:
        return None
    return int(match[2]) if match[2] else 1


# -- decoding -------------------------------------------------------------------------------

_SAMPLE_FIELDS = itemgetter("ts", "seq", "signals")
_INT = frozenset((int,))
_DICT = frozenset((dict,))
_NUMBERS = frozenset((int, float))
_VETTED_NAMES_LIMIT = 100_000


@dataclass(slots=True)
class Chunk:
    """The samples of one message of one station, as columns: `rows` holds each sample's values
    of `names` (a tuple per sample, or the value itself when there is one name)."""

    ts: tuple[int, ...]
    seq: tuple[int, ...]
    names: tuple[str, ...]
    rows: list
    raw: tuple[dict, ...]


def plain_batch(
    body: bytes, *, subject: str, window: TimeWindow, vetted: set[str]
) -> tuple[str, Chunk] | None:
    """The station and samples of a batch message whose every field is plainly valid: exactly
    `station_id` (a string naming the subject's station) and `samples`, each sample exactly
    `ts` (int, inside `window`), `seq` (int, 0…MAX_SEQ) and `signals` (the same numeric signals
    in every sample, names in `vetted`). Checked with a few C-level passes over the whole
    message instead of Python code per sample. None for anything else — including messages
    that are valid in a less plain way (a float ts, a missing seq, the single-sample form) —
    which `parse_message` then judges: this only ever accepts what it accepts, identically."""
    if len(body) > MAX_MESSAGE_BYTES:
        return None
    try:
        document = orjson.loads(body)
        code = document["station_id"]
        samples = document["samples"]
        if (
            len(document) != 2
            or type(code) is not str
            or type(samples) is not list
            or not subject.startswith(SUBJECT_PREFIX)
            or subject[len(SUBJECT_PREFIX) :] != code
            or not 0 < len(samples) <= MAX_SAMPLES
        ):
            return None
        fields = list(map(_SAMPLE_FIELDS, samples))  # KeyError, TypeError: not plain
        ts, seq, signals = zip(*fields, strict=True)
        if (
            set(map(len, samples)) != {3}  # no key beside ts, seq and signals
            or set(map(type, ts)) != _INT
            or set(map(type, seq)) != _INT
            or set(map(type, signals)) != _DICT
            or min(ts) < window.oldest
            or max(ts) > window.newest
            or min(seq) < 0
            or max(seq) > MAX_SEQ
        ):
            return None
        names = tuple(signals[0])
        width = len(names)
        # Every sample has the first one's signals: as many, and no name beyond them.
        if (
            not width
            or set(map(len, signals)) != {width}
            or len(set().union(*signals)) != width
            or not vetted.issuperset(names)
            or not _NUMBERS.issuperset(map(type, chain.from_iterable(map(dict.values, signals))))
        ):
            return None
        rows = list(map(itemgetter(*names), signals))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return None
    return code, Chunk(ts, seq, names, rows, signals)


class StationSamples:
    """One station's samples of a batch, in arrival order, built into the arrays the
    StationScorer takes with one numpy call per column."""

    __slots__ = ("names", "raw", "rows", "seq", "ts")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.seq: list[int] = []
        self.raw: list[dict] = []
        self.rows: list = []
        self.names: tuple[str, ...] | None = ()  # () before the first chunk; None: mixed

    def __len__(self) -> int:
        return len(self.ts)

    def add_chunk(self, chunk: Chunk) -> None:
        self.ts.extend(chunk.ts)
        self.seq.extend(chunk.seq)
        self.raw.extend(chunk.raw)
        if self.names == ():
            self.names = chunk.names
        if chunk.names == self.names:
            self.rows.extend(chunk.rows)
        else:
            self.names = None  # signals differ between messages: columns from `raw`

    def add_message(self, message: Message) -> None:
        for sample in message.samples:
            self.ts.append(sample.ts)
            self.seq.append(sample.seq)
            self.raw.append(sample.signals)
        self.names = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Timestamps, sequence numbers and one float column per signal (NaN where a sample
        lacks the signal)."""
        ts = np.array(self.ts, dtype=np.int64)
        seq = np.array(self.seq, dtype=np.int64)
        if self.names:
            matrix = np.array(self.rows, dtype=np.float64).reshape(len(self.ts), -1)
            columns = np.ascontiguousarray(matrix.T)
            return ts, seq, dict(zip(self.names, columns, strict=True))
        names = set().union(*self.raw)
        values = {
            name: np.array([signals.get(name, math.nan) for signals in self.raw], dtype=np.float64)
            for name in names
        }
        return ts, seq, values


def _delivery(reply: str | None) -> tuple[int, int]:
    """(stream sequence, stream timestamp in ns) of a JetStream delivery from its reply
    subject; (0, 0) for anything else."""
    if not reply:
        return 0, 0
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[7])
    if len(tokens) >= 11:  # … with <domain>.<account hash> after $JS.ACK (and a token at the end)
        return int(tokens[7]), int(tokens[9])
    return 0, 0


# -- models ---------------------------------------------------------------------------------


def load_model(version: ModelVersion) -> LoadedModel:
    """A registry row with its verified artifact in onnxruntime (raises when it cannot)."""
    fallback_z = float((version.metrics or {}).get("baseline_z_limit", DEFAULT_Z_LIMIT))
    model = LoadedModel(
        id=version.id,
        version=version.version,
        threshold=float(version.threshold),
        spec=FeatureSpec.from_json(version.feature_spec),
        names=list(version.feature_names),
        feature_mean=list(version.feature_mean),
        feature_std=list(version.feature_std),
        onnx=OnnxModel(version.load_artifact()),
        fallback=BaselineScorer(version.feature_mean, version.feature_std, z_limit=fallback_z),
    )
    # onnxruntime allocates on its first call: make it here, in the loading thread, rather than
    # in the first batch the model scores. A model failing here fails live too (fail-open).
    with contextlib.suppress(Exception):
        model.onnx.score(np.zeros((2, len(model.names)), dtype=np.float32))
    return model


class ForesightScorer(StopsOnSignals):
    """Scores the TELEMETRY stream: `serve()` until stopped (the `foresight` process)."""

    stopping_event = "foresight.stopping"

    def __init__(
        self,
        *,
        batch_size: int = BATCH_SIZE,
        gather_s: float = GATHER_S,
        partition: Partition | None = None,
        database: dict | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.gather_s = gather_s
        self.partition = partition or Partition()
        self.on_batch = on_batch
        self.store = SampleStore(
            database or database_parameters(), table=SCORE_TABLE, columns=SCORE_COLUMNS
        )
        self.client: Client | None = None
        self.puller: Puller | None = None
        self.stations: dict[str, tuple[int, int, list[str]]] = {}  # code → (id, line, signals)
        self.codes: dict[int, str] = {}
        self.scorers: dict[int, StationScorer] = {}
        self.models: dict[int, tuple[LoadedModel | None, list[LoadedModel]]] = {}
        self.spc = SpcMonitor()  # SPC charts of the signals with active limits (docs/spc.md)
        self._unknown_checked: dict[str, float] = {}
        self._failure_logged: dict[str, float] = {}
        self._orm = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foresight-orm")
        self._stop: asyncio.Event | None = None
        # Per subject, the highest stream sequence handled in this process.
        self._handled: dict[str, int] = {}
        self._vetted: set[str] = set()  # signal names parse_message has accepted
        self._ack_all = False
        self._filtered: set[str] | None = None  # codes in the partition consumer's filter
        self._refilter = False  # stations of the partition changed: update the filter
        # The first filter update catches up from a little before the last run last read.
        self._startup_catch_up = True
        self._startup_since: dt.datetime | None = None
        # The stream's last sequence before the station reload that the filter reflects (a
        # station that reload did not know published nothing scorable before it), and before
        # the reload that found the change.
        self._poll_mark: int | None = None
        self._next_mark: int | None = None
        self.scored = 0
        self.alerts = 0
        self.swaps = 0
        self.caught_up = 0  # samples of newly added stations read before joining the filter
        self.live = LiveFeed()  # station.live events for the board (foresight/live.py)

    # -- entry points -------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def serve(self, *, handle_signals: bool = True) -> None:
        self._stop = self._stop or asyncio.Event()
        if handle_signals:
            self._handle_signals()
        tasks: list[asyncio.Task] = []
        try:
            self.client = await jetstream.connect(f"foresight-{self.partition.index}")
            if not self.partition.whole:
                self._poll_mark = await self._last_sequence()
            await self._in_orm_thread(self._load_stations)
            await self._reload_models()
            await self._prepare_consumer()
            self.puller = Puller(
                self.client, stream=TELEMETRY_STREAM, consumer=self.partition.consumer
            )
            await self.puller.start()
            if self._refilter:
                with contextlib.suppress(*_NATS_ERRORS):  # else the pull loop tries again
                    await self._apply_filter()
            tasks = [
                asyncio.ensure_future(self._watch_registry()),
                asyncio.ensure_future(self._resync()),
                asyncio.ensure_future(self._watch_lag()),
            ]
            if not self.partition.whole:
                tasks.append(asyncio.ensure_future(self._poll_stations()))
            logger.info(
                "foresight.started",
                pid=os.getpid(),
                partition=str(self.partition),
                consumer=self.partition.consumer,
                stations=len(self._own_codes()),
            )
            await self._pull_loop()
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, *_NATS_ERRORS):
                    await task
            if handle_signals:
                self._release_signals()
            await self._close()
            logger.info("foresight.stopped", scored=self.scored, alerts=self.alerts)

    async def _in_orm_thread(self, function: Callable, *args):
        def call():
            close_old_connections()
            return function(*args)

        return await asyncio.get_running_loop().run_in_executor(self._orm, call)

    # -- stations and models ----------------------------------------------------------------

    def _load_stations(self) -> None:
        """The MES's stations, in the ORM thread: new maps replace the old ones whole, so the
        event loop never sees them half-built (and a deleted station leaves them)."""
        signals = defaultdict(list)
        for station_id, name in StationSignal.objects.values_list("station_id", "name"):
            signals[station_id].append(name)
        stations, codes = {}, {}
        for station_id, code, line_id in Station.objects.values_list("id", "code", "line_id"):
            stations[code] = (station_id, line_id, signals.get(station_id, []))
            codes[station_id] = code
        self.stations, self.codes = stations, codes

    def _own_codes(self) -> set[str]:
        return {code for code in self.stations if self.partition.owns(code)}

    def _models_of(self, station_ids: list[int] | None) -> dict:
        """(production, shadows) per station, loaded and verified; failures are logged."""
        rows = ModelVersion.objects.filter(
            status__in=[ModelStatus.PRODUCTION, ModelStatus.SHADOW]
        ).order_by("id")
        if station_ids is not None:
            rows = rows.filter(station_id__in=station_ids)
        found: dict[int, tuple[LoadedModel | None, list[LoadedModel]]] = {
            station_id: (None, []) for station_id in station_ids or []
        }
        for row in rows:
            code = self.codes.get(row.station_id)
            if code is not None and not self.partition.owns(code):
                continue  # another partition's station: its scorer loads it
            try:
                model = load_model(row)
            except Exception as error:  # noqa: BLE001 - a bad artifact: the baseline scores
                metrics.MODEL_LOAD_FAILURES.inc()
                logger.error("foresight.model_unloadable", version=row.version, error=str(error))
                continue
            production, shadows = found.get(row.station_id, (None, []))
            if row.status == ModelStatus.PRODUCTION:
                production = model
            else:
                shadows = [*shadows, model]
            found[row.station_id] = (production, shadows)
        return found

    async def _reload_models(self, station_ids: list[int] | None = None) -> None:
        try:
            found = await self._in_orm_thread(self._models_of, station_ids)
        except DatabaseError as error:
            logger.warning("foresight.model_reload_failed", error=str(error))
            return
        if station_ids is None:  # a full reload: stations without rows lose their models
            found = {**{sid: (None, []) for sid in self.models}, **found}
        self._swap(found)
        await self._reload_spc(station_ids)

    async def _reload_spc(self, station_ids: list[int] | None = None) -> None:
        """The active SPC limits, on the models' triggers (activating or stopping limits
        rewrites the station's KV entry; the resync), taken into use between two batches."""
        from foresight.registry import control_limits_in_use

        try:
            limits = await self._in_orm_thread(control_limits_in_use, station_ids)
        except DatabaseError as error:
            logger.warning("foresight.spc_reload_failed", error=str(error))
            return
        self.spc.use(limits, station_ids=station_ids)

    def _swap(self, found: dict) -> None:
        """Take loaded models into use. Runs in the event loop, where a batch is scored in one
        synchronous stretch: a swap lands between two batches, never inside one."""
        for station_id, (production, shadows) in found.items():
            before = self.models.get(station_id, (None, []))
            if _ids(before) == _ids((production, shadows)):
                continue
            self.models[station_id] = (production, shadows)
            scorer = self.scorers.get(station_id)
            if scorer is not None:
                scorer.use(production, shadows)
            self.swaps += 1
            metrics.MODEL_SWAPS.inc()
            logger.info(
                "foresight.models_swapped",
                station_id=station_id,
                production=production.version if production else None,
                shadows=[m.version for m in shadows],
            )

    async def _watch_registry(self) -> None:
        """KV `foresight_models`: a station's entry changes when its models do."""
        backoff = Backoff(0.5, 10.0)
        while not self.stopping:
            try:
                kv = await self.client.jetstream().key_value(REGISTRY_BUCKET)
                watcher = await kv.watchall(include_history=False)
                backoff.reset()
                async for entry in watcher:
                    if entry is None or entry.key is None:
                        continue  # the end of the initial values
                    if not self.partition.owns(entry.key):
                        continue
                    known = self.stations.get(entry.key)
                    if known is None:
                        await self._in_orm_thread(self._load_stations)
                        known = self.stations.get(entry.key)
                    if known is not None:
                        await self._reload_models([known[0]])
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the resync covers the gap
                logger.warning("foresight.registry_watch_failed", error=str(error))
                await self._pause(backoff.next())

    async def _resync(self) -> None:
        while not self.stopping:
            await self._pause(RESYNC_S)
            if not self.stopping:
                await self._reload_models()

    async def _poll_stations(self) -> None:
        """A partition's consumer names its stations: reload them now and then, and have the
        pull loop add new ones (caught up first) between two batches."""
        while not self.stopping:
            await self._pause(STATIONS_POLL_S)
            if self.stopping or self._refilter:
                continue
            try:
                mark = await self._last_sequence()
                await self._in_orm_thread(self._load_stations)
            except (DatabaseError, *_NATS_ERRORS) as error:
                logger.warning("foresight.stations_reload_failed", error=str(error))
                continue
            if self._own_codes() != self._filtered:
                self._next_mark = mark
                self._refilter = True
                self.puller.wake()
            else:
                self._poll_mark = mark

    async def _watch_lag(self) -> None:
        """The consumer's backlog, for /metrics (the lag in seconds is set per batch)."""
        while not self.stopping:
            with contextlib.suppress(*_NATS_ERRORS):
                info = await self.client.jetstream().consumer_info(
                    TELEMETRY_STREAM, self.partition.consumer
                )
                metrics.CONSUMER_PENDING.labels(self.partition.consumer).set(
                    (info.num_pending or 0) + (info.num_ack_pending or 0)
                )
            await self._pause(LAG_INTERVAL_S)

    # -- the consumer ---------------------------------------------------------------------------

    async def _last_sequence(self) -> int:
        return (await self.client.jetstream().stream_info(TELEMETRY_STREAM)).state.last_seq

    async def _consumer_info(self, name: str) -> api.ConsumerInfo | None:
        try:
            return await self.client.jetstream().consumer_info(TELEMETRY_STREAM, name)
        except NotFoundError:
            return None

    async def _prepare_consumer(self) -> None:
        """Make the partition's consumer ready to pull from: refuse when another process pulls
        from it; take over from a layout that ran since it last did; for a partition, bring the
        unacknowledged messages of a crashed run back first and mark new stations."""
        info = await self._consumer_info(self.partition.consumer)
        if info is not None and info.num_waiting:
            # Pull requests of a process that just stopped expire within BATCH_WAIT_S.
            await asyncio.sleep(BATCH_WAIT_S + 1.0)
            info = await self._consumer_info(self.partition.consumer)
            if info is not None and info.num_waiting:
                raise PartitionBusy(
                    f"another process is pulling from consumer {self.partition.consumer} "
                    f"(partition {self.partition}): run exactly one scorer per partition"
                )
        # As `manage.py nats_setup` provisions it, so that it finds nothing to change.
        if info is not None:
            replicas = info.config.num_replicas or 0
            self._startup_since = _last_active(info) - dt.timedelta(seconds=STARTUP_LOOKBACK_S)
        else:
            stream = await self.client.jetstream().stream_info(TELEMETRY_STREAM)
            replicas = stream.config.num_replicas or 0
        takeover = await self._takeover(after=None if info is None else _last_active(info))
        if takeover is not None:
            # The other layout scored every station of this partition up to its floor there.
            start, floors = takeover
            if info is not None:
                with contextlib.suppress(NotFoundError):
                    await self.client.jetstream().delete_consumer(
                        TELEMETRY_STREAM, self.partition.consumer
                    )
            await self._create_consumer(
                start, why="took over from the layout that ran last", replicas=replicas
            )
            self._handled.update(floors)
            return
        if info is None:
            await self._create_consumer(None, why="created", replicas=replicas)
            return
        if self._ack_all_policy(info) and info.delivered.stream_seq > info.ack_floor.stream_seq:
            # A crashed run's messages: the next batch's acknowledgement would cover them.
            with contextlib.suppress(NotFoundError):
                await self.client.jetstream().delete_consumer(
                    TELEMETRY_STREAM, self.partition.consumer
                )
            await self._create_consumer(
                info.ack_floor.stream_seq + 1,
                why="the last run's unacknowledged messages come back first",
                codes=self._filter_codes(info.config),  # stations new to it are caught up
                replicas=replicas,
            )
            return
        self._ack_all = self._ack_all_policy(info)
        if not self.partition.whole:
            self._filtered = self._filter_codes(info.config)
            self._refilter = self._filtered != self._own_codes()

    @staticmethod
    def _ack_all_policy(info: api.ConsumerInfo) -> bool:
        return info.config.ack_policy == api.AckPolicy.ALL

    @staticmethod
    def _filter_codes(config: api.ConsumerConfig) -> set[str]:
        """Station codes in a consumer's filter (one token after the prefix)."""
        subjects = config.filter_subjects or [config.filter_subject or ""]
        return {
            s[len(SUBJECT_PREFIX) :]
            for s in subjects
            if s.startswith(SUBJECT_PREFIX) and "." not in s[len(SUBJECT_PREFIX) :]
        }

    async def _takeover(self, *, after: dt.datetime | None) -> tuple[int, dict[str, int]] | None:
        """Where to start when the scorer layout (other than this one's) that delivered last
        did so after `after` (always, when None): the lowest acknowledgement floor of its
        consumers, plus per station subject the floor of the consumer that scored it there (a
        message at or below it was acknowledged: it is skipped, not scored again)."""
        layouts: dict[int, list[api.ConsumerInfo]] = defaultdict(list)
        for info in await self.client.jetstream().consumers_info(TELEMETRY_STREAM):
            count = _layout(info.name)
            if count is not None and count != self.partition.count:
                layouts[count].append(info)
        latest: tuple[dt.datetime, list[api.ConsumerInfo]] | None = None
        for members in layouts.values():
            active = [m.delivered.last_active for m in members if m.delivered.last_active]
            if active and (latest is None or max(active) > latest[0]):
                latest = (max(active), members)
        if latest is None or (after is not None and latest[0] <= after):
            return None
        members = latest[1]
        floors = {}
        for subject in self._subjects(self._own_codes()):
            covering = [m.ack_floor.stream_seq for m in members if _filters(m.config, subject)]
            if covering:
                floors[subject] = max(covering)
        return min(m.ack_floor.stream_seq for m in members) + 1, floors

    def _consumer_config(
        self, start: int | None, codes: set[str] | None = None, replicas: int = 0
    ) -> api.ConsumerConfig:
        """The partition's consumer; the provisioned one's settings for 1/1 (`manage.py
        nats_setup` finds it unchanged). Replicas 0: the stream's."""
        policy = api.DeliverPolicy.BY_START_SEQUENCE if start else api.DeliverPolicy.ALL
        if self.partition.whole:
            (spec,) = [c for c in jetstream.consumers() if c.durable == CONSUMER]
            config = spec.config(replicas=replicas)
            return config.evolve(deliver_policy=policy, opt_start_seq=start)
        codes = self._own_codes() if codes is None else codes
        return api.ConsumerConfig(
            durable_name=self.partition.consumer,
            description=(
                f"Foresight scorer {self.partition}: stations with crc32(code) mod "
                f"{self.partition.count} = {self.partition.index - 1}"
            ),
            filter_subjects=self._subjects(codes),
            deliver_policy=policy,
            opt_start_seq=start,
            # One process per partition, messages handled in order: one ack per batch.
            ack_policy=api.AckPolicy.ALL,
            ack_wait=30.0,
            max_ack_pending=20_000,
            max_waiting=512,
            num_replicas=replicas,
        )

    def _subjects(self, codes: set[str]) -> list[str]:
        # An empty filter would mean every subject: a partition without stations yet filters
        # on a subject no station publishes on (station codes are one token).
        return [f"{SUBJECT_PREFIX}{code}" for code in sorted(codes)] or [
            f"{SUBJECT_PREFIX}none.{self.partition.consumer}"
        ]

    async def _create_consumer(
        self, start: int | None, *, why: str, codes: set[str] | None = None, replicas: int = 0
    ) -> None:
        config = self._consumer_config(start, codes, replicas)
        await self.client.jetstream().add_consumer(TELEMETRY_STREAM, config)
        self._ack_all = config.ack_policy == api.AckPolicy.ALL
        if not self.partition.whole:
            self._filtered = self._filter_codes(config)
            self._refilter = self._filtered != self._own_codes()
        logger.info(
            "foresight.consumer_created",
            consumer=self.partition.consumer,
            start_sequence=start,
            reason=why,
        )

    async def _apply_filter(self) -> None:
        """With no pull outstanding: catch up the partition's new stations, then put them in
        the consumer's filter (and take away stations that are gone)."""
        wanted = self._own_codes()
        added = wanted - (self._filtered or set())
        if added:
            # The consumer does not move while nothing is pulled: every sample of the new
            # stations up to `last` is read here, later ones come through the consumer (those
            # it delivers again are skipped, see _handle).
            last = await self._last_sequence()
            if self._startup_catch_up or self._poll_mark is None:
                begin: int | dt.datetime = self._startup_since or (
                    dt.datetime.now(dt.UTC) - dt.timedelta(seconds=STARTUP_LOOKBACK_S)
                )
            else:
                begin = self._poll_mark + 1
            if not await self._catch_up(sorted(added), begin=begin, last=last):
                return  # stopped, or a failure: tried again
        info = await self.client.jetstream().consumer_info(
            TELEMETRY_STREAM, self.partition.consumer
        )
        config = info.config.evolve(filter_subjects=self._subjects(wanted), filter_subject=None)
        await self.client.jetstream().add_consumer(TELEMETRY_STREAM, config)
        self._filtered = wanted
        self._refilter = False
        self._startup_catch_up = False
        if self._next_mark is not None:
            self._poll_mark, self._next_mark = self._next_mark, None
        logger.info(
            "foresight.stations_changed",
            partition=str(self.partition),
            added=sorted(added),
            stations=len(wanted),
        )

    async def _catch_up(self, codes: list[str], *, begin: int | dt.datetime, last: int) -> bool:
        """Score the samples of `codes` from `begin` (a stream sequence or a time) to stream
        sequence `last`, through a short-lived consumer of their own. True when done."""
        if isinstance(begin, int) and begin > last:
            return True
        name = f"{self.partition.consumer}-catch-up"
        js = self.client.jetstream()
        config = api.ConsumerConfig(
            name=name,
            filter_subjects=[f"{SUBJECT_PREFIX}{code}" for code in codes],
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        if isinstance(begin, int):
            config.deliver_policy, config.opt_start_seq = api.DeliverPolicy.BY_START_SEQUENCE, begin
        else:
            config.deliver_policy, config.opt_start_time = api.DeliverPolicy.BY_START_TIME, begin
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(TELEMETRY_STREAM, name)
        await js.add_consumer(TELEMETRY_STREAM, config)
        reader = Puller(self.client, stream=TELEMETRY_STREAM, consumer=name)
        await reader.start()
        try:
            while not self.stopping:
                await reader.request(self.batch_size, BATCH_WAIT_S)
                messages = await reader.collect()
                due = [m for m in messages if 0 < _delivery(m.reply)[0] <= last]
                if due:
                    before = self.scored
                    if not await self._handle(due, acknowledge=False):
                        return False
                    self.caught_up += self.scored - before
                if len(due) < len(messages) or not messages:
                    return True  # past `last`, or nothing more
            return False
        finally:
            await reader.stop()
            with contextlib.suppress(NotFoundError, *_NATS_ERRORS):
                await js.delete_consumer(TELEMETRY_STREAM, name)

    # -- pulling and scoring ------------------------------------------------------------------

    async def _pull_loop(self) -> None:
        backoff = Backoff(0.5, 10.0)
        loop = asyncio.get_running_loop()
        taken_at = -math.inf
        while True:
            take_at = taken_at + self.gather_s
            wake = loop.call_at(take_at, self.puller.wake) if take_at > loop.time() else None
            try:
                if self._refilter and not self.puller.outstanding and not self.stopping:
                    await self._apply_filter()
                    if self._refilter:
                        await self._pause(backoff.next())
                    continue
                if not self.puller.outstanding and not self.stopping:
                    await self.puller.request(self.batch_size, BATCH_WAIT_S)
                messages = await self.puller.collect(
                    ready=lambda due=take_at: self.stopping or loop.time() >= due
                )
            except _NATS_ERRORS as error:
                logger.warning("foresight.pull_failed", error=str(error))
                await self._pause(backoff.next())
                continue
            finally:
                if wake is not None:
                    wake.cancel()
            if messages:
                taken_at = loop.time()
                backoff.reset()
                if not await self._handle(messages):
                    # Stopped while the database is away: the batch stays unacknowledged (an
                    # acknowledgement of a later one would cover it under AckPolicy.ALL).
                    return
            if self.stopping and not self.puller.outstanding:
                return

    async def _handle(self, messages: list[Msg], *, acknowledge: bool = True) -> bool:
        """Score, store, alert, acknowledge. False when stopped before the batch was stored:
        it is left unacknowledged and comes back."""
        started = time.perf_counter()
        window = time_window(
            now_ms=time.time_ns() // 1_000_000,
            retention_hours=settings.TELEMETRY_RETENTION_HOURS,
        )
        by_station: dict[str, StationSamples] = {}
        unscorable = skipped = 0
        handled = self._handled
        newest_ns = 0
        for msg in messages:
            subject = msg.subject
            sequence, newest_ns = _delivery(msg.reply)
            if sequence:
                if sequence <= handled.get(subject, 0):
                    skipped += 1  # delivered again: its samples are in the windows already
                    continue
                handled[subject] = sequence
            plain = plain_batch(msg.data, subject=subject, window=window, vetted=self._vetted)
            if plain is not None:
                code, chunk = plain
                samples = by_station.get(code)
                if samples is None:
                    samples = by_station[code] = StationSamples()
                samples.add_chunk(chunk)
                continue
            parsed = parse_message(msg.data, subject=subject, window=window)
            if type(parsed) is Rejection:
                unscorable += 1
                continue
            self._vet(parsed)
            samples = by_station.get(parsed.station)
            if samples is None:
                samples = by_station[parsed.station] = StationSamples()
            samples.add_message(parsed)
        unknown = [code for code in by_station if code not in self.stations]
        if unknown:
            await self._resolve(unknown)
        rows = ScoreRows()
        alerts: list[Alert | Violation] = []
        scored_samples = 0
        for code, station_samples in by_station.items():
            known = self.stations.get(code)
            if known is None or not self.partition.owns(code):
                unscorable += len(station_samples)
                continue
            scored, violations = self._score_station(known, station_samples)
            rows.add(known[0], scored)
            alerts.extend(scored.alerts)
            alerts.extend(violations)
            scored_samples += len(station_samples)
        if not await self._store(rows, alerts):
            return False
        if acknowledge:
            await self._acknowledge(messages)
        self.scored += scored_samples
        metrics.SAMPLES_SCORED.inc(scored_samples)
        if unscorable:
            metrics.SAMPLES_UNSCORABLE.inc(unscorable)
        if skipped:
            metrics.REDELIVERIES_SKIPPED.inc(skipped)
        if newest_ns:
            metrics.LAG_SECONDS.labels(self.partition.consumer).set(
                max(0.0, time.time() - newest_ns / 1e9)
            )
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        self.live.schedule()  # in the background: never delays the next batch
        if self.on_batch:
            self.on_batch(len(messages), scored_samples)
        return True

    def _vet(self, message: Message) -> None:
        """Signal names of a message parse_message accepted: plain batches may use them."""
        if len(self._vetted) >= _VETTED_NAMES_LIMIT:
            self._vetted.clear()
        for sample in message.samples:
            self._vetted.update(sample.signals)

    def _score_station(
        self, known: tuple[int, int, list[str]], samples: StationSamples
    ) -> tuple[Scored, list[Violation]]:
        station_id, _, signals = known
        scorer = self.scorers.get(station_id)
        if scorer is None:
            scorer = self.scorers[station_id] = StationScorer(
                station_id,
                signals=signals,
                on_error=self._model_failed,
                baseline_alerts=settings.FORESIGHT_BASELINE_ALERTS,
            )
            production, shadows = self.models.get(station_id, (None, []))
            scorer.use(production, shadows)
        ts, seq, values = samples.arrays()
        scored = scorer.score(ts, seq, values, samples.raw)
        if scored.errors:
            metrics.SCORING_ERRORS.inc(scored.errors)
        scores, threshold = production_scores(scored, scorer.production)
        self.live.add(
            station=self.codes[station_id],
            line=known[1],
            ts_ms=ts,
            values=values,
            scores=scores,
            threshold=threshold,
        )
        return scored, self.spc.push(station_id, ts, seq, values)

    def _model_failed(self, version: str, error: Exception) -> None:
        """Logged once a minute per model (the counter has every failure): a broken model
        fails every batch, and the log must stay readable."""
        now = time.monotonic()
        if now - self._failure_logged.get(version, -1e9) >= 60:
            self._failure_logged[version] = now
            logger.warning("foresight.model_failed", version=version, error=repr(error)[:300])

    async def _resolve(self, codes: list[str]) -> None:
        """Stations created since the last load (each unknown code looked up every 30 s at
        most; samples of stations the MES does not know are not scored)."""
        now = time.monotonic()
        due = [code for code in codes if now - self._unknown_checked.get(code, -1e9) >= 30]
        if not due:
            return
        for code in due:
            self._unknown_checked[code] = now
        with contextlib.suppress(DatabaseError):
            await self._in_orm_thread(self._load_stations)

    async def _store(self, rows: ScoreRows, alerts: list[Alert | Violation]) -> bool:
        """The scores' COPY and the alerts' rows at the same time (both wait on PostgreSQL, on
        two connections). False when a stop came while the database was away."""
        work = []
        if len(rows):
            work.append(self._write(rows))
        if alerts:
            work.append(self._raise_all(alerts))
        return all(await asyncio.gather(*work))

    async def _write(self, rows: ScoreRows) -> bool:
        """Store the scores; a database outage is retried (nothing is acknowledged meanwhile).
        False when a stop came first."""
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                await self.store.write(rows)
                return True
            except _UNAVAILABLE as error:
                metrics.DATABASE_FAILURES.inc()
                logger.warning("foresight.database_unavailable", error=str(error))
                await self.store.close()
                if self.stopping:
                    return False
                await self._pause(backoff.next())

    async def _raise_all(self, alerts: list[Alert | Violation]) -> bool:
        for alert in alerts:
            if not await self._raise(alert):
                return False  # the batch is not acknowledged: raised when it comes back (once)
        return True

    async def _raise(self, alert: Alert | Violation) -> bool:
        """Record the alert (retried while the database is away) and push it to browsers.
        False when a stop came first: the batch stays unacknowledged and comes back."""
        code = self.codes.get(alert.station_id)
        if code is None or code not in self.stations:
            logger.warning("foresight.alert_for_deleted_station", station_id=alert.station_id)
            return True  # the MES deleted the station since: nothing to alert about
        line_id = self.stations[code][1]
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                record = _record_violation if isinstance(alert, Violation) else _record_alert
                payload = await self._in_orm_thread(record, alert)
                break
            except DatabaseError as error:
                metrics.DATABASE_FAILURES.inc()
                logger.warning("foresight.alert_not_recorded", station=code, error=str(error))
                if self.stopping:
                    return False
                await self._pause(backoff.next())
        self.alerts += 1
        metrics.ALERTS.labels(payload["source"]).inc()
        # Straight to the browsers (the outbox relay publishes it to NATS for other consumers),
        # from this event loop: aegis.realtime.broadcast would start a loop and a Redis
        # connection per call.
        for group in (station_group(code), line_group(line_id), PLANT_GROUP):
            try:
                await broadcast_async("defect.alert", payload, group=group)
            except Exception as error:  # noqa: BLE001 - a Redis hiccup must not stop scoring
                logger.warning("foresight.push_failed", group=group, error=repr(error)[:300])
        return True

    async def _acknowledge(self, messages: list[Msg]) -> None:
        """After the scores are committed. Under AckPolicy.ALL the batch's last message
        acknowledges all of it; otherwise each message. A lost ack brings messages back, and
        their scores are written once (the key) and their alerts raised once (one per sample)."""
        failed = 0
        for msg in messages[-1:] if self._ack_all else messages:
            try:
                await msg.ack()
            except _NATS_ERRORS:
                failed += 1
        if failed:
            logger.warning("foresight.ack_failed", messages=failed)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _close(self) -> None:
        await self.live.close()
        if self.puller is not None:
            await self.puller.stop()
        await self.store.close()
        if self.client is not None:
            with contextlib.suppress(*_NATS_ERRORS):
                await self.client.drain()
        await asyncio.get_running_loop().run_in_executor(self._orm, connections.close_all)
        self._orm.shutdown(wait=True)


def _ids(models: tuple[LoadedModel | None, list[LoadedModel]]) -> tuple:
    production, shadows = models
    return (production.id if production else None, tuple(m.id for m in shadows))


def _record_alert(alert: Alert) -> dict:
    from foresight.registry import alert_payload, raise_alert

    station = Station.objects.get(pk=alert.station_id)
    model = ModelVersion.objects.get(pk=alert.model.id) if alert.model else None
    row = raise_alert(
        station=station,
        ts=dt.datetime.fromtimestamp(alert.ts_ms / 1000, dt.UTC),
        seq=alert.seq,
        score=alert.score,
        threshold=alert.threshold,
        model_version=model,
        triggering=alert.triggering,
        explanation=alert.explanation,
    )
    return orjson.loads(orjson.dumps(alert_payload(row)))


def _record_violation(violation: Violation) -> dict:
    from foresight.registry import alert_payload, raise_spc_violation

    row = raise_spc_violation(violation=violation)
    return orjson.loads(orjson.dumps(alert_payload(row)))
