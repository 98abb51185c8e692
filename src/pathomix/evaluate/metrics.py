"""Metrics by registry: scikit-learn, lifelines and scikit-survival do the maths.

Per fold on the test patients, and pooled out-of-fold ("all") with a patient-level
bootstrap 95 % confidence interval (:func:`bootstrap_ci` states the seed contract; its resamples are
scored by :mod:`pathomix.evaluate.resample`'s weighted forms of the same metrics, tested equal to the
libraries' on the resampled rows).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import sklearn
from lifelines.utils import concordance_index
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

from pathomix.evaluate import resample

log = logging.getLogger(__name__)
Metric = Callable[[pd.DataFrame], float]
MIN_EVENTS_TD_AUC = 5   # time-dependent AUC needs this many observed events (else skipped, with the reason)
TD_AUC_QUANTILES = (25, 50, 75)  # evaluation times: these percentiles of the observed event times


def prob_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("prob_")]


def _present(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities and the classes present among the labels."""
    y = df.y_true.to_numpy(int)
    return y, df[prob_columns(df)].to_numpy(float), np.unique(y)


def _auc(df: pd.DataFrame) -> float:
    y, p, present = _present(df)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1]))
    # OvR over the classes present (a row with no mass on them, e.g. softmax underflow, stays all zero)
    p = p[:, present] / np.maximum(p[:, present].sum(axis=1, keepdims=True), np.finfo(float).tiny)
    if len(present) == 2:
        return float(roc_auc_score(y == present[1], p[:, 1]))
    return float(roc_auc_score(np.searchsorted(present, y), p, multi_class="ovr", average="macro"))


def _ap(df: pd.DataFrame) -> float:
    """Average precision: of the positive class for binary tasks, else macro over the classes present."""
    y, p, present = _present(df)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return float(average_precision_score(y == 1, p[:, 1]))
    onehot = label_binarize(y, classes=np.arange(p.shape[1]))
    return float(average_precision_score(onehot[:, present], p[:, present], average="macro"))


