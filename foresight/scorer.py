"""The Foresight scorer (`manage.py foresight`): live telemetry → scores, alerts → browsers.

It reads the TELEMETRY stream through its own durable consumer `foresight-scorer`, independent
of the ingest workers: a scorer that is slow, stopped or failing never delays storage. For each
pull (whatever has arrived: the scorer never waits for a batch to fill, latency matters more
than batch size here):

1. decodes the messages (the ingest's validation; what it rejects is acknowledged and counted
   here, the ingest dead-letters it);
2. per station, in arrival order, computes the window features and scores them
   (`foresight.scoring.StationScorer`: production model, shadows, or the running baseline; a
   failing model falls back to the baseline — fail-open);
3. writes every score (station, ts, seq, model version, score, shadow) with one binary COPY
   into `foresight_score` (idempotent on its key, as for telemetry);
4. raises the alerts of episodes that opened (`foresight.registry.raise_alert`: the row, the
   audit entry and the NATS publication through the outbox) and pushes each at once to the
   websocket groups of its station, its line and the plant;
5. acknowledges the messages.

Hot-swap. The relay mirrors every registry change into the KV bucket `foresight_models` (key:
station code). The scorer watches the bucket and, on a change, loads that station's production
and shadow versions from the database and their artifacts from the store (sha256 verified) in a
thread, then swaps them in between two batches (a batch is scored in one synchronous stretch of
the event loop): every sample is scored by exactly one production model (or the baseline), none
twice, and the swap takes effect milliseconds after the KV update, with or without traffic. A
full reload every RESYNC_S seconds repairs anything a dropped watch missed. An artifact that
fails to load leaves the station on the baseline and is logged and counted.

Scaling: a station's windows need all of its samples in one process, so one scorer serves the
plant (it scores well above 20,000 samples/s on 2 cores); partitioning stations over several
scorers, each with a filtered consumer, is the way out when one is not enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import nats.errors
import numpy as np
import orjson
import psycopg
import structlog
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections
from nats.aio.client import Client
from nats.aio.msg import Msg

from aegis import jetstream
from aegis.backoff import Backoff
from aegis.realtime import PLANT_GROUP, broadcast
from aegis.stopping import StopsOnSignals
from foresight import metrics
from foresight.detectors import BaselineScorer, OnnxModel
from foresight.explain import DEFAULT_Z_LIMIT
from foresight.features import FeatureSpec
from foresight.models import ModelStatus, ModelVersion
from foresight.scoring import SCORE_COLUMNS, Alert, LoadedModel, ScoreRows, StationScorer
from mes.models import Station, StationSignal
from mes.outbox import REGISTRY_BUCKET
from telemetry.ingest import TELEMETRY_STREAM, Puller
from telemetry.payloads import Rejection, parse_message, time_window
from telemetry.storage import SampleStore, database_parameters

logger = structlog.get_logger(__name__)

CONSUMER = "foresight-scorer"
SCORE_TABLE = "foresight_score"
BATCH_SIZE = 1_000
BATCH_WAIT_S = 0.25
RESYNC_S = 30.0
_NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


def station_group(code: str) -> str:
    return f"station.{code}"


def line_group(line_id: int) -> str:
    return f"line.{line_id}"


def load_model(version: ModelVersion) -> LoadedModel:
    """A registry row with its verified artifact in onnxruntime (raises when it cannot)."""
    fallback_z = float((version.metrics or {}).get("baseline_z_limit", DEFAULT_Z_LIMIT))
    return LoadedModel(
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


class ForesightScorer(StopsOnSignals):
    """Scores the TELEMETRY stream: `serve()` until stopped (the `foresight` process)."""

    stopping_event = "foresight.stopping"

    def __init__(
        self,
        *,
        batch_size: int = BATCH_SIZE,
        database: dict | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.batch_size = batch_size
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
        self._unknown_checked: dict[str, float] = {}
        self._failure_logged: dict[str, float] = {}
        self._orm = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foresight-orm")
        self._stop: asyncio.Event | None = None
        self._watcher = None
        self.scored = 0
        self.alerts = 0
        self.swaps = 0

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
            self.client = await jetstream.connect("foresight")
            await self._in_orm_thread(self._load_stations)
            await self._reload_models()
            self.puller = Puller(self.client, stream=TELEMETRY_STREAM, consumer=CONSUMER)
            await self.puller.start()
            tasks = [
                asyncio.ensure_future(self._watch_registry()),
                asyncio.ensure_future(self._resync()),
            ]
            logger.info("foresight.started", pid=os.getpid(), stations=len(self.stations))
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
        signals = defaultdict(list)
        for station_id, name in StationSignal.objects.values_list("station_id", "name"):
            signals[station_id].append(name)
        for station_id, code, line_id in Station.objects.values_list("id", "code", "line_id"):
            self.stations[code] = (station_id, line_id, signals.get(station_id, []))
            self.codes[station_id] = code

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

    # -- pulling and scoring ------------------------------------------------------------------

    async def _pull_loop(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                if not self.puller.outstanding and not self.stopping:
                    await self.puller.request(self.batch_size, BATCH_WAIT_S)
                messages = await self.puller.collect(ready=lambda: True)
            except _NATS_ERRORS as error:
                logger.warning("foresight.pull_failed", error=str(error))
                await self._pause(backoff.next())
                continue
            if messages:
                backoff.reset()
                await self._handle(messages)
            if self.stopping and not self.puller.outstanding:
                return

    async def _handle(self, messages: list[Msg]) -> None:
        started = time.perf_counter()
        window = time_window(
            now_ms=time.time_ns() // 1_000_000,
            retention_hours=settings.TELEMETRY_RETENTION_HOURS,
        )
        by_station: dict[str, list] = defaultdict(list)
        unscorable = 0
        for msg in messages:
            parsed = parse_message(msg.data, subject=msg.subject, window=window)
            if type(parsed) is Rejection:
                unscorable += 1
                continue
            by_station[parsed.station].extend(parsed.samples)
        unknown = [code for code in by_station if code not in self.stations]
        if unknown:
            await self._resolve(unknown)
        rows = ScoreRows()
        alerts: list[Alert] = []
        samples = 0
        for code, station_samples in by_station.items():
            known = self.stations.get(code)
            if known is None:
                unscorable += len(station_samples)
                continue
            scored = self._score_station(known, station_samples)
            rows.add(known[0], scored)
            alerts.extend(scored.alerts)
            samples += len(station_samples)
        if len(rows) and not await self._write(rows):
            return  # stopped while the database is away: the messages come back
        for alert in alerts:
            if not await self._raise(alert):
                return  # the same: the alert is raised when they do (once: its key)
        await self._acknowledge(messages)
        self.scored += samples
        metrics.SAMPLES_SCORED.inc(samples)
        if unscorable:
            metrics.SAMPLES_UNSCORABLE.inc(unscorable)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        if self.on_batch:
            self.on_batch(len(messages), samples)

    def _score_station(self, known: tuple[int, int, list[str]], samples: list) -> object:
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
        ts = np.fromiter((s[0] for s in samples), dtype=np.int64, count=len(samples))
        seq = np.fromiter((s[1] for s in samples), dtype=np.int64, count=len(samples))
        raw = [s[2] for s in samples]
        names = {name for signals_of in raw for name in signals_of}
        values = {
            name: np.fromiter((r.get(name, np.nan) for r in raw), dtype=np.float64, count=len(raw))
            for name in names
        }
        scored = scorer.score(ts, seq, values, raw)
        if scored.errors:
            metrics.SCORING_ERRORS.inc(scored.errors)
        return scored

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

    async def _raise(self, alert: Alert) -> bool:
        """Record the alert (retried while the database is away) and push it to browsers.
        False when a stop came first: the batch stays unacknowledged and comes back."""
        code = self.codes[alert.station_id]
        line_id = self.stations[code][1]
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                payload = await self._in_orm_thread(_record_alert, alert)
                break
            except DatabaseError as error:
                metrics.DATABASE_FAILURES.inc()
                logger.warning("foresight.alert_not_recorded", station=code, error=str(error))
                if self.stopping:
                    return False
                await self._pause(backoff.next())
        self.alerts += 1
        metrics.ALERTS.labels("model" if alert.model else "baseline").inc()
        # Straight to the browsers (the outbox relay publishes it to NATS for other consumers).
        for group in (station_group(code), line_group(line_id), PLANT_GROUP):
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda g=group: broadcast("defect.alert", payload, group=g)
                )
            except Exception as error:  # noqa: BLE001 - a Redis hiccup must not stop scoring
                logger.warning("foresight.push_failed", group=group, error=repr(error)[:300])
        return True

    async def _acknowledge(self, messages: list[Msg]) -> None:
        """After the scores are committed; a lost ack brings the message back, and its scores
        are written once (the key) and its alert raised once (one per sample)."""
        failed = 0
        for msg in messages:
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
