"""``python -m pathomix.evaluate``: predictions.parquet of every model/task/fold (and the
history.parquet and, for mIF models, marker_attention.parquet next to each) → eval/metrics.parquet,
summary.csv, the comparison table (CSV + HTML), figures per model × task, and per-cohort results
when external cohorts are configured."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pathomix import paths as P
from pathomix.cli import stage_main
from pathomix.evaluate import comparison as C
from pathomix.evaluate import encoders as E
from pathomix.evaluate.cohorts import internal_rows, write_cohorts
from pathomix.evaluate.figures import FIGURES, marker_figure, summary_figure
from pathomix.evaluate.layout import MARKER_ATTENTION, MARKER_FIGURE, figure_names
from pathomix.evaluate.metrics import evaluate_predictions, summary_table
from pathomix.io.atomic import atomic_path, write_parquet
from pathomix.io.corrupt import read_parquet
from pathomix.params import load_params
from pathomix.paths import HISTORY  # written by the training stage next to predictions.parquet

log = logging.getLogger("pathomix.evaluate")


@dataclass(frozen=True)
class EvalParams:
    """The config's ``evaluate:`` subtree (its ``heatmaps`` are :class:`pathomix.evaluate.heatmaps.HeatmapParams`)
    plus ``splits.external_cohorts``; defaults equal config.yaml (tests/test_params.py checks)."""

    bootstrap: int = 200
    seed: int = 0
    headline: list[str] = field(default_factory=lambda: list(C.DEFAULT_HEADLINE))
    external_cohorts: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> EvalParams:
        """``--params``: the ``evaluate:`` subtree; its ``heatmaps`` (another rule's) is dropped."""
        return load_params(cls, text, where="evaluate", drop=("heatmaps",))


def _read(paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str], pd.DataFrame]]:
    """All predictions, all training histories (with model, task, fold) found next to them, and the
    marker attention of the mIF models by (model, task)."""
    preds, histories, markers = [], [], {}
    for f in paths:
        p = read_parquet(f)
        preds.append(p)
        m = Path(f).with_name(MARKER_ATTENTION)
        if m.exists() and len(p):
            key = (p.model.iloc[0], p.task.iloc[0])
            table = read_parquet(m).assign(model=key[0], task=key[1], fold=p.fold.iloc[0])
            markers[key] = pd.concat([markers[key], table], ignore_index=True) if key in markers else table
        h = Path(f).with_name(HISTORY)
        if h.exists() and len(p):
            histories.append(read_parquet(h).assign(model=p.model.iloc[0], task=p.task.iloc[0],
                                                        fold=p.fold.iloc[0]))
        else:
            log.warning("%s: no %s next to it; its training curve is left out", f, HISTORY)
    hist = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(
        columns=["model", "task", "fold", "epoch", "train_loss", "val_loss", "val_metric"])
    return pd.concat(preds, ignore_index=True), hist, markers


