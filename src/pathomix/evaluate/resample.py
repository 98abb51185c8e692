"""Every bootstrap resample at once: a resample is a weight per row (how often its patient was drawn).

:func:`pathomix.evaluate.metrics.bootstrap_ci` draws ``n`` patient-level resamples. Scoring each with
scikit-learn costs ~1 ms of input checks per call (19 200 calls on the demo: most of the evaluation job), so
the metrics below score all resamples of one model × task in a few array operations instead. A resample that
draws a patient twice is the same data as that patient's rows with weight 2 — every metric here is a sum over
rows or over pairs of rows — so these are the libraries' numbers, not approximations:
``tests/test_evaluate.py`` checks each against scikit-learn / lifelines on the resampled rows. The point
estimates and the per-fold values are still computed by the libraries (:mod:`pathomix.evaluate.metrics`);
the time-dependent AUC (scikit-survival, with its censoring weights) keeps the per-resample loop.

Each function takes the test rows ``df`` and ``W`` (resamples × rows) and returns one value per resample
(NaN where the metric is undefined on that resample, as the library's would be).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

Vectorised = Callable[[pd.DataFrame, np.ndarray], np.ndarray]
MAX_PAIR_ROWS = 4000  # the C-index holds a rows × rows pair matrix: above this, the per-resample loop


def resample_weights(codes: np.ndarray, n_patients: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, rows): how often each row's patient is drawn in each of ``n`` resamples, drawing as
    :func:`~pathomix.evaluate.metrics.bootstrap_ci`'s contract says (``rng.integers(0, P, P)`` per resample)."""
    draws = np.stack([rng.integers(0, n_patients, n_patients) for _ in range(n)]) if n else np.zeros((0, 0), int)
    flat = (draws + np.arange(n)[:, None] * n_patients).ravel()
    counts = np.bincount(flat, minlength=n * n_patients).reshape(n, n_patients)
    return counts[:, codes].astype(float)


