"""Scoring a station's samples: windows → features → model (or baseline) → scores and episodes.

Everything here is synchronous and free of I/O, so the live scorer (`foresight.scorer`), the
backtest and the tests run the very same code: a `StationScorer` is fed a station's samples in
time order, batch by batch, and returns every sample's score per model and the alerts to raise.

Models. A station scores with its production model when it has one, and with its shadow models
beside it (their scores are kept, they raise nothing). A station without a production model is
scored by a `RunningBaseline` over its own signals; those scores are kept for charts, and raise
alerts only when `baseline_alerts` is on (AEGIS_FORESIGHT_BASELINE_ALERTS): on cyclic signals
such as a tightening station's the running baseline is noisy.

Fail-open. When the production model raises (a broken artifact, a wrong feature count,
onnxruntime failing), the batch is scored by the baseline of that model's own training
statistics instead, the error is counted, and alerts still come — from the baseline. Nothing a
model does can stop scoring or acknowledging.

Episodes. An alert is raised once per episode, with an on-delay and an off-delay as ISA-18.2
recommends against fleeting and chattering alarms:

- on-delay: an episode opens only when the score stays at or above the threshold for
  `on_delay(spec)` consecutive samples (a quarter of the model's shortest window, at least 2).
  A real change of the process moves window features for at least a whole window, while a
  single sample entering or leaving a window (the edge of a tightening pulse, a result register
  stepping back to the snug torque) can push the score over for one or two samples. The alert
  names the first sample of the run — the one that crossed — and is raised with the sample that
  completes the delay (`Alert.raised_ts_ms`), in the same batch or a later one;
- off-delay (hysteresis): the episode ends only after CLEAR_AFTER consecutive samples below
  HYSTERESIS times the threshold, so a score wobbling around the threshold raises one alert,
  not hundreds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson

from foresight.detectors import BaselineScorer, OnnxModel
from foresight.explain import RunningBaseline, explain
from foresight.features import FeatureSpec, StationWindows, default_spec
from foresight.models import BASELINE_MODEL_VERSION_ID

logger = logging.getLogger(__name__)

HYSTERESIS = 0.8
CLEAR_AFTER = 50
ON_DELAY_SHARE = 4  # the on-delay is the shortest window divided by this
MIN_ON_DELAY = 2
EXPLAIN_TOP = 5


def on_delay(spec: FeatureSpec) -> int:
    """Consecutive samples at or above the threshold that open an episode: a quarter of the
    spec's shortest window (5 samples for windows of 20 and 100), at least MIN_ON_DELAY.

    Tied to the window rather than to time: a fault moves a window feature for at least the
    window's length in samples (an injected single-sample spike stays in a 20-sample window for
    20 samples), so a quarter of it delays an alert by little and never hides one."""
    return max(MIN_ON_DELAY, min(spec.windows) // ON_DELAY_SHARE)


@dataclass
class LoadedModel:
    """A model version ready to score: its artifact in onnxruntime and its statistics."""

    id: int
    version: str
    threshold: float
    spec: FeatureSpec
    names: list[str]
    feature_mean: list[float]
    feature_std: list[float]
    onnx: OnnxModel
    fallback: BaselineScorer

    @property
    def spec_key(self) -> str:
        return spec_key(self.spec)


def spec_key(spec: FeatureSpec) -> str:
    return orjson.dumps(spec.to_json(), option=orjson.OPT_SORT_KEYS).decode()


def baseline_spec(signals: list[str] | None) -> FeatureSpec:
    """The default windows and statistics over the station's own signals (at most 8), in the
    order training chooses them (the default spec's signals first, then the others by name):
    a model trained on the station's signals then has the same spec, and the scorer computes
    the features once for both."""
    spec = default_spec()
    if not signals:
        return spec
    known = [s for s in spec.signals if s in signals]
    chosen = (known + sorted(s for s in signals if s not in known))[:8]
    pairs = [pair for pair in spec.to_json()["correlations"] if set(pair) <= set(chosen)]
    return FeatureSpec.from_json({**spec.to_json(), "signals": chosen, "correlations": pairs})


@dataclass
class Alert:
    """An alert to raise: the triggering sample, its score and why."""

    station_id: int
    ts_ms: int
    seq: int
    score: float
    threshold: float
    model: LoadedModel | None  # None: the baseline raised it
    triggering: dict
    explanation: list[dict]
    # The sample whose score completed the on-delay: when the alert was actually raised.
    raised_ts_ms: int | None = None
    raised_seq: int | None = None


@dataclass
class Scored:
    """The scores of one batch of one station: (model version id, shadow, scores) per model."""

    ts_ms: np.ndarray
    seq: np.ndarray
    by_model: list[tuple[int, bool, np.ndarray]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    errors: int = 0
    source: str = "baseline"  # what scored production: "model", "fallback" or "baseline"


class StationScorer:
    """One station's windows, models and episode state."""

    def __init__(
        self,
        station_id: int,
        *,
        signals: list[str] | None = None,
        on_error: Callable[[str, Exception], None] | None = None,
        baseline_alerts: bool = False,
    ) -> None:
        """`signals`: what the station measures (its declared signals), for the baseline's
        features; the default spec's signals when not given. `baseline_alerts`: whether the
        running baseline of a station without a model raises alerts (its scores are kept
        either way; a failing model's fallback always alerts)."""
        self.station_id = station_id
        self.baseline_alerts = baseline_alerts
        self.on_error = on_error
        self.production: LoadedModel | None = None
        self.shadows: list[LoadedModel] = []
        self._windows: dict[str, StationWindows] = {}
        self._baseline_spec = baseline_spec(signals)
        self._baseline = RunningBaseline(self._baseline_spec.n_features)
        self.in_episode = False
        self._quiet = 0  # consecutive samples below the clearing level
        self._run = 0  # consecutive samples at or above the threshold, outside an episode
        # The alert of a run that reached the end of a batch before the on-delay was over (its
        # first sample belongs to that batch), and what scored it.
        self._pending: Alert | None = None
        self._pending_scale: tuple | None = None

    def use(self, production: LoadedModel | None, shadows: list[LoadedModel]) -> None:
        """Swap models (between batches: each batch is scored by one set of models). Windows
        of a spec still in use keep their history; an episode ends with its model."""
        if (production.id if production else None) != (
            self.production.id if self.production else None
        ):
            self.in_episode = False
            self._quiet = 0
            self._forget_run()
        self.production = production
        self.shadows = list(shadows)
        wanted = {m.spec_key for m in self._models()} | {spec_key(self._baseline_spec)}
        for key in list(self._windows):
            if key not in wanted:
                del self._windows[key]

    def _forget_run(self) -> None:
        self._run = 0
        self._pending = self._pending_scale = None

    def _models(self) -> list[LoadedModel]:
        return ([self.production] if self.production else []) + self.shadows

    def _features(self, spec: FeatureSpec, ts: np.ndarray, values: dict) -> tuple[np.ndarray, int]:
        """The features of the samples, and the index of the first whose longest window is
        full (before it, a window holds too few samples to be judged: no alert is raised)."""
        key = spec_key(spec)
        windows = self._windows.get(key)
        if windows is None:
            windows = self._windows[key] = StationWindows(spec)
        seen = windows.samples_seen
        return windows.push(ts, values), max(0, spec.max_window - 1 - seen)

    def score(
        self, ts_ms: np.ndarray, seq: np.ndarray, values: dict[str, np.ndarray], raw: list[dict]
    ) -> Scored:
        """Score samples of this station in time order; `raw` holds each sample's signals."""
        scored = Scored(ts_ms, seq)
        features: dict[str, tuple[np.ndarray, int]] = {}

        def features_of(spec: FeatureSpec) -> np.ndarray:
            key = spec_key(spec)
            if key not in features:
                features[key] = self._features(spec, ts_ms, values)
            return features[key][0]

        def first_full(spec: FeatureSpec) -> int:
            return features[spec_key(spec)][1]

        model = self.production
        if model is None:
            # The running baseline learns only while it is what scores the station: beside a
            # model it would cost as much as the model (about 8 µs a sample). When a model
            # goes, the baseline resumes from what it had learnt, on windows that stayed warm
            # whenever its spec is the model's (baseline_spec picks signals as training does).
            baseline_features = features_of(self._baseline_spec)
            running = self._baseline.score(baseline_features)
            production, threshold = running, RunningBaseline.threshold
            explain_with = (baseline_features, self._baseline.mean, self._baseline.std)
            names = self._baseline_spec.names
            delay = on_delay(self._baseline_spec)
            # Without a model nothing is judged unless asked: the running baseline is a
            # safety net, noisy on cyclic signals.
            judged_from = first_full(self._baseline_spec) if self.baseline_alerts else len(ts_ms)
            scored.by_model.append((BASELINE_MODEL_VERSION_ID, False, running))
        else:
            matrix = features_of(model.spec)
            names = model.names
            delay = on_delay(model.spec)
            judged_from = first_full(model.spec)
            explain_with = (matrix, model.feature_mean, model.feature_std)
            try:
                production = model.onnx.score(matrix)
                if production.shape[0] != matrix.shape[0]:
                    raise ValueError(f"{production.shape[0]} scores for {matrix.shape[0]} rows")
                threshold = model.threshold
                scored.source = "model"
                scored.by_model.append((model.id, False, production))
            except Exception as error:  # noqa: BLE001 - fail-open: any model failure
                scored.errors += 1
                if self.on_error:
                    self.on_error(model.version, error)
                production = model.fallback.score(matrix)
                threshold = BaselineScorer.threshold
                model = None
                scored.source = "fallback"
                scored.by_model.append((BASELINE_MODEL_VERSION_ID, False, production))
        for shadow in self.shadows:
            try:
                scores = shadow.onnx.score(features_of(shadow.spec))
            except Exception as error:  # noqa: BLE001 - a shadow failing changes nothing
                scored.errors += 1
                if self.on_error:
                    self.on_error(shadow.version, error)
                continue
            scored.by_model.append((shadow.id, True, scores))
        # A run left open by the previous batch continues only on the same scale: a model
        # swapped in, or failing over to its fallback, starts counting afresh.
        scale = (model.id if model else None, scored.source, float(threshold))
        if self._pending_scale is not None and self._pending_scale != scale:
            self._forget_run()
        matrix, mean, std = explain_with

        def alert_at(index: int) -> Alert:
            return Alert(
                station_id=self.station_id,
                ts_ms=int(ts_ms[index]),
                seq=int(seq[index]),
                score=float(production[index]),
                threshold=float(threshold),
                model=model,
                triggering=dict(raw[index]),
                explanation=explain(matrix[index], mean, std, names, top=EXPLAIN_TOP),
            )

        judged = production[judged_from:]
        for onset, raised in self._episodes(judged, threshold, delay):
            onset, raised = onset + judged_from, raised + judged_from
            if onset >= judged_from or self._pending is None:
                alert = alert_at(max(onset, judged_from))
            else:  # the run began in an earlier batch
                alert = self._pending
            alert.raised_ts_ms, alert.raised_seq = int(ts_ms[raised]), int(seq[raised])
            scored.alerts.append(alert)
            self._pending = None
        if self._run == 0:
            self._pending = self._pending_scale = None
        else:  # a run still short of the on-delay: keep its first sample's alert
            if self._run <= judged.shape[0]:
                self._pending = alert_at(len(ts_ms) - self._run)
            self._pending_scale = scale
        return scored

    def _episodes(
        self, scores: np.ndarray, threshold: float, delay: int = 1
    ) -> list[tuple[int, int]]:
        """(first sample, raising sample) of each episode that opens in this batch, as indices
        into `scores`; the first is negative when the run began in an earlier batch. Updates
        the episode and on-delay state through the batch."""
        above = scores >= threshold
        if not self.in_episode and not above.any():
            self._run = 0
            return []  # the common case, without a Python loop
        opened = []
        clear = threshold * HYSTERESIS
        for index, score in enumerate(scores):
            if self.in_episode:
                self._quiet = self._quiet + 1 if score < clear else 0
                if self._quiet >= CLEAR_AFTER:
                    self.in_episode, self._quiet = False, 0
            elif above[index]:
                self._run += 1
                if self._run >= delay:
                    opened.append((index - self._run + 1, index))
                    self.in_episode, self._quiet, self._run = True, 0, 0
            else:
                self._run = 0
        return opened


# -- score rows in PostgreSQL's binary COPY format ----------------------------------------------

SCORE_COLUMNS = ("station_id", "ts", "seq", "model_version_id", "score", "shadow")
_PG_EPOCH_MS = 946_684_800_000
_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("station_length", ">i4"),
        ("station_id", ">i4"),
        ("ts_length", ">i4"),
        ("ts", ">i8"),
        ("seq_length", ">i4"),
        ("seq", ">i4"),
        ("model_length", ">i4"),
        ("model_version_id", ">i8"),
        ("score_length", ">i4"),
        ("score", ">f4"),
        ("shadow_length", ">i4"),
        ("shadow", "u1"),
    ]
)
_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_TRAILER = b"\xff\xff"


