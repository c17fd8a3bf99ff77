"""Defect detectors over window features, and the ONNX artifacts the scorer runs.

Every artifact has one float32 input ``features`` [N, F] and one float32 output ``score`` [N]
(higher = more anomalous). Missing features (NaN) are replaced by their training mean inside
the graph, so the artifact alone scores a sample exactly as training did.

Kinds:

- ``pca_t2q`` (the default): multivariate statistical process control. Features are
  standardised with the training mean and std, a PCA keeps the components that explain 95 % of
  the training variance, and a sample's score is max(T² / T²-limit, Q / Q-limit): T² measures
  how unusual it is inside the normal correlation structure, Q (squared prediction error) how far
  it leaves it. Both limits are the 99.9 % quantiles on the training rows the PCA was fitted on,
  so a score of 1 is "as far out as the most extreme normal samples". Built with onnx.helper.
- ``isolation_forest``: scikit-learn's IsolationForest (200 trees); the score is the
  forest's anomaly score in (0, 1] (about 0.5 for typical samples).
- ``supervised``: a gradient-boosted classifier on labelled rows (defects from quality events
  and alert feedback); the score is the probability of a defect.

Tree ensembles are exported as one ai.onnx.ml TreeEnsembleRegressor each (see _tree_ensemble).

Thresholds. For the unsupervised kinds the training rows are cut into blocks of 500 in time
order and every fifth block is held out for calibration (the neighbouring rows of a window are
nearly identical, so a random split would calibrate on rows the model has effectively seen).
The threshold comes from the scores of those held-out normal rows alone, no labels:

    threshold = q + 0.25 x (q - median),   q = 99.95 % quantile of the held-out scores

i.e. a quarter of the spread of normal scores above the extreme normal ones. For ``supervised``
the threshold maximises F1 on the held-out blocks (0.5 when they hold too few defects).

Parity. Before `train` returns it scores the held-out rows with the ONNX artifact through
onnxruntime and raises ParityError unless they reproduce the Python model's scores; the rows
and scores are kept on the result so the registry can repeat the check on the stored bytes.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from foresight.explain import DEFAULT_Z_LIMIT, BaselineScorer, RunningBaseline, explain, z_scores

__all__ = [
    "DEFAULT_KIND",
    "KINDS",
    "UNSUPERVISED_KINDS",
    "ArtifactError",
    "BaselineScorer",
    "DetectorError",
    "InsufficientData",
    "ModelLoadError",
    "OnnxModel",
    "ParityError",
    "RunningBaseline",
    "TrainedDetector",
    "drift_shares",
    "explain",
    "population_stability_index",
    "train",
    "verify_parity",
]

KINDS = ("pca_t2q", "isolation_forest", "supervised")
UNSUPERVISED_KINDS = ("pca_t2q", "isolation_forest")
DEFAULT_KIND = "pca_t2q"

INPUT_NAME = "features"
OUTPUT_NAME = "score"
_FILLED = "aegis_filled"  # the input after missing features were filled
OPSET = 17
ML_OPSET = 3
# IR version 8 goes with opset 17; onnx would otherwise stamp its newest IR version, which an
# older onnxruntime refuses to load.
IR_VERSION = 8

MIN_TRAINING_ROWS = 500
MIN_LABELLED_ROWS = 20  # of each class, for the supervised kind
BLOCK_ROWS = 500
CALIBRATION_EVERY = 5
VARIANCE_KEPT = 0.95
LIMIT_QUANTILE = 0.999
THRESHOLD_QUANTILE = 0.9995
THRESHOLD_MARGIN = 0.25
PARITY_ROWS = 2_000
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-5
DRIFT_QUANTILES = np.linspace(0.1, 0.9, 9)
_CHUNK_ROWS = 100_000

Progress = Callable[[float, str], None]


class DetectorError(Exception):
    """Training or loading a detector failed; the message says why."""


class InsufficientData(DetectorError, ValueError):
    """Too few training rows, or too few labels of each class for a supervised model."""


class ArtifactError(DetectorError):
    """An ONNX artifact cannot be trusted."""


class ModelLoadError(ArtifactError):
    """The bytes are not a loadable Aegis detector (corrupt, truncated, wrong inputs)."""


class ParityError(ArtifactError):
    """The artifact does not reproduce its Python model's scores."""