def _groups(values: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in sorted ``values``."""
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1]])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def weighted_auc(score: np.ndarray, positive: np.ndarray, W: np.ndarray) -> np.ndarray:
    """ROC AUC per resample: P(score of a positive > a negative's) + ½ P(tie), pairs weighted (Mann–Whitney;
    equal to the trapezoidal area scikit-learn computes). NaN without a positive or a negative."""
    order = np.argsort(score, kind="stable")
    starts, Ws, pos = _groups(score[order]), W[:, order], positive[order]
    P = np.add.reduceat(Ws * pos, starts, axis=1)
    N = np.add.reduceat(Ws * ~pos, starts, axis=1)
    below = np.cumsum(N, axis=1) - N
    return _ratio((P * (below + 0.5 * N)).sum(axis=1), P.sum(axis=1) * N.sum(axis=1))


def weighted_ap(score: np.ndarray, positive: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average precision per resample: Σ (recall_k − recall_k−1) · precision_k over the distinct scores,
    highest first (scikit-learn's definition). NaN without a positive."""
    order = np.argsort(-score, kind="stable")
    starts, Ws, pos = _groups(-score[order]), W[:, order], positive[order]
    tp = np.cumsum(np.add.reduceat(Ws * pos, starts, axis=1), axis=1)
    fp = np.cumsum(np.add.reduceat(Ws * ~pos, starts, axis=1), axis=1)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = _ratio(tp, tp[:, -1:])
    ap = (np.diff(recall, axis=1, prepend=0.0) * precision).sum(axis=1)
    return np.where(tp[:, -1] > 0, ap, np.nan)


def _by_signature(present: np.ndarray, score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Resamples grouped by which classes they hold (``present``, resamples × classes, bool): ``score(classes,
    rows of those resamples)`` per group, as the libraries score each resample on the classes it holds."""
    out = np.full(len(present), np.nan)
    signatures, which = np.unique(present, axis=0, return_inverse=True)
    for k, signature in enumerate(signatures):
        rows = np.flatnonzero(which.ravel() == k)
        out[rows] = score(np.flatnonzero(signature), rows)
    return out


def _labels(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = df.y_true.to_numpy(int)
    probs = df[[c for c in df.columns if c.startswith("prob_")]].to_numpy(float)
    return y, probs, np.eye(probs.shape[1], dtype=bool)[y]


def auc(df: pd.DataFrame, W: np.ndarray) -> np.ndarray:
    """:func:`pathomix.evaluate.metrics._auc`: binary AUC, else one-vs-rest macro over the classes present
    in the resample, probabilities renormalised over them."""
    y, p, onehot = _labels(df)
    if p.shape[1] == 2:
        return weighted_auc(p[:, 1], y == 1, W)

    def score(classes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if len(classes) < 2:
            return np.full(len(rows), np.nan)
        q = p[:, classes] / np.maximum(p[:, classes].sum(axis=1, keepdims=True), np.finfo(float).tiny)
        if len(classes) == 2:
            return weighted_auc(q[:, 1], y == classes[1], W[rows])
        return np.mean([weighted_auc(q[:, j], y == c, W[rows]) for j, c in enumerate(classes)], axis=0)

    return _by_signature(W @ onehot > 0, score)


def ap(df: pd.DataFrame, W: np.ndarray) -> np.ndarray:
    """:func:`pathomix.evaluate.metrics._ap`: of class 1 for binary tasks, else macro over the classes present."""
    y, p, onehot = _labels(df)
    present = W @ onehot > 0
    if p.shape[1] == 2:
        return np.where(present.sum(axis=1) == 2, weighted_ap(p[:, 1], y == 1, W), np.nan)

    def score(classes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if len(classes) < 2:
            return np.full(len(rows), np.nan)
        return np.mean([weighted_ap(p[:, c], y == c, W[rows]) for c in classes], axis=0)

    return _by_signature(present, score)


def confusion(df: pd.DataFrame, W: np.ndarray) -> np.ndarray:
    """(resamples, K, K) weighted confusion matrices, rows y_true, columns y_pred."""
    y, pred = df.y_true.to_numpy(int), df.y_pred.to_numpy(int)
    k = int(max(y.max(), pred.max())) + 1
    cells = np.zeros((len(y), k * k))
    cells[np.arange(len(y)), y * k + pred] = 1
    return (W @ cells).reshape(len(W), k, k)


def accuracy(df: pd.DataFrame, W: np.ndarray) -> np.ndarray:
    C = confusion(df, W)
    return _ratio(np.trace(C, axis1=1, axis2=2), C.sum(axis=(1, 2)))


def balanced_accuracy(df: pd.DataFrame, W: np.ndarray) -> np.ndarray:
    """Mean recall over the classes with support (scikit-learn drops the others, with a warning)."""
    C = confusion(df, W)
    support = C.sum(axis=2)
    recall = _ratio(np.diagonal(C, axis1=1, axis2=2), support)
    return _ratio(np.nansum(recall, axis=1), (support > 0).sum(axis=1).astype(float))


def f1(df: pd.DataFrame, W: np.ndarray) -> np.ndarray:
    """Macro F1 over the labels in y_true or y_pred: 2·TP / (support + predicted)."""
    C = confusion(df, W)
    both = C.sum(axis=2) + C.sum(axis=1)
    per_class = np.divide(2 * np.diagonal(C, axis1=1, axis2=2), both, out=np.zeros_like(both), where=both > 0)
    return _ratio(per_class.sum(axis=1), (both > 0).sum(axis=1).astype(float))


def kappa(df: pd.DataFrame, W: np.ndarray) -> np.ndarray:
    """Cohen's kappa over the labels in y_true or y_pred (quadratic weights for grading, by label position)."""
    C = confusion(df, W)
    quadratic = df.task.iloc[0] == "grading"

    def score(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        c = C[np.ix_(rows, labels, labels)]
        expected = np.einsum("bi,bj->bij", c.sum(axis=1), c.sum(axis=2)) / c.sum(axis=(1, 2))[:, None, None]
        pos = np.arange(len(labels))
        w = (pos[:, None] - pos[None, :]) ** 2 if quadratic else 1 - np.eye(len(labels))
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1 - (w * c).sum(axis=(1, 2)) / (w * expected).sum(axis=(1, 2))

    return _by_signature(C.sum(axis=2) + C.sum(axis=1) > 0, score)


def c_index(df: pd.DataFrame, W: np.ndarray) -> np.ndarray:
    """Harrell's C as lifelines counts it: (i, j) comparable when i has the event and t_i < t_j, or t_i = t_j
    and j is censored; concordant when i's risk is higher, ½ for equal risks; pairs weighted w_i · w_j."""
    t, e, risk = df.time.to_numpy(float), df.event.to_numpy(bool), df.risk.to_numpy(float)
    comparable = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :]))
    credit = comparable * ((risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :]))
    return _ratio(np.einsum("bi,ij,bj->b", W, credit, W), np.einsum("bi,ij,bj->b", W, comparable.astype(float), W))


VECTORISED: dict[str, Vectorised] = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "auc": auc,
                                     "ap": ap, "f1": f1, "kappa": kappa, "c_index": c_index}


def vectorised(name: str | None, n_rows: int) -> Vectorised | None:
    """The all-resamples form of metric ``name``, or None (use the per-resample loop)."""
    if name == "c_index" and n_rows > MAX_PAIR_ROWS:
        return None
    return VECTORISED.get(name) if name else None
