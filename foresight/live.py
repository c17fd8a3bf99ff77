"""Live signal summaries for browsers: `station.live` events, at most every 0.5 s per station.

The scorer already holds each batch of a station as numpy columns (timestamps, one float
column per signal, the production model's scores). `LiveFeed.add` folds a batch into the
station's running summary with a few numpy reductions per signal — no Python work per sample —
and `flush()` sends each station whose interval is over one event on its websocket groups
(station, line, plant):

    {"type": "station.live", "station": "1", "line": 3,
     "from": <first ts ms>, "ts": <last ts ms>, "samples": 412,
     "signals": {"torque": {"last": 43.2, "min": 40.1, "max": 47.9}, ...},
     "score": 0.42, "score_max": 0.61, "threshold": 1.0}

`min`/`max` span every sample since the previous event, so a spike between two events still
shows on the board's sparkline; `score_max` does the same for the score. Values are rounded to
4 significant digits (a sparkline needs no more, and the event stays small).

The feed never slows scoring down: `schedule()` runs a flush in the background (one at a time;
whatever arrives meanwhile waits for the next), each Redis call is bounded by `timeout_s`, and a
failure is logged, counted (`aegis_foresight_live_events_total{outcome="failed"}`) and backed
off — it never raises into the scorer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog
from channels.layers import get_channel_layer
from prometheus_client import Counter

import aegis.observability.metrics  # noqa: F401 - names this process's metric files first
from aegis.backoff import Backoff
from aegis.realtime import PLANT_GROUP
from foresight.explain import BaselineScorer, RunningBaseline
from foresight.scoring import LoadedModel, Scored

logger = structlog.get_logger(__name__)

EVENT_TYPE = "station.live"
INTERVAL_S = 0.5

LIVE_EVENTS = Counter(
    "aegis_foresight_live_events_total",
    "station.live events for browsers, by outcome (sent, failed, skipped while backing off).",
    ["outcome"],
)


def production_scores(scored: Scored, production: LoadedModel | None) -> tuple:
    """The scores a batch's alerts are judged by (the production model's, or the baseline's
    when there is none or it failed) and their threshold; (None, None) without any."""
    for _model_id, shadow, scores in scored.by_model:
        if not shadow:
            if scored.source == "model" and production is not None:
                return scores, production.threshold
            if scored.source == "fallback":
                return scores, BaselineScorer.threshold
            return scores, RunningBaseline.threshold
    return None, None


def _round(value: float) -> float | None:
    """4 significant digits; None for NaN and infinities (JSON has neither)."""
    if not math.isfinite(value):
        return None
    return float(f"{value:.4g}")


@dataclass
class _Signal:
    low: float = math.inf
    high: float = -math.inf
    last: float = math.nan


@dataclass
class _Summary:
    """What a station's samples since its last event came to."""

    line: int | None
    first_ts: int
    last_ts: int = 0
    samples: int = 0
    signals: dict[str, _Signal] = field(default_factory=dict)
    score: float = math.nan
    score_max: float = -math.inf
    threshold: float | None = None


def _last_finite(column: np.ndarray) -> float:
    """The column's last value that is a number (NaN where a sample lacks the signal)."""
    last = column[-1]
    if not math.isnan(last):
        return float(last)
    present = np.flatnonzero(~np.isnan(column))
    return float(column[present[-1]]) if present.size else math.nan