@dataclass
class TrainedDetector:
    kind: str
    onnx: bytes
    threshold: float
    feature_mean: list[float]
    feature_std: list[float]
    metrics: dict[str, Any]
    parity_features: np.ndarray = field(repr=False)  # held-out rows the parity check scored
    parity_scores: np.ndarray = field(repr=False)  # what the Python model scored on them
    _score: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()

    def python_scores(self, features: np.ndarray) -> np.ndarray:
        """Scores of the fitted Python model (float64), the reference for the ONNX artifact."""
        return self._score(_as_features(features))


def _as_features(features: Any) -> np.ndarray:
    matrix = np.ascontiguousarray(features, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"features must be rows x features, got shape {matrix.shape}")
    return matrix


def _fill_missing(features: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """NaN → training mean, in float32 exactly as the graph's IsNaN/Where does it."""
    return np.where(np.isnan(features), fill, features)


def _training_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per feature (float64). A feature that never varied in training gets std 1,
    so its z is its deviation in its own unit, and one never seen (all NaN) gets mean 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: a signal never seen
        mean = np.nanmean(features, axis=0, dtype=np.float64)
        std = np.nanstd(features, axis=0, dtype=np.float64)
    mean = np.nan_to_num(mean, nan=0.0)
    constant = ~(std > 1e-9 * (np.abs(mean) + 1.0))  # also NaN
    return mean, np.where(constant, 1.0, std)


def _split_blocks(n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit and calibration row indices: every CALIBRATION_EVERY-th block of rows is held out."""
    block = np.arange(n_rows) // BLOCK_ROWS
    held_out = block % CALIBRATION_EVERY == CALIBRATION_EVERY - 1
    if not held_out.any():  # fewer than CALIBRATION_EVERY blocks: hold out the last fifth
        held_out = np.arange(n_rows) >= n_rows - max(n_rows // CALIBRATION_EVERY, 1)
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


def _normal_threshold(scores: np.ndarray) -> tuple[float, dict[str, float]]:
    """The alert threshold from scores of held-out normal rows (see the module docstring)."""
    high = float(np.quantile(scores, THRESHOLD_QUANTILE))
    median = float(np.median(scores))
    threshold = high + THRESHOLD_MARGIN * max(high - median, 0.0)
    return threshold, {"calibration_score_median": median, "calibration_score_high": high}


def _chunked(score: Callable[[np.ndarray], np.ndarray], features: np.ndarray) -> np.ndarray:
    """score(rows) over row chunks, concatenated along the last axis (bounded float64 copies)."""
    if features.shape[0] <= _CHUNK_ROWS:
        return score(features)
    parts = [score(features[s : s + _CHUNK_ROWS]) for s in range(0, features.shape[0], _CHUNK_ROWS)]
    return np.concatenate(parts, axis=-1)


# --- ONNX assembly ------------------------------------------------------------------------------


def _const(name: str, value: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _artifact(
    *,
    kind: str,
    n_features: int,
    fill: np.ndarray,
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    opset_imports: list[onnx.OperatorSetIdProto] | None = None,
) -> bytes:
    """A model: `features` → fill missing → `_FILLED` → `nodes` → `score` (shape [N])."""
    head = [
        helper.make_node("IsNaN", [INPUT_NAME], ["aegis_missing"]),
        helper.make_node("Where", ["aegis_missing", "aegis_fill", INPUT_NAME], [_FILLED]),
    ]
    graph = helper.make_graph(
        head + nodes,
        f"aegis_{kind}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=[_const("aegis_fill", fill), *initializers],
    )
    imports = {entry.domain: entry.version for entry in opset_imports or []}
    imports[""] = max(imports.get("", 0), OPSET)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in imports.items()],
        producer_name="aegis-foresight",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"aegis.kind": kind, "aegis.features": str(n_features)})
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _tree_ensemble(trees: list[Any], leaf_weights: list[np.ndarray], output: str) -> onnx.NodeProto:
    """One ai.onnx.ml TreeEnsembleRegressor that adds up, over scikit-learn trees (`tree_`
    objects), the weight of the leaf each row falls in ([N, 1] float32).

    Thresholds are rounded down to float32: for a float32 input x, x <= t exactly when
    x <= the largest float32 not above t, so onnxruntime branches exactly like scikit-learn
    (which compares float32 inputs with float64 thresholds); plain rounding to nearest would
    send rows lying on a rounded-up threshold the other way.

    skl2onnx is not used for trees: 1.20 exports an isolation forest as one subgraph per tree
    (200 trees: 19 s to convert, 6-10 s to load in onnxruntime, too slow for a scorer that swaps
    models within a second) and fails on scikit-learn 1.9's HistGradientBoosting.
    """
    parts: dict[str, list[np.ndarray]] = {key: [] for key in _TREE_KEYS}
    for tree_id, (tree, weights) in enumerate(zip(trees, leaf_weights, strict=True)):
        nodes = np.arange(tree.node_count)
        leaf = tree.children_left == -1
        thresholds = _float32_at_most(np.asarray(tree.threshold, dtype=np.float64))
        parts["tree"].append(np.full(tree.node_count, tree_id))
        parts["node"].append(nodes)
        parts["feature"].append(np.where(leaf, 0, tree.feature))
        parts["leaf"].append(leaf)
        parts["threshold"].append(np.where(leaf, np.float32(0), thresholds))
        parts["true"].append(np.where(leaf, 0, tree.children_left))  # x <= threshold
        parts["false"].append(np.where(leaf, 0, tree.children_right))
        parts["target_tree"].append(np.full(int(leaf.sum()), tree_id))
        parts["target_node"].append(nodes[leaf])
        parts["weight"].append(np.asarray(weights, dtype=np.float64)[leaf])
    flat = {key: np.concatenate(values) for key, values in parts.items()}
    return helper.make_node(
        "TreeEnsembleRegressor",
        [_FILLED],
        [output],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        nodes_treeids=flat["tree"].tolist(),
        nodes_nodeids=flat["node"].tolist(),
        nodes_featureids=flat["feature"].tolist(),
        nodes_modes=["LEAF" if leaf else "BRANCH_LEQ" for leaf in flat["leaf"]],
        nodes_values=flat["threshold"].astype(np.float32).tolist(),
        nodes_truenodeids=flat["true"].tolist(),
        nodes_falsenodeids=flat["false"].tolist(),
        target_treeids=flat["target_tree"].tolist(),
        target_nodeids=flat["target_node"].tolist(),
        target_ids=[0] * len(flat["target_node"]),
        target_weights=flat["weight"].tolist(),
    )


_TREE_KEYS = ("tree", "node", "feature", "leaf", "threshold", "true", "false")
_TREE_KEYS += ("target_tree", "target_node", "weight")


# --- Detectors ----------------------------------------------------------------------------------


class _PcaT2Q:
    kind = "pca_t2q"

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.fill = mean.astype(np.float32)
        # The artifact centres float32 inputs on a float32 mean, which is exact near the mean;
        # centring on the float64 mean here instead would differ by the mean's rounding, and for
        # a feature that barely moves at a high level (400.0 V +- 0.0001) that rounding is a
        # large part of its std: the parity check would fail.
        self.mean = self.fill.astype(np.float64)
        self.std = std.astype(np.float32).astype(np.float64)

    def fit(self, features: np.ndarray) -> dict[str, Any]:
        n_rows, n_features = features.shape
        # Accumulated a chunk at a time: a day of one station is millions of rows.
        covariance = np.zeros((n_features, n_features))
        for start in range(0, n_rows, _CHUNK_ROWS):
            z = self._standardise(features[start : start + _CHUNK_ROWS])
            covariance += z.T @ z
        covariance /= max(n_rows - 1, 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        eigenvectors = eigenvectors[:, order]
        total = float(eigenvalues.sum())
        if total <= 0:
            raise InsufficientData("every feature was constant over the training range")
        explained = np.cumsum(eigenvalues) / total
        kept = int(np.searchsorted(explained, VARIANCE_KEPT) + 1)
        # Leave at least one component to the residual (Q), and none without variance to T².
        kept = max(1, min(kept, n_features - 1, int((eigenvalues > 1e-9 * total).sum())))
        self.loadings = eigenvectors[:, :kept]
        self.eigenvalues = eigenvalues[:kept]
        t2, q = _chunked(lambda rows: np.stack(self._statistics(self._standardise(rows))), features)
        self.t2_limit = max(float(np.quantile(t2, LIMIT_QUANTILE)), 1e-9)
        # Float32 rounding in the artifact leaves a residual of ~1e-6 per feature: a Q limit
        # below that would turn rounding into alarms.
        self.q_limit = max(float(np.quantile(q, LIMIT_QUANTILE)), 1e-6 * n_features)
        return {
            "components": kept,
            "explained_variance": float(explained[kept - 1]),
            "t2_limit": self.t2_limit,
            "q_limit": self.q_limit,
            "limit_quantile": LIMIT_QUANTILE,
        }

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        filled = _fill_missing(features, self.fill).astype(np.float64)
        return (filled - self.mean) / self.std

    def _statistics(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        projected = z @ self.loadings
        t2 = (np.square(projected) / self.eigenvalues).sum(axis=1)
        q = np.square(z - projected @ self.loadings.T).sum(axis=1)
        return t2, q

    def scores(self, features: np.ndarray) -> np.ndarray:
        return _chunked(self._chunk_scores, features)

    def _chunk_scores(self, features: np.ndarray) -> np.ndarray:
        t2, q = self._statistics(self._standardise(features))
        return np.maximum(t2 / self.t2_limit, q / self.q_limit)

    def artifact(self, n_features: int) -> bytes:
        node = helper.make_node
        nodes = [
            node("Sub", [_FILLED, "pca_mean"], ["pca_centred"]),
            node("Div", ["pca_centred", "pca_std"], ["pca_z"]),
            node("MatMul", ["pca_z", "pca_loadings"], ["pca_projected"]),
            node("Mul", ["pca_projected", "pca_projected"], ["pca_projected_sq"]),
            node("Mul", ["pca_projected_sq", "pca_inv_eigenvalues"], ["pca_t2_terms"]),
            node("ReduceSum", ["pca_t2_terms", "pca_axis"], ["pca_t2"], keepdims=0),
            node("MatMul", ["pca_projected", "pca_loadings_t"], ["pca_reconstructed"]),
            node("Sub", ["pca_z", "pca_reconstructed"], ["pca_residual"]),
            node("Mul", ["pca_residual", "pca_residual"], ["pca_residual_sq"]),
            node("ReduceSum", ["pca_residual_sq", "pca_axis"], ["pca_q"], keepdims=0),
            node("Mul", ["pca_t2", "pca_inv_t2_limit"], ["pca_t2_ratio"]),
            node("Mul", ["pca_q", "pca_inv_q_limit"], ["pca_q_ratio"]),
            node("Max", ["pca_t2_ratio", "pca_q_ratio"], [OUTPUT_NAME]),
        ]
        initializers = [
            _const("pca_mean", self.mean),
            _const("pca_std", self.std),
            _const("pca_loadings", self.loadings),
            _const("pca_loadings_t", np.ascontiguousarray(self.loadings.T)),
            _const("pca_inv_eigenvalues", 1.0 / self.eigenvalues),
            _const("pca_axis", [1], np.int64),
            _const("pca_inv_t2_limit", 1.0 / self.t2_limit),
            _const("pca_inv_q_limit", 1.0 / self.q_limit),
        ]
        return _artifact(
            kind=self.kind,
            n_features=n_features,
            fill=self.fill,
            nodes=nodes,
            initializers=initializers,
        )


def _average_path_length(samples: np.ndarray) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n
    points, which normalises isolation depths (Liu, Ting and Zhou, 2008)."""
    samples = np.asarray(samples, dtype=np.float64)
    length = np.where(samples == 2, 1.0, 0.0)
    big = samples > 2
    length[big] = (
        2.0 * (np.log(samples[big] - 1.0) + np.euler_gamma)
        - 2.0 * (samples[big] - 1.0) / samples[big]
    )
    return length


def _float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each value: for a float32 x, x <= value exactly when
    x <= the result, so a float32 tree in onnxruntime branches exactly like scikit-learn's."""
    rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


class _IsolationForest:
    kind = "isolation_forest"
    n_estimators = 300
    # Rows per tree. The textbook 256 isolates a drift in a few of 58 features poorly (a random
    # split seldom picks them): on the synthetic torque drift 256 rows flagged 25 % of the
    # drifting samples, 4,096 rows 70-85 % with as few false alarms. 300 such trees are an
    # 12 MB artifact that loads in about 0.4 s and scores 1,000 rows in about 8 ms.
    max_samples = 4_096

    def __init__(self, mean: np.ndarray, std: np.ndarray, *, random_state: int) -> None:
        self.fill = mean.astype(np.float32)
        self.random_state = random_state

    def fit(self, features: np.ndarray) -> dict[str, Any]:
        from sklearn.ensemble import IsolationForest

        # Trees split raw features: scaling would change nothing but add float32 rounding.
        self.forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, features.shape[0]),
            random_state=self.random_state,
        )
        self.forest.fit(_fill_missing(features, self.fill))
        return {"n_estimators": self.n_estimators, "max_samples": int(self.forest.max_samples_)}

    def scores(self, features: np.ndarray) -> np.ndarray:
        return -self.forest.score_samples(_fill_missing(features, self.fill))

    def artifact(self, n_features: int) -> bytes:
        """score = 2 ** (-mean isolation depth / c(max_samples)), as scikit-learn computes it."""
        trees = [estimator.tree_ for estimator in self.forest.estimators_]
        # Per tree scikit-learn adds up the nodes on the path (the root counts 1), plus
        # c(samples left in the leaf) for the part of the tree that was not grown, minus one.
        depths = [
            np.asarray(tree.compute_node_depths(), dtype=np.float64)
            + _average_path_length(tree.n_node_samples)
            - 1.0
            for tree in trees
        ]
        scale = -np.log(2.0) / (len(trees) * _average_path_length([self.forest.max_samples_])[0])
        nodes = [
            _tree_ensemble(trees, depths, "iforest_depth_sum"),
            helper.make_node("Mul", ["iforest_depth_sum", "iforest_scale"], ["iforest_exponent"]),
            helper.make_node("Exp", ["iforest_exponent"], ["iforest_score"]),
            helper.make_node("Reshape", ["iforest_score", "aegis_flat"], [OUTPUT_NAME]),
        ]
        return _artifact(
            kind=self.kind,
            n_features=n_features,
            fill=self.fill,
            nodes=nodes,
            initializers=[_const("iforest_scale", scale), _const("aegis_flat", [-1], np.int64)],
            opset_imports=[helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        )


class _Supervised:
    kind = "supervised"
    max_fit_rows = 200_000

    def __init__(self, mean: np.ndarray, std: np.ndarray, *, random_state: int) -> None:
        from sklearn.ensemble import GradientBoostingClassifier

        self.fill = mean.astype(np.float32)
        # Shallow boosted trees, each split choosing among sqrt(F) features: 32,000 rows x 58
        # features train in about 7 s on one core (all features: 38 s). init="zero" starts
        # from log-odds 0, so the model is its trees alone and exports exactly.
        self.classifier = GradientBoostingClassifier(
            n_estimators=150,
            max_depth=3,
            learning_rate=0.1,
            subsample=0.5,
            max_features="sqrt",
            init="zero",
            random_state=random_state,
        )

    def fit(self, features: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        rows = np.arange(labels.size)
        if rows.size > self.max_fit_rows:  # every defect row, evenly spaced good rows
            good = rows[labels == 0]
            keep = self.max_fit_rows - int(labels.sum())
            good = good[np.linspace(0, good.size - 1, max(keep, 1)).astype(int)]
            rows = np.union1d(rows[labels == 1], good)
        y = labels[rows]
        # Defects are rare: balanced weights keep them from being ignored; the threshold is then
        # chosen on held-out rows, so the probabilities need not be calibrated.
        weights = np.where(y == 1, y.size / (2.0 * y.sum()), y.size / (2.0 * (y.size - y.sum())))
        self.classifier.fit(_fill_missing(features[rows], self.fill), y, sample_weight=weights)
        return {"estimators": int(self.classifier.n_estimators_), "fit_rows_used": int(rows.size)}

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(_fill_missing(features, self.fill))[:, 1]

    def artifact(self, n_features: int) -> bytes:
        """probability = sigmoid(learning rate x the sum of the trees' leaf values)."""
        rate = self.classifier.learning_rate
        trees = [stage[0].tree_ for stage in self.classifier.estimators_]
        values = [rate * np.asarray(tree.value, dtype=np.float64)[:, 0, 0] for tree in trees]
        nodes = [
            _tree_ensemble(trees, values, "supervised_log_odds"),
            helper.make_node("Sigmoid", ["supervised_log_odds"], ["supervised_probability"]),
            helper.make_node("Reshape", ["supervised_probability", "aegis_flat"], [OUTPUT_NAME]),
        ]
        return _artifact(
            kind=self.kind,
            n_features=n_features,
            fill=self.fill,
            nodes=nodes,
            initializers=[_const("aegis_flat", [-1], np.int64)],
            opset_imports=[helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        )


def _best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, Any]]:
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    if labels.sum() < 5 or labels.sum() == labels.size:
        return 0.5, {"threshold_rule": "0.5 (too few held-out defects to choose)"}
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    best = int(np.argmax(f1))
    return float(thresholds[best]), {
        "threshold_rule": "max F1 on held-out blocks",
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "f1": float(f1[best]),
        "roc_auc": float(roc_auc_score(labels, scores)),
    }


def drift_shares(features: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of rows in each of the len(edges)+1 bins of each feature (features x bins).

    `edges` is bins-1 x features (the training deciles); missing values are left out."""
    features = np.asarray(features)
    edges = np.asarray(edges, dtype=np.float64)
    shares = np.zeros((features.shape[1], len(edges) + 1))
    for f in range(features.shape[1]):
        column = features[:, f].astype(np.float64)
        column = column[~np.isnan(column)]
        if column.size:
            bins = np.searchsorted(edges[:, f], column, side="left")  # edges below the value
            shares[f] = np.bincount(bins, minlength=len(edges) + 1) / column.size
    return shares


def population_stability_index(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """PSI per feature between two drift_shares tables (> 0.25 is usually called a shift)."""
    expected = np.clip(np.asarray(reference, dtype=np.float64), 1e-4, None)
    actual = np.clip(np.asarray(current, dtype=np.float64), 1e-4, None)
    return ((actual - expected) * np.log(actual / expected)).sum(axis=1)


def train(
    kind: str,
    X_train: np.ndarray,
    y: np.ndarray | None = None,
    *,
    progress: Progress | None = None,
    random_state: int = 0,
) -> TrainedDetector:
    """Fit a detector on window features (rows in time order), export and verify its artifact.

    Unsupervised kinds ignore `y`: the rows are assumed normal and the threshold comes from them
    alone. `supervised` needs `y` (1 = defect, 0 = good) with both classes. `progress(fraction,
    message)` is called as training goes (for the Celery task's progress).
    """

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    if kind not in KINDS:
        raise DetectorError(f"unknown detector kind {kind!r}; one of {', '.join(KINDS)}")
    features = _as_features(X_train)
    n_rows, n_features = features.shape
    report(0.0, f"checking {n_rows} training rows of {n_features} features")
    if n_rows < MIN_TRAINING_ROWS:
        raise InsufficientData(f"{n_rows} training rows; at least {MIN_TRAINING_ROWS} needed")
    if n_features < 2:
        raise InsufficientData("a detector needs at least two features")
    labels = None
    if kind == "supervised":
        labels = _check_labels(y, n_rows)

    started = time.monotonic()
    mean, std = _training_statistics(features)
    fit_rows, held_out = _split_blocks(n_rows)
    report(0.1, f"fitting {kind} on {fit_rows.size} rows")
    if kind == "pca_t2q":
        model: Any = _PcaT2Q(mean, std)
        metrics = model.fit(features[fit_rows])
    elif kind == "isolation_forest":
        model = _IsolationForest(mean, std, random_state=random_state)
        metrics = model.fit(features[fit_rows])
    else:
        model = _Supervised(mean, std, random_state=random_state)
        metrics = model.fit(features[fit_rows], labels[fit_rows])

    report(0.5, f"calibrating the threshold on {held_out.size} held-out rows")
    held_out_scores = model.scores(features[held_out])
    if labels is None:
        threshold, calibration = _normal_threshold(held_out_scores)
        calibration["threshold_rule"] = (
            f"q + {THRESHOLD_MARGIN} x (q - median), q = {THRESHOLD_QUANTILE:.2%} quantile of"
            " held-out training scores"
        )
    else:
        threshold, calibration = _best_f1_threshold(held_out_scores, labels[held_out])
    z_limit = _baseline_z_limit(features[held_out], mean, std)

    report(0.7, "exporting to ONNX")
    artifact = model.artifact(n_features)
    report(0.85, "verifying the ONNX artifact on held-out rows")
    spaced = np.linspace(0, held_out.size - 1, min(PARITY_ROWS, held_out.size)).astype(int)
    parity_rows = held_out[spaced]
    parity_features = features[parity_rows]
    parity_scores = held_out_scores[spaced]
    difference = _parity_difference(artifact, parity_features, parity_scores)

    edges = _drift_edges(features)
    metrics.update(calibration)
    metrics.update(
        {
            "rows": n_rows,
            "fit_rows": int(fit_rows.size),
            "held_out_rows": int(held_out.size),
            "held_out_above_threshold": float(np.mean(held_out_scores > threshold)),
            "parity_rows": int(parity_rows.size),
            "parity_max_abs_diff": difference,
            "baseline_z_limit": z_limit,
            "drift_reference": {
                "edges": edges.T.tolist(),
                "shares": drift_shares(features, edges).tolist(),
            },
            "training_seconds": round(time.monotonic() - started, 3),
        }
    )
    if labels is not None:
        metrics["defect_rows"] = int(labels.sum())
    report(1.0, f"trained {kind}: threshold {threshold:.4g}")
    return TrainedDetector(
        kind=kind,
        onnx=artifact,
        threshold=float(threshold),
        feature_mean=mean.tolist(),
        feature_std=std.tolist(),
        metrics=metrics,
        parity_features=parity_features,
        parity_scores=parity_scores,
        _score=model.scores,
    )


def _check_labels(y: np.ndarray | None, n_rows: int) -> np.ndarray:
    if y is None:
        raise InsufficientData("a supervised detector needs labels")
    labels = np.asarray(y).reshape(-1)
    if labels.size != n_rows or not np.isin(labels, (0, 1)).all():
        raise InsufficientData(f"labels must be one 0 (good) or 1 (defect) per row ({n_rows})")
    labels = labels.astype(np.int64)
    defects = int(labels.sum())
    if min(defects, n_rows - defects) < MIN_LABELLED_ROWS:
        raise InsufficientData(
            f"{defects} defect and {n_rows - defects} good rows; a supervised detector needs"
            f" at least {MIN_LABELLED_ROWS} of each"
        )
    return labels


def _baseline_z_limit(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """The |z| a fail-open BaselineScorer of this model should treat as its threshold."""
    largest = np.abs(z_scores(features, mean, std)).max(axis=1)
    limit, _ = _normal_threshold(largest)
    return max(limit, DEFAULT_Z_LIMIT)


def _drift_edges(features: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        edges = np.nanquantile(features.astype(np.float64), DRIFT_QUANTILES, axis=0)
    return np.nan_to_num(edges, nan=0.0)


class OnnxModel:
    """A detector artifact loaded into onnxruntime, one thread: the scorer runs one model per
    station next to PostgreSQL and NATS on small machines, and batches are small."""

    def __init__(self, onnx_bytes: bytes) -> None:
        try:
            onnx_bytes = bytes(onnx_bytes)
            proto = onnx.load_from_string(onnx_bytes)
            onnx.checker.check_model(proto)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            # Fatal only: a failing call is raised, counted and logged by the caller.
            options.log_severity_level = 4
            self._session = onnxruntime.InferenceSession(
                onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # protobuf, checker and runtime errors alike
            raise ModelLoadError(f"the ONNX artifact does not load: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
            raise ModelLoadError(
                f"an Aegis detector takes {INPUT_NAME!r} and gives {OUTPUT_NAME!r}; this artifact"
                f" takes {[i.name for i in inputs]} and gives {[o.name for o in outputs]}"
            )
        shape = inputs[0].shape
        if inputs[0].type != "tensor(float)" or len(shape) != 2:
            raise ModelLoadError(f"{INPUT_NAME!r} must be float32 rows x features, not {shape}")
        self.n_features = shape[1] if isinstance(shape[1], int) else None
        properties = {p.key: p.value for p in proto.metadata_props}
        self.kind = properties.get("aegis.kind", "")

    def score(self, features: np.ndarray) -> np.ndarray:
        matrix = _as_features(features)
        if self.n_features is not None and matrix.shape[1] != self.n_features:
            raise ValueError(f"{matrix.shape[1]} features given, the model takes {self.n_features}")
        if matrix.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        (scores,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: matrix})
        return np.asarray(scores, dtype=np.float64).reshape(-1)


def _parity_difference(
    onnx_bytes: bytes,
    features: np.ndarray,
    expected: np.ndarray,
    *,
    rtol: float = PARITY_RTOL,
    atol: float = PARITY_ATOL,
) -> float:
    try:
        scores = OnnxModel(onnx_bytes).score(features)
    except ModelLoadError as exc:
        raise ParityError(str(exc)) from exc
    except Exception as exc:  # whatever onnxruntime raises, the artifact is unfit
        raise ParityError(f"the ONNX artifact fails to score the held-out rows: {exc}") from exc
    expected = np.asarray(expected, dtype=np.float64).reshape(-1)
    if scores.shape != expected.shape:
        raise ParityError(f"the ONNX artifact gave {scores.size} scores for {expected.size} rows")
    mismatched = ~np.isclose(scores, expected, rtol=rtol, atol=atol)
    if mismatched.any():
        worst = int(np.argmax(np.where(mismatched, np.abs(scores - expected), -1.0)))
        raise ParityError(
            f"the ONNX artifact differs from the Python model on {int(mismatched.sum())} of"
            f" {expected.size} held-out rows (row {worst}: {scores[worst]:.6g} instead of"
            f" {expected[worst]:.6g})"
        )
    return float(np.abs(scores - expected).max()) if expected.size else 0.0


def verify_parity(
    onnx_bytes: bytes,
    X_holdout: np.ndarray,
    expected_scores: np.ndarray,
    *,
    rtol: float = PARITY_RTOL,
    atol: float = PARITY_ATOL,
) -> None:
    """Raise ParityError unless the artifact loads and reproduces `expected_scores` on the rows.

    A flipped byte, a truncated file or another model's artifact fails here, before the bytes
    are registered or swapped in.
    """
    _parity_difference(onnx_bytes, X_holdout, expected_scores, rtol=rtol, atol=atol)
