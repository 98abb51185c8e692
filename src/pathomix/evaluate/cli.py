"""``python -m pathomix.evaluate``: predictions.parquet of every model/task/fold →
eval/metrics.parquet (+ summary.csv) and figures."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from pathomix.evaluate.figures import FIGURES, summary_figure
from pathomix.evaluate.metrics import evaluate_predictions, summary_table
from pathomix.io.atomic import atomic_path, write_parquet
from pathomix.logs import setup_logging

log = logging.getLogger("pathomix.evaluate")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.evaluate", description=__doc__)
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--params", default="{}", help="JSON of the config's `evaluate:` subtree")
    p.add_argument("--out", required=True, help="eval/metrics.parquet")
    p.add_argument("--summary", required=True, help="summary CSV (model × task × metric)")
    p.add_argument("--figures", required=True, help="folder for the figures")
    args = p.parse_args(argv)
    setup_logging()
    n_boot = int(json.loads(args.params).get("bootstrap", 200))
    preds = pd.concat([pd.read_parquet(f) for f in args.predictions], ignore_index=True)
    tables = []
    for (model, task), d in preds.groupby(["model", "task"], sort=True):
        d = d.dropna(axis=1, how="all")  # the union of classification and survival columns
        kind = "survival" if "risk" in d.columns else "classification"
        if kind == "survival":
            d = d.astype({"time": float, "event": int, "risk": float})
        tables.append(evaluate_predictions(d, n_boot))
        FIGURES[kind](d[d.split == "test"], Path(args.figures) / f"{model}_{task}.png")
    metrics = pd.concat(tables, ignore_index=True)
    write_parquet(metrics, args.out)
    summary = summary_table(metrics)
    with atomic_path(args.summary) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4f")
    summary_figure(summary, Path(args.figures) / "summary.png")
    for row in summary[summary.metric.isin(["auc", "c_index"])].itertuples():
        log.info("%-14s %-10s %-8s %.3f ± %.3f over folds; pooled %.3f [%.3f, %.3f]", row.model, row.task,
                 row.metric, row.mean, row.std, row.value, row.ci_low, row.ci_high)
    return 0
