"""External-cohort results: metrics grouped by the predictions' ``cohort`` column.

Configured by ``splits.external_cohorts`` (names from the slides sheet's ``cohort`` column).
Internal metrics (metrics.parquet, the comparison table) use the other cohorts only; this module
scores every cohort separately (rows with ``split`` "test" or "external"), so a reviewer sees the
internal and external numbers side by side. When the predictions carry no ``cohort`` column the
page says so: the training stage has to predict the external patients first.

An external patient is predicted by every fold's model. Its per-fold rows give the mean ± sd over the
fold models; the pooled value (and its CI) scores each external patient **once**, with the ensemble of
the fold models (mean probability / mean risk, :func:`fold_ensemble`), not K copies of the patient.
"""

from __future__ import annotations

import html
import logging

import pandas as pd

from pathomix.evaluate.comparison import comparison_table, to_html, write_csv
from pathomix.evaluate.metrics import evaluate_predictions, prob_columns, summary_table
from pathomix.io.atomic import atomic_path

log = logging.getLogger(__name__)
SCORED_SPLITS = ("test", "external")


def internal_rows(preds: pd.DataFrame, external: list[str]) -> pd.DataFrame:
    """The predictions that the main metrics use: everything outside the external cohorts."""
    if "cohort" not in preds.columns or not external:
        return preds
    return preds[~preds.cohort.isin(external)]


def fold_ensemble(pred: pd.DataFrame) -> pd.DataFrame:
    """One row per patient from the rows of several fold models: mean class probabilities (``y_pred`` their
    argmax), mean risk and mean survival function; labels (y_true, time, event) from the first row."""
    probs = prob_columns(pred)
    scores = probs + [c for c in pred.columns if c == "risk" or c.startswith("surv_")]
    grouped = pred.groupby("patient_id", sort=True)
    out = grouped.first().drop(columns=scores).join(grouped[scores].mean()).reset_index()
    if probs and "y_pred" in out.columns:
        out["y_pred"] = out[probs].to_numpy(float).argmax(axis=1)
    return out.assign(fold="ensemble")


def _scored(d: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Metrics of one cohort × model × task: per fold as usual; the pooled rows of an external cohort (its
    patients predicted by every fold model) from the fold ensemble, so each patient counts once."""
    if not d.patient_id.duplicated().any():
        return evaluate_predictions(d, n_boot, seed)
    per_fold = evaluate_predictions(d, 0, seed)  # its pooled rows are replaced: no bootstrap spent on them
    pooled = evaluate_predictions(fold_ensemble(d), n_boot, seed)
    return pd.concat([per_fold[per_fold.fold != "all"], pooled[pooled.fold == "all"]], ignore_index=True)


def cohort_summary(preds: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Summary rows (as :func:`summary_table`) with ``task`` = "cohort: task", one block per cohort."""
    tables = []
    for (cohort, _, task), d in preds.groupby(["cohort", "model", "task"], sort=True):
        d = d[d.split.isin(SCORED_SPLITS)].assign(split="test").dropna(axis=1, how="all")
        if len(d):
            tables.append(_scored(d, n_boot, seed).assign(task=f"{cohort}: {task}"))
    return summary_table(pd.concat(tables, ignore_index=True)) if tables else pd.DataFrame()


def write_cohorts(preds: pd.DataFrame, external: list[str], headline: list[str], n_boot: int, seed: int,
                  csv_path: str, html_path: str) -> None:
    if "cohort" not in preds.columns:
        log.warning("splits.external_cohorts = %s, but the predictions carry no `cohort` column: the "
                    "external-cohort page says so", external)
        msg = (f"External cohorts configured ({', '.join(external)}), but the predictions carry no "
               "<code>cohort</code> column: the training stage has not predicted the external patients.")
        with atomic_path(html_path) as tmp:
            tmp.write_text(f"<!DOCTYPE html><html><body><p>{msg}</p></body></html>", encoding="utf-8")
        with atomic_path(csv_path) as tmp:
            tmp.write_text("model\n", encoding="utf-8")
        return
    missing = sorted(set(external) - set(preds.cohort.dropna()))
    if missing:
        log.warning("no predictions for external cohort(s) %s", missing)
    table = comparison_table(cohort_summary(preds, n_boot, seed), headline)
    write_csv(table, csv_path)
    page = to_html(table, n_bootstrap=n_boot, title="Results per cohort (external: " + ", ".join(external) + ")")
    if missing:
        page = page.replace("</body>", f"<p>No predictions for: {html.escape(', '.join(missing))}</p></body>")
    with atomic_path(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
