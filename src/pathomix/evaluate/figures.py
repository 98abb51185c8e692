"""Figures for the report: ROC + confusion matrix, Kaplan–Meier by predicted risk, summary bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402
from lifelines.statistics import logrank_test  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from pathomix.evaluate.metrics import prob_columns  # noqa: E402
from pathomix.io.atomic import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def classification_figure(test: pd.DataFrame, path: Path) -> None:
    cols = prob_columns(test)
    classes = [c.removeprefix("prob_") for c in cols]
    fig, (ax_roc, ax_cm) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    y = test.y_true.to_numpy(int)
    for k, (col, name) in enumerate(zip(cols, classes, strict=True)):
        if 0 < (y == k).sum() < len(y):
            RocCurveDisplay.from_predictions(y == k, test[col], name=name, ax=ax_roc)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=1)
    ax_roc.set_title("ROC, one vs rest (out-of-fold test patients)")
    ConfusionMatrixDisplay.from_predictions(y, test.y_pred.to_numpy(int), labels=range(len(classes)),
                                            display_labels=classes, ax=ax_cm, colorbar=False)
    ax_cm.tick_params(axis="x", rotation=30)
    ax_cm.set_title("confusion matrix")
    fig.suptitle(f"{test.model.iloc[0]} — {test.task.iloc[0]} (n = {len(test)})")
    _save(fig, path)


def survival_figure(test: pd.DataFrame, path: Path) -> None:
    """KM curves of patients above / below their fold's median predicted risk, log-rank p."""
    high = test.groupby("fold").risk.transform(lambda r: r > r.median()).astype(bool)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for mask, label in ((~high, "low predicted risk"), (high, "high predicted risk")):
        if mask.any():
            KaplanMeierFitter().fit(test.time[mask], test.event[mask], label=f"{label} (n={mask.sum()})") \
                .plot_survival_function(ax=ax, ci_show=False)
    title = f"{test.model.iloc[0]} — survival"
    if high.any() and (~high).any():
        p = logrank_test(test.time[high], test.time[~high], test.event[high], test.event[~high]).p_value
        title += f" (log-rank p = {p:.3g})"
    ax.set_title(title)
    ax.set_xlabel("months")
    _save(fig, path)


def summary_figure(summary: pd.DataFrame, path: Path) -> None:
    """Pooled headline metric with 95 % CI per model, one panel per task."""
    head = summary[summary.metric.isin(["auc", "c_index"])]
    tasks = sorted(head.task.unique())
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.5 * max(1, len(tasks)), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        d = head[head.task == task].sort_values("model")
        err = np.vstack([d.value - d.ci_low, d.ci_high - d.value]).clip(min=0)
        ax.bar(d.model, d.value, yerr=np.nan_to_num(err), capsize=4, color="#4c72b0")
        ax.axhline(0.5, color="k", ls=":", lw=1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: {d.metric.iloc[0]} (pooled, 95 % CI)")
        ax.tick_params(axis="x", rotation=30)
    _save(fig, path)


FIGURES = {"classification": classification_figure, "survival": survival_figure}
