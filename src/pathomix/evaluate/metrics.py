"""Metrics by registry: scikit-learn and lifelines do the maths, none is written by hand.

Per fold on the test patients, and pooled out-of-fold ("all") with a patient-level
bootstrap 95 % confidence interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
from lifelines.utils import concordance_index
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)

log = logging.getLogger(__name__)
Metric = Callable[[pd.DataFrame], float]


def prob_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("prob_")]


def _auc(df: pd.DataFrame) -> float:
    cols = prob_columns(df)
    y = df.y_true.to_numpy(int)
    if len(np.unique(y)) < 2:
        return float("nan")
    p = df[cols].to_numpy(float)
    if len(cols) == 2:
        return float(roc_auc_score(y, p[:, 1]))
    present = np.unique(y)
    p = p[:, present] / p[:, present].sum(axis=1, keepdims=True)  # OvR over the classes present
    if len(present) == 2:
        return float(roc_auc_score(y == present[1], p[:, 1]))
    return float(roc_auc_score(np.searchsorted(present, y), p, multi_class="ovr", average="macro"))


def _kappa(df: pd.DataFrame) -> float:
    weights = "quadratic" if df.task.iloc[0] == "grading" else None
    return float(cohen_kappa_score(df.y_true, df.y_pred, weights=weights))


def _c_index(df: pd.DataFrame) -> float:
    if df.event.sum() == 0:
        return float("nan")
    # lifelines wants scores that grow with survival time: minus the risk
    return float(concordance_index(df.time, -df.risk, df.event))


CLASSIFICATION: dict[str, Metric] = {
    "accuracy": lambda d: float(accuracy_score(d.y_true, d.y_pred)),
    "balanced_accuracy": lambda d: float(balanced_accuracy_score(d.y_true, d.y_pred)),
    "auc": _auc,
    "f1": lambda d: float(f1_score(d.y_true, d.y_pred, average="macro")),
    "kappa": _kappa,
}
SURVIVAL: dict[str, Metric] = {"c_index": _c_index}


def metrics_for(df: pd.DataFrame) -> dict[str, Metric]:
    return SURVIVAL if "risk" in df.columns else CLASSIFICATION


def bootstrap_ci(df: pd.DataFrame, metric: Metric, n: int, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval over ``n`` resamples of patients (rows) with replacement."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        sample = df.iloc[rng.integers(0, len(df), len(df))]
        with np.errstate(all="ignore"):
            v = metric(sample)
        if np.isfinite(v):
            values.append(v)
    if len(values) < max(10, n // 10):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate_predictions(pred: pd.DataFrame, n_bootstrap: int) -> pd.DataFrame:
    """Test predictions of one model × task (all folds) → long metric rows."""
    test = pred[pred.split == "test"]
    model, task = test.model.iloc[0], test.task.iloc[0]
    rows = []
    for name, metric in metrics_for(test).items():
        for fold, d in test.groupby("fold"):
            rows.append((model, task, str(fold), name, metric(d), np.nan, np.nan))
        lo, hi = bootstrap_ci(test, metric, n_bootstrap)
        rows.append((model, task, "all", name, metric(test), lo, hi))
    return pd.DataFrame(rows, columns=["model", "task", "fold", "metric", "value", "ci_low", "ci_high"])


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """model × (task, metric): fold mean ± sd and pooled value [CI], for the report."""
    per_fold = metrics[metrics.fold != "all"].groupby(["model", "task", "metric"]).value.agg(["mean", "std"])
    pooled = metrics[metrics.fold == "all"].set_index(["model", "task", "metric"])[["value", "ci_low", "ci_high"]]
    return per_fold.join(pooled).reset_index()