def _labels(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """y_true, y_pred as numpy (scikit-learn is several times slower on pandas input)."""
    return df.y_true.to_numpy(int), df.y_pred.to_numpy(int)


def _one_class(df: pd.DataFrame, metric: Metric) -> str | None:
    present = np.unique(df.y_true.to_numpy(int))
    if len(present) < 2:
        return f"one class only among the {len(df)} test rows (y_true = {present.tolist()})"
    return None


def _kappa_skip(df: pd.DataFrame, metric: Metric) -> str | None:
    y, pred = _labels(df)
    if len(np.union1d(y, pred)) < 2:
        return f"a single label in y_true and y_pred of the {len(df)} test rows"
    return None


def _kappa(df: pd.DataFrame) -> float:
    weights = "quadratic" if df.task.iloc[0] == "grading" else None
    return float(cohen_kappa_score(*_labels(df), weights=weights))


def _c_index(df: pd.DataFrame) -> float:
    """Harrell's C (lifelines); NaN when undefined: no event, or no comparable pair (an event before
    another patient's time), which small folds and bootstrap resamples of few patients reach."""
    if df.event.sum() == 0:
        return float("nan")
    try:  # lifelines wants scores that grow with survival time: minus the risk
        return float(concordance_index(df.time.to_numpy(float), -df.risk.to_numpy(float), df.event.to_numpy(int)))
    except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset."
        return float("nan")


def _c_index_skip(df: pd.DataFrame, metric: Metric) -> str | None:
    n_events = int(df.event.astype(bool).sum())
    if n_events == 0:
        return f"no observed event: all {len(df)} patients censored"
    if not np.isfinite(metric(df)):
        return f"no comparable pair: none of the {n_events} event(s) precedes another patient's time"
    return None


def td_auc_times(df: pd.DataFrame) -> np.ndarray:
    """Evaluation times of the time-dependent AUC: quartiles of the observed event times."""
    events = df.time[df.event.astype(bool)].to_numpy(float)
    return np.unique(np.percentile(events, TD_AUC_QUANTILES)) if len(events) else np.array([])


def _td_auc(df: pd.DataFrame, times: np.ndarray | None = None) -> float:
    """Mean cumulative/dynamic AUC (scikit-survival) at ``times`` (default :func:`td_auc_times`).

    The censoring distribution is estimated on the same patients (pooled out-of-fold predictions
    of one cohort). NaN when there are too few events or the times leave the follow-up range.
    """
    from sksurv.metrics import cumulative_dynamic_auc
    from sksurv.util import Surv

    times = td_auc_times(df) if times is None else times
    if int(df.event.astype(bool).sum()) < MIN_EVENTS_TD_AUC or len(times) == 0:
        return float("nan")
    y = Surv.from_arrays(event=df.event.astype(bool).to_numpy(), time=df.time.to_numpy(float))
    try:
        _, mean_auc = cumulative_dynamic_auc(y, y, df.risk.to_numpy(float), times)
    except ValueError:  # times outside the follow-up of this (re)sample
        return float("nan")
    return float(mean_auc)


def _td_auc_skip(df: pd.DataFrame, metric: Metric) -> str | None:
    n_events = int(df.event.astype(bool).sum())
    if n_events < MIN_EVENTS_TD_AUC:
        return f"{n_events} observed event(s), fewer than {MIN_EVENTS_TD_AUC}"
    if not np.isfinite(metric(df)):
        return "evaluation times outside the follow-up of these patients"
    return None


CLASSIFICATION: dict[str, Metric] = {
    "accuracy": lambda d: float(accuracy_score(*_labels(d))),
    "balanced_accuracy": lambda d: float(balanced_accuracy_score(*_labels(d))),
    "auc": _auc,
    "ap": _ap,
    "f1": lambda d: float(f1_score(*_labels(d), average="macro")),
    "kappa": _kappa,
}
SURVIVAL: dict[str, Metric] = {"c_index": _c_index, "td_auc": _td_auc}
# Metrics undefined on some (small) sets of patients: name → (data, metric) → why it is skipped (NaN)
SKIP_REASONS: dict[str, Callable[[pd.DataFrame, Metric], str | None]] = {
    "auc": _one_class, "ap": _one_class, "kappa": _kappa_skip, "c_index": _c_index_skip, "td_auc": _td_auc_skip}


def metrics_for(df: pd.DataFrame) -> dict[str, Metric]:
    """The registry for ``df``'s task kind; the time-dependent AUC is fixed to ``df``'s time grid
    so that folds and bootstrap resamples are scored at the same times."""
    if "risk" not in df.columns:
        return CLASSIFICATION
    return {**SURVIVAL, "td_auc": functools.partial(_td_auc, times=td_auc_times(df))}


def bootstrap_ci(df: pd.DataFrame, metric: Metric, n: int, seed: int = 0,
                 name: str | None = None) -> tuple[float, float]:
    """95 % percentile interval of ``metric`` over ``n`` patient-level resamples.

    Seed contract (tests re-implement it): ``rng = np.random.default_rng(seed)``; the patients
    are the unique ``patient_id`` values in order of first appearance (each row is a patient
    when there is no such column); each resample draws ``rng.integers(0, n_patients, n_patients)``
    and keeps every row of the drawn patients, in draw order; resamples where the metric is
    not finite (e.g. one class only) are dropped; the bounds are ``np.percentile(values, [2.5,
    97.5])``. NaN bounds when fewer than max(10, n / 10) resamples give a finite value.

    With the registry ``name`` of a metric that has an all-resamples form (:mod:`pathomix.evaluate.resample`:
    the same numbers, every resample in a few array operations), that form scores the same draws.
    """
    rng = np.random.default_rng(seed)
    ids = df.patient_id if "patient_id" in df.columns else pd.Series(np.arange(len(df)))
    codes, uniques = pd.factorize(ids)
    with warnings.catch_warnings():  # undefined resamples are dropped below: scikit-learn's warnings are noise
        warnings.simplefilter("ignore")
        if (fast := resample.vectorised(name, len(df))) is not None:
            scored = fast(df, resample.resample_weights(codes, len(uniques), n, rng))
            values = scored[np.isfinite(scored)].tolist()
        else:
            values = _resampled(df, metric, n, rng, codes, uniques)
    if len(values) < max(10, n // 10):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _resampled(df: pd.DataFrame, metric: Metric, n: int, rng: np.random.Generator, codes: np.ndarray,
               uniques: pd.Index) -> list[float]:
    """The finite values of ``metric`` over ``n`` patient resamples (the contract of :func:`bootstrap_ci`)."""
    groups = None if len(uniques) == len(df) else [np.flatnonzero(codes == i) for i in range(len(uniques))]
    order = np.argsort(codes, kind="stable") if groups is None else None
    values = []
    for _ in range(n):
        draw = rng.integers(0, len(uniques), len(uniques))
        rows = order[draw] if groups is None else np.concatenate([groups[i] for i in draw])
        # the full data passed scikit-learn's checks already; skipping them per resample saves ~30 %
        with np.errstate(all="ignore"), sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
            v = metric(df.iloc[rows])
        if np.isfinite(v):
            values.append(v)
    return values


def _logged(metric: Metric, name: str, d: pd.DataFrame, where: str) -> float:
    """The metric, or NaN with the reason logged when it is undefined on these patients (never an error:
    a small cohort or fold must not fail the evaluation job)."""
    reason = SKIP_REASONS[name](d, metric) if name in SKIP_REASONS else None
    value = float("nan") if reason else metric(d)
    if not reason and not np.isfinite(value):
        reason = "undefined on these patients"
    if reason:
        log.info("%s: %s skipped, n/a (%s)", where, name, reason)
    return value


def evaluate_predictions(pred: pd.DataFrame, n_bootstrap: int, seed: int = 0) -> pd.DataFrame:
    """Predictions of one model × task (all folds; only ``split == "test"`` rows count) → long rows:
    model, task, fold, metric, value, ci_low, ci_high (CIs on the pooled ``fold == "all"`` rows)."""
    test = pred[pred.split == "test"].reset_index(drop=True)
    model, task = test.model.iloc[0], test.task.iloc[0]
    if "risk" in test.columns and not any(c.startswith("surv_") for c in test.columns):
        log.info("%s/%s: integrated Brier score not computed: the predictions carry a risk score, not a "
                 "survival function S(t) per patient", model, task)
    rows = []
    for name, metric in metrics_for(test).items():
        for fold, d in test.groupby("fold"):
            rows.append((model, task, str(fold), name, _logged(metric, name, d, f"{model}/{task}/fold{fold}"),
                         np.nan, np.nan))
        value = _logged(metric, name, test, f"{model}/{task}/pooled")
        lo, hi = bootstrap_ci(test, metric, n_bootstrap, seed, name) if np.isfinite(value) else (np.nan, np.nan)
        rows.append((model, task, "all", name, value, lo, hi))
    return pd.DataFrame(rows, columns=["model", "task", "fold", "metric", "value", "ci_low", "ci_high"])


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """model × (task, metric): fold mean ± sd and pooled value [CI], for the report; with the metrics'
    ``encoder`` column (empty for models that read no features) after ``model`` when they have one."""
    keys = ["model", "encoder", "task", "metric"] if "encoder" in metrics.columns else ["model", "task", "metric"]
    metrics = metrics.assign(encoder=metrics.encoder.fillna("")) if "encoder" in metrics.columns else metrics
    per_fold = metrics[metrics.fold != "all"].groupby(keys).value.agg(["mean", "std"])
    pooled = metrics[metrics.fold == "all"].set_index(keys)[["value", "ci_low", "ci_high"]]
    return per_fold.join(pooled).reset_index()
