"""Statistics that need no model: the fail-open baseline scorer and alert explanations.

Both work on z-scores against the training statistics of a model version (`feature_mean`,
`feature_std`): how many training standard deviations a feature is from its training mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foresight.features import feature_signal

# |z| that a baseline score of 1.0 (the baseline's threshold) stands for, when training did not
# calibrate one (TrainedDetector.metrics["baseline_z_limit"] is the calibrated value).
DEFAULT_Z_LIMIT = 6.0
# The running baseline knows nothing of the station but its recent past: shape features such as
# a 20-sample kurtosis reach |z| 6-7 in normal noise, so it waits for |z| 10 (a fault such as a
# 6 Nm torque step on 0.4 Nm of noise is |z| ~200 on the window means).
RUNNING_Z_LIMIT = 10.0
ABNORMAL_WEIGHT = 0.05  # of a sample the running baseline scored above its threshold


def z_scores(
    features: np.ndarray, feature_mean: Sequence[float], feature_std: Sequence[float]
) -> np.ndarray:
    """z of each feature (rows x features, float64); a missing (NaN) feature has z = 0."""
    mean = np.asarray(feature_mean, dtype=np.float64)
    std = np.asarray(feature_std, dtype=np.float64)
    z = (np.asarray(features, dtype=np.float64) - mean) / std
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


class BaselineScorer:
    """Score = the largest |z| over the features / z_limit, so the threshold is 1.0.

    Used when a station has no model or its model fails: crude, but it needs nothing that can
    break, and a signal far outside its training range still raises an alert.
    """

    threshold = 1.0

    def __init__(
        self,
        feature_mean: Sequence[float],
        feature_std: Sequence[float],
        *,
        z_limit: float = DEFAULT_Z_LIMIT,
    ) -> None:
        if len(feature_mean) != len(feature_std):
            raise ValueError("feature_mean and feature_std differ in length")
        if z_limit <= 0:
            raise ValueError("z_limit must be positive")
        self.feature_mean = np.asarray(feature_mean, dtype=np.float64)
        self.feature_std = np.asarray(feature_std, dtype=np.float64)
        self.z_limit = float(z_limit)

    def score(self, features: np.ndarray) -> np.ndarray:
        z = z_scores(features, self.feature_mean, self.feature_std)
        if z.shape[1] == 0:
            return np.zeros(z.shape[0])
        return np.abs(z).max(axis=1) / self.z_limit


class RunningBaseline:
    """A baseline for a station that has no model version yet: running mean and variance.

    Each batch is scored against the statistics of the samples before it, then merged into them
    (Chan's parallel update, vectorised), its samples above the threshold with a twentieth of
    the weight (ABNORMAL_WEIGHT): a fault must not teach the baseline that it is normal, or the
    samples after it would look abnormal against the polluted statistics, yet a lasting change
    of level is learnt in the end instead of holding the station in one endless episode.

    Nothing is scored (0.0) and every sample is learnt until `warmup` samples have been seen.
    Each feature keeps its own count: missing values (a signal not seen yet) count for nothing,
    and a feature with fewer than half of `warmup` values (a signal that appeared late) is not
    scored but learns from every sample. The history weighs at most `memory` values, so the
    statistics follow a slow change of product or season instead of freezing.
    """

    threshold = 1.0

    def __init__(
        self,
        n_features: int,
        *,
        z_limit: float = RUNNING_Z_LIMIT,
        warmup: int = 1_000,
        memory: int = 100_000,
    ) -> None:
        self.z_limit = float(z_limit)
        self.warmup = warmup
        self.memory = memory
        self.samples = 0
        self.abnormal_weight = ABNORMAL_WEIGHT
        self.count = np.zeros(n_features)
        self.mean = np.zeros(n_features)
        self.sum_squares = np.zeros(n_features)  # of deviations from the mean

    @property
    def std(self) -> np.ndarray:
        variance = self.sum_squares / np.maximum(self.count - 1.0, 1.0)
        return np.where(variance > 0, np.sqrt(variance), 1.0)

    def score(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        ready = self.count >= self.warmup / 2
        warming_up = self.samples < self.warmup or not ready.any()
        self.samples += features.shape[0]
        if warming_up:
            self._merge(features)
            return np.zeros(features.shape[0])
        z = z_scores(features[:, ready], self.mean[ready], self.std[ready])
        scores = np.abs(z).max(axis=1) / self.z_limit
        normal = scores <= self.threshold
        self._merge(features[normal])
        abnormal = features[~normal]
        if abnormal.shape[0]:
            warming = abnormal.copy()  # features still warming up: no row was judged by them
            warming[:, ready] = np.nan
            self._merge(warming)
            abnormal[:, ~ready] = np.nan
            self._merge(abnormal, weight=self.abnormal_weight)
        return scores

    def _merge(self, features: np.ndarray, weight: float = 1.0) -> None:
        present = ~np.isnan(features)
        values = present.sum(axis=0).astype(np.float64)
        if not values.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            batch_mean = np.where(present, features, 0.0).sum(axis=0) / values
            deviations = np.where(present, features - batch_mean, 0.0)
        batch_mean = np.where(values > 0, batch_mean, 0.0)
        batch_squares = np.square(deviations).sum(axis=0) * weight
        n = values * weight
        total = self.count + n
        safe_total = np.maximum(total, 1.0)
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / safe_total)
        self.sum_squares = self.sum_squares + batch_squares + delta**2 * self.count * n / safe_total
        # Forget the oldest weight beyond `memory` values, keeping mean and variance.
        excess = total > self.memory
        self.sum_squares[excess] *= self.memory / total[excess]
        self.count = np.where(excess, float(self.memory), total)


def explain(
    features: Sequence[float] | np.ndarray,
    feature_mean: Sequence[float],
    feature_std: Sequence[float],
    names: Sequence[str],
    top: int = 5,
) -> list[dict]:
    """The features that drove a sample's score, largest |z| first, and by how much.

    `share` is the feature's part of the sample's total squared z (the shares of all features
    add up to 1), so "torque.mean@20 0.62" reads: 62 % of the deviation from normal is the
    20-sample torque mean. `value` is None where the feature was missing. JSON-ready.
    """
    row = np.asarray(features, dtype=np.float64).reshape(-1)
    if not len(row) == len(names) == len(feature_mean) == len(feature_std):
        raise ValueError("features, names, feature_mean and feature_std differ in length")
    z = z_scores(row[None, :], feature_mean, feature_std)[0]
    squares = z * z
    total = float(squares.sum())
    order = np.argsort(-np.abs(z), kind="stable")[:top]
    return [
        {
            "feature": names[i],
            "signal": feature_signal(names[i]),
            "value": None if np.isnan(row[i]) else float(row[i]),
            "z": float(z[i]),
            "share": float(squares[i] / total) if total > 0 else 0.0,
        }
        for i in order
    ]