class LiveFeed:
    """Per-station summaries of what the scorer saw, sent to browsers every `interval_s`."""

    def __init__(
        self,
        *,
        interval_s: float = INTERVAL_S,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.pending: dict[str, _Summary] = {}
        self.sent_at: dict[str, float] = {}  # station → clock() of its last event
        self.backoff = Backoff(1.0, 30.0)
        self.retry_after = -math.inf
        self.sent = 0
        self.failed = 0
        self._task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def add(
        self,
        *,
        station: str,
        line: int | None,
        ts_ms: np.ndarray,
        values: dict[str, np.ndarray],
        scores: np.ndarray | None = None,
        threshold: float | None = None,
    ) -> None:
        """Fold one batch of a station into its summary: `ts_ms` (int64), `values` (one float
        column per signal, NaN where a sample lacks it), the production `scores` and the
        threshold they are judged against. O(signals) numpy reductions, whatever the length."""
        count = int(ts_ms.shape[0])
        if count == 0:
            return
        summary = self.pending.get(station)
        if summary is None:
            summary = self.pending[station] = _Summary(line=line, first_ts=int(ts_ms[0]))
        summary.line = line
        summary.last_ts = max(summary.last_ts, int(ts_ms[-1]))
        summary.samples += count
        for name, column in values.items():
            if column.shape[0] == 0:
                continue
            signal = summary.signals.get(name)
            if signal is None:
                signal = summary.signals[name] = _Signal()
            # fmin/fmax skip NaN (an all-NaN column gives NaN, which min/max below ignore).
            low, high = float(np.fmin.reduce(column)), float(np.fmax.reduce(column))
            if low < signal.low:
                signal.low = low
            if high > signal.high:
                signal.high = high
            last = _last_finite(column)
            if not math.isnan(last):
                signal.last = last
        if scores is not None and scores.shape[0]:
            last_score = _last_finite(scores)
            if not math.isnan(last_score):
                summary.score = last_score
            high = float(np.fmax.reduce(scores))
            if high > summary.score_max:
                summary.score_max = high
        if threshold is not None:
            summary.threshold = float(threshold)

    def due(self) -> list[str]:
        """Stations with samples whose previous event is at least `interval_s` old."""
        now = self.clock()
        return [
            station
            for station in self.pending
            if now - self.sent_at.get(station, -math.inf) >= self.interval_s
        ]

    @staticmethod
    def event(station: str, summary: _Summary) -> dict:
        return {
            "type": EVENT_TYPE,
            "station": station,
            "line": summary.line,
            "from": summary.first_ts,
            "ts": summary.last_ts,
            "samples": summary.samples,
            "signals": {
                name: {
                    "last": _round(signal.last),
                    "min": _round(signal.low),
                    "max": _round(signal.high),
                }
                for name, signal in summary.signals.items()
            },
            "score": _round(summary.score),
            "score_max": _round(summary.score_max),
            "threshold": summary.threshold,
        }

    async def flush(self) -> int:
        """Send the stations that are due; returns how many events went out. Never raises."""
        stations = self.due()
        if not stations:
            return 0
        now = self.clock()
        if now < self.retry_after:
            # Redis failed a moment ago: keep summarising (min/max keep growing), send later.
            LIVE_EVENTS.labels("skipped").inc(len(stations))
            return 0
        events = []
        for station in stations:
            summary = self.pending.pop(station)
            self.sent_at[station] = now
            events.append((station, self.event(station, summary)))
        try:
            await asyncio.wait_for(self._send(events), self.timeout_s)
        except Exception as error:  # noqa: BLE001 - a Redis hiccup must never reach scoring
            self.failed += len(events)
            LIVE_EVENTS.labels("failed").inc(len(events))
            delay = self.backoff.next()
            self.retry_after = self.clock() + delay
            logger.warning("foresight.live_push_failed", error=repr(error)[:300], retry_in_s=delay)
            return 0
        self.backoff.reset()
        self.sent += len(events)
        LIVE_EVENTS.labels("sent").inc(len(events))
        return len(events)

    @staticmethod
    async def _send(events: list[tuple[str, dict]]) -> None:
        layer = get_channel_layer()
        for station, event in events:
            message = {"type": "plant.event", "event": event}
            groups = [f"station.{station}", PLANT_GROUP]
            if event["line"] is not None:
                groups.insert(1, f"line.{event['line']}")
            for group in groups:
                await layer.group_send(group, message)

    def schedule(self) -> None:
        """For the scorer's event loop, after each batch: returns at once. Flushes in the
        background when a station is due (one flush at a time), or sets a timer for when the
        first one will be, so the last samples before a station falls silent still go out."""
        if self._closed or (self._task is not None and not self._task.done()):
            return  # a running flush schedules again when it ends
        wait = self._wait_s()
        if wait is None:
            return
        loop = asyncio.get_running_loop()
        if wait > 0:
            if self._timer is None:
                self._timer = loop.call_later(wait, self._timer_fired)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._task = loop.create_task(self._flush_in_background())

    def _wait_s(self) -> float | None:
        """Seconds until a pending station is due (0: now); None when nothing is pending."""
        if not self.pending:
            return None
        now = self.clock()
        first_due = min(self.sent_at.get(station, -math.inf) for station in self.pending)
        return max(first_due + self.interval_s - now, self.retry_after - now, 0.0)

    def _timer_fired(self) -> None:
        self._timer = None
        self.schedule()

    async def _flush_in_background(self) -> None:
        await self.flush()
        if self._task is asyncio.current_task():
            self._task = None  # done: what arrived meanwhile is scheduled next
            self.schedule()

    async def close(self) -> None:
        """Stop the timer and wait for a flush still running (it is bounded by `timeout_s`)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task
