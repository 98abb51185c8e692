"""``python -m pathomix.train.select``: nested model selection on validation patients (``train.select``).

A study compares model and hyperparameter choices; making that choice on the test folds inflates the
reported numbers. Here each fold chooses among the candidates (models or variants trained on the same
folds) by their metric on that fold's **validation** patients only (AUC for classification, C-index for
survival, the primary metrics of the evaluation), and the selection then reports the chosen candidate's
test predictions of that fold. Different folds may choose differently; ``selection.json``
(:data:`pathomix.paths.SELECTION`) records the choice and every candidate's validation score, and the report
lists them.

Ties and undefined validation metrics (e.g. one class among the validation patients): the candidate listed
first wins among the best, and a candidate whose metric is undefined is chosen only if no candidate has one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd

from pathomix import paths as P
from pathomix.cli import exit_process, stage_main
from pathomix.errors import PathomixInputError
from pathomix.evaluate.metrics import CLASSIFICATION, SURVIVAL
from pathomix.io.atomic import atomic_path, write_parquet
from pathomix.io.corrupt import read_parquet

log = logging.getLogger("pathomix.train.select")


def validation_score(pred: pd.DataFrame) -> tuple[str, float]:
    """(metric name, value) on the validation rows: AUC for classification, C-index for survival."""
    val = pred[pred.split == "val"]
    name, metric = ("c_index", SURVIVAL["c_index"]) if "risk" in pred.columns else ("auc", CLASSIFICATION["auc"])
    if val.empty:
        return name, math.nan
    return name, float(metric(val.dropna(axis=1, how="all")))


def choose(candidates: dict[str, pd.DataFrame]) -> tuple[str, str, dict[str, float]]:
    """→ (chosen candidate, metric name, validation score of each candidate)."""
    scores, metric = {}, ""
    for name, pred in candidates.items():
        metric, scores[name] = validation_score(pred)
    finite = {n: v for n, v in scores.items() if math.isfinite(v)}
    chosen = max(finite, key=lambda n: (finite[n], -list(scores).index(n))) if finite else next(iter(scores))
    return chosen, metric, scores


def run(selection: str, candidates: list[str], predictions: list[Path], histories: list[Path], out_dir: Path) -> dict:
    if not len(candidates) == len(predictions) == len(histories):
        raise PathomixInputError("--candidates, --predictions and --histories need one entry per candidate")
    tables = {c: read_parquet(p) for c, p in zip(candidates, predictions, strict=True)}
    chosen, metric, scores = choose(tables)
    pred = tables[chosen].assign(model=selection)
    record = {"selection": selection, "task": str(pred.task.iloc[0]) if len(pred) else "",
              "fold": int(pred.fold.iloc[0]) if len(pred) else -1, "chosen": chosen, "metric": f"val_{metric}",
              "scores": {c: (None if math.isnan(v) else v) for c, v in scores.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(pred, out_dir / P.PREDICTIONS)
    with atomic_path(out_dir / P.HISTORY) as tmp:
        shutil.copyfile(histories[candidates.index(chosen)], tmp)
    with atomic_path(out_dir / P.SELECTION) as tmp:
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    log.info("%s, %s, fold %s: chose %s (validation %s %s)", selection, record["task"], record["fold"], chosen,
             metric, {c: round(v, 4) for c, v in scores.items()})
    return record


@stage_main("pathomix.train.select")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.train.select", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selection", required=True, help="the selection's name (train.select)")
    p.add_argument("--candidates", nargs="+", required=True)
    p.add_argument("--predictions", nargs="+", type=Path, required=True, help="one predictions.parquet per candidate")
    p.add_argument("--histories", nargs="+", type=Path, required=True, help="one history.parquet per candidate")
    p.add_argument("--out", type=Path, required=True, help="models/{selection}/{task}/fold{k}/")
    args = p.parse_args(argv)
    run(args.selection, args.candidates, args.predictions, args.histories, args.out)
    return 0


if __name__ == "__main__":
    exit_process(main())