class ScoreRows:
    """Score rows of one batch for `SampleStore.write` (one numpy record array per station and
    model: no Python work per row)."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._count = 0

    def add(self, station_id: int, scored: Scored) -> None:
        n = scored.ts_ms.shape[0]
        for model_id, shadow, scores in scored.by_model:
            rows = np.empty(n, dtype=_ROW)
            rows["fields"] = len(SCORE_COLUMNS)
            rows["station_length"], rows["station_id"] = 4, station_id
            rows["ts_length"], rows["ts"] = 8, (scored.ts_ms - _PG_EPOCH_MS) * 1000
            rows["seq_length"], rows["seq"] = 4, scored.seq
            rows["model_length"], rows["model_version_id"] = 8, model_id
            rows["score_length"], rows["score"] = 4, scores
            rows["shadow_length"], rows["shadow"] = 1, shadow
            self._parts.append(rows)
            self._count += n

    def __len__(self) -> int:
        return self._count

    @property
    def spans(self) -> list[tuple[int, int]]:
        return [(0, self._count)]

    def payload(self, start: int = 0, end: int | None = None) -> bytes:
        rows = np.concatenate(self._parts) if self._parts else np.empty(0, dtype=_ROW)
        # concatenate gives native byte order; the wire format is big-endian.
        rows = rows[start:end].astype(_ROW, copy=False)
        return b"".join((_HEADER, rows.tobytes(), _TRAILER))