def _prepare(d: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    d = d.dropna(axis=1, how="all")  # the union of classification and survival columns
    kind = "survival" if "risk" in d.columns else "classification"
    if kind == "survival":
        d = d.astype({"time": float, "event": int, "risk": float})
    return d, kind


def with_encoder(metrics: pd.DataFrame, pred: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` with the ``encoder`` column after ``model`` (DESIGN §4): the encoder whose features the model
    read, from its predictions; empty for models that read none (and for predictions written before the column)."""
    names = pred.encoder.dropna().astype(str).unique() if "encoder" in pred.columns else []
    out = metrics.assign(encoder="+".join(sorted(set(names) - {""})))
    return out[["model", "encoder", *[c for c in out.columns if c not in ("model", "encoder")]]]


def write_selections(pred_paths: list[str], csv_path: str, html_path: str) -> pd.DataFrame:
    """train.select: one row per selection × task × fold (chosen candidate, every candidate's validation score)
    from the selection.json files next to the predictions, as a CSV and an HTML table for the report."""
    rows = []
    for f in pred_paths:
        record = Path(f).with_name(P.SELECTION)
        if record.exists():
            r = json.loads(record.read_text(encoding="utf-8"))
            rows.append({"selection": r["selection"], "task": r["task"], "fold": r["fold"], "chosen": r["chosen"],
                         **{f"{r['metric']} {c}": v for c, v in r["scores"].items()}})
    table = pd.DataFrame(rows).sort_values(["selection", "task", "fold"]) if rows else pd.DataFrame(
        columns=["selection", "task", "fold", "chosen"])
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f", na_rep="n/a")
    body = table.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a", border=0)
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Model selection</title></head><body>"
            "<h2>Nested model selection (train.select)</h2><p>Per task and fold, the candidate with the best "
            "validation metric (validation patients of that fold only; test patients never choose); the "
            f"selection's test numbers are the chosen candidate's.</p>{body}</body></html>")
    with atomic_path(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return table


def run(pred_paths: list[str], params: EvalParams, out: str, summary_csv: str, figures: str,
        comparison_csv: str, comparison_html: str, cohorts_csv: str | None = None,
        cohorts_html: str | None = None, selection_csv: str | None = None,
        selection_html: str | None = None, encoders_csv: str | None = None,
        encoders_html: str | None = None) -> pd.DataFrame:
    preds, hist, markers = _read(pred_paths)
    main_preds = internal_rows(preds, params.external_cohorts)
    tables = []
    for (model, task), d in main_preds.groupby(["model", "task"], sort=True):
        d, kind = _prepare(d)
        tables.append(with_encoder(evaluate_predictions(d, params.bootstrap, params.seed), d))
        test = d[d.split == "test"]
        h = hist[(hist.model == model) & (hist.task == task)]
        for fig_kind, name in figure_names(model, task, kind, mif=(model, task) in markers).items():
            if fig_kind == MARKER_FIGURE:
                marker_figure(markers[(model, task)], Path(figures) / name)
            else:
                FIGURES[fig_kind](test, h, Path(figures) / name)
    metrics = pd.concat(tables, ignore_index=True)
    write_parquet(metrics, out)
    summary = summary_table(metrics)
    with atomic_path(summary_csv) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4f", na_rep=C.NA)
    summary_figure(summary, Path(figures) / "summary.png")
    table = C.comparison_table(summary, params.headline)
    C.write_csv(table, comparison_csv)
    tested = main_preds[main_preds.split == "test"]
    C.write_html(table, comparison_html, params.bootstrap,
                 n_patients=tested.groupby("task").patient_id.nunique().to_dict())
    if selection_csv and selection_html:
        write_selections(pred_paths, selection_csv, selection_html)
    if encoders_csv and encoders_html:  # several encoders: which serves which task best
        by_encoder = E.encoder_table(summary, params.headline)
        E.write_csv(by_encoder, encoders_csv)
        E.write_html(by_encoder, encoders_html, params.bootstrap)
        E.encoder_figure(by_encoder, Path(figures) / P.ENCODER_FIGURE)
    if cohorts_csv and cohorts_html:
        write_cohorts(preds, params.external_cohorts, params.headline, params.bootstrap, params.seed,
                      cohorts_csv, cohorts_html)
    for row in summary[summary.metric.isin(["auc", "c_index"])].itertuples():
        log.info("%-14s %-10s %-8s %.3f ± %.3f over folds; pooled %.3f [%.3f, %.3f]", row.model, row.task,
                 row.metric, row.mean, row.std, row.value, row.ci_low, row.ci_high)
    return metrics


@stage_main("pathomix.evaluate")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.evaluate", description=__doc__)
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--params", default="{}", help="JSON of the config's `evaluate:` subtree")
    p.add_argument("--out", required=True, help="eval/metrics.parquet")
    p.add_argument("--summary", required=True, help="summary CSV (model × task × metric)")
    p.add_argument("--figures", required=True, help="folder for the figures")
    p.add_argument("--comparison-csv", required=True)
    p.add_argument("--comparison-html", required=True)
    p.add_argument("--cohorts-csv", help="per-cohort results (when splits.external_cohorts is set)")
    p.add_argument("--cohorts-html")
    p.add_argument("--selection-csv", help="what train.select chose per task and fold")
    p.add_argument("--selection-html")
    p.add_argument("--encoders-csv", help="several encoders: encoder × model × task (eval/encoders.csv)")
    p.add_argument("--encoders-html")
    args = p.parse_args(argv)
    run(args.predictions, EvalParams.from_json(args.params), args.out, args.summary, args.figures,
        args.comparison_csv, args.comparison_html, args.cohorts_csv, args.cohorts_html, args.selection_csv,
        args.selection_html, args.encoders_csv, args.encoders_html)
    return 0
