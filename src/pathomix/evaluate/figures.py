"""Figures for the report: ROC + confusion matrix, calibration, Kaplan–Meier by predicted risk,
training curves per fold, summary bars, attention per mIF marker. One registry maps a figure
kind (see :data:`pathomix.evaluate.layout.FIGURES_BY_KIND`) to the function drawing it; the
marker figure (mIF models only) reads the models' ``marker_attention.parquet`` instead."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402
from lifelines.statistics import logrank_test  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, brier_score_loss  # noqa: E402

from pathomix.evaluate.metrics import prob_columns  # noqa: E402
from pathomix.evaluate.png import save_figure  # noqa: E402

# what the training loop logs as val_metric, per task kind (pathomix.train.objectives)
VAL_METRIC = {"classification": "accuracy", "survival": "C-index"}


def _save(fig: plt.Figure, path: Path) -> None:
    save_figure(fig, path, dpi=100)


def _title(test: pd.DataFrame, what: str) -> str:
    return f"{test.model.iloc[0]} — {test.task.iloc[0]}: {what} (n = {test.patient_id.nunique()} test patients)"


def roc_figure(test: pd.DataFrame, history: pd.DataFrame, path: Path) -> None:
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
    fig.suptitle(_title(test, "discrimination"))
    _save(fig, path)


def calibration_figure(test: pd.DataFrame, history: pd.DataFrame, path: Path, n_bins: int = 5) -> None:
    """Reliability diagram, one vs rest per class, with the Brier score and the spread of the probabilities."""
    cols = prob_columns(test)
    y = test.y_true.to_numpy(int)
    fig, (ax, ax_hist) = plt.subplots(2, 1, figsize=(5.6, 6.0), height_ratios=(3, 1), sharex=True,
                                      layout="constrained")
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    for k, col in enumerate(cols):
        name = col.removeprefix("prob_")
        if 0 < (y == k).sum() < len(y):
            frac, mean_p = calibration_curve(y == k, test[col], n_bins=n_bins, strategy="uniform")
            brier = brier_score_loss(y == k, test[col])
            ax.plot(mean_p, frac, "o-", label=f"{name} (Brier {brier:.3f})")
        ax_hist.hist(test[col], bins=np.linspace(0, 1, 2 * n_bins + 1), histtype="step", lw=1.5, label=name)
    ax.set_ylabel("observed fraction of the class")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(_title(test, "calibration"), fontsize=10)
    ax_hist.set_xlabel("predicted probability (one vs rest)")
    ax_hist.set_ylabel("patients")
    _save(fig, path)


def km_figure(test: pd.DataFrame, history: pd.DataFrame, path: Path) -> None:
    """KM curves of patients above / below their fold's median predicted risk, log-rank p."""
    high = test.groupby("fold").risk.transform(lambda r: r > r.median()).astype(bool)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for mask, label in ((~high, "low predicted risk"), (high, "high predicted risk")):
        if mask.any():
            KaplanMeierFitter().fit(test.time[mask], test.event[mask], label=f"{label} (n={mask.sum()})") \
                .plot_survival_function(ax=ax, ci_show=False, show_censors=True, censor_styles={"ms": 5, "marker": "|"})
    title = f"{test.model.iloc[0]} — survival"
    if high.any() and (~high).any():
        p = logrank_test(test.time[high], test.time[~high], test.event[high], test.event[~high]).p_value
        title += f" (log-rank p = {p:.3g})"
    ax.set_title(title)
    ax.set_xlabel("months")
    ax.set_ylabel("survival probability")
    _save(fig, path)


def training_figure(test: pd.DataFrame, history: pd.DataFrame, path: Path) -> None:
    """Train (solid) and validation (dashed) loss and the validation metric per epoch, one colour per fold;
    the dot marks the epoch whose weights were kept (lowest validation loss)."""
    kind = "survival" if "risk" in test.columns else "classification"
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for i, (fold, h) in enumerate(history.groupby("fold", sort=True)):
        color = f"C{i}"
        marker = "o" if len(h) == 1 else None  # one epoch (closed-form fit): a point, not a line
        ax_loss.plot(h.epoch, h.train_loss, color=color, lw=1.5, marker=marker, label=f"fold {fold} train")
        ax_loss.plot(h.epoch, h.val_loss, color=color, lw=1.5, ls="--", label=f"fold {fold} val")
        if h.val_loss.notna().any():  # models fitted in closed form (cox_clinical) have no validation loss
            best = h.loc[h.val_loss.idxmin()]
            ax_loss.plot(best.epoch, best.val_loss, "o", color=color)
        ax_metric.plot(h.epoch, h.val_metric, color=color, lw=1.5, marker=marker, label=f"fold {fold}")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss (solid: train, dashed: validation; dot: kept epoch)", fontsize=10)
    ax_loss.legend(fontsize=7, ncol=2)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(f"validation {VAL_METRIC[kind]}")
    ax_metric.set_title(f"validation {VAL_METRIC[kind]}", fontsize=10)
    ax_metric.legend(fontsize=7)
    fig.suptitle(f"{test.model.iloc[0]} — {test.task.iloc[0]}: training curves per fold")
    _save(fig, path)


FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame, Path], None]] = {
    "roc": roc_figure,
    "calibration": calibration_figure,
    "km": km_figure,
    "training": training_figure,
}


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


def marker_figure(markers: pd.DataFrame, path: Path) -> None:
    """Attention per mIF marker of one model × task: per test patient, the mean over its slides of the
    slide's marker distribution (``marker_attention.parquet``, out-of-fold); bars = mean over patients,
    error bars = sd, dots = patients; the dotted line is uniform attention (1 / number of markers)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    if markers.empty:
        ax.text(0.5, 0.5, "no test patient with mIF features", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        _save(fig, path)
        return
    order = list(dict.fromkeys(markers.marker))  # the panel's channel order
    per_patient = markers.groupby(["patient_id", "marker"], sort=False).weight.mean().unstack("marker")[order]
    mean, sd = per_patient.mean(), per_patient.std(ddof=1).fillna(0.0)
    x = np.arange(len(order))
    ax.bar(x, mean, yerr=sd, capsize=4, color="#4c72b0", alpha=0.8, label="mean ± sd over test patients")
    jitter = np.random.default_rng(0).uniform(-0.18, 0.18, per_patient.shape)
    ax.plot((x + jitter).ravel(), per_patient.to_numpy().ravel(), "k.", ms=4, alpha=0.6, label="one patient")
    ax.axhline(1.0 / len(order), color="k", ls=":", lw=1, label="uniform")
    ax.set_xticks(x, order, rotation=30)
    ax.set_ylabel("attention (share of the slide's pooled tiles)")
    ax.legend(fontsize=7, loc="upper right")
    m = markers.iloc[0]
    ax.set_title(f"{m.model} — {m.task}: attention per mIF marker (n = {len(per_patient)} test patients)",
                 fontsize=10)
    _save(fig, path)
