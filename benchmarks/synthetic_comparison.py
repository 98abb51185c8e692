"""The model comparison on a larger synthetic cohort: which differences are outside resampling noise?

    python benchmarks/synthetic_comparison.py [--patients 150] [--folds 5] [--keep DIR] [--cores N]

The embedded demo (24 patients, 8 test patients per fold) cannot separate the models: the ablations all
reach AUC 1.0 and the student's gain over scratch sits inside the CI. This script generates the demo cohort
with the same planted structure but more patients (``demo.n_patients``; no mIF, so no fluoroformer),
runs the workflow on ``--folds`` patient-level folds with the DMSF models, their ablations and the
single-modality baselines, and prints

- per model and task: the fold mean ± sd and the pooled out-of-fold value [95 % CI] (eval/summary.csv);
- for the comparisons the DMSF paper makes (teacher vs each single modality, student vs scratch, teacher vs
  its ablations): the paired difference of the pooled metric with a paired patient bootstrap 95 % CI
  (:mod:`pathomix.evaluate.paired`), marked ``*`` when the interval excludes 0.

Every number comes from one run of the workflow; nothing is tuned on the test folds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pathomix import paths as P  # noqa: E402
from pathomix.evaluate.metrics import CLASSIFICATION, SURVIVAL  # noqa: E402
from pathomix.evaluate.paired import paired_difference  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from luad_snn import run  # noqa: E402  (a command with the repository's src on PYTHONPATH, stops on failure)

MODELS = ["abmil", "snn", "dmsf_teacher", "dmsf_student", "dmsf_student-scratch", "dmsf_teacher-noCGC",
          "dmsf_teacher-noIGC", "ksfusion"]
PAIRS = [("dmsf_teacher", "abmil"), ("dmsf_teacher", "snn"), ("dmsf_student", "dmsf_student-scratch"),
         ("dmsf_student", "abmil"), ("dmsf_teacher", "dmsf_teacher-noCGC"), ("dmsf_teacher", "dmsf_teacher-noIGC"),
         ("ksfusion", "abmil")]
HEADLINE = {"diagnosis": ("auc", CLASSIFICATION["auc"]), "survival": ("c_index", SURVIVAL["c_index"])}


def predictions(results: Path, model: str, task: str, folds: int) -> pd.DataFrame | None:
    files = [P.model_dir(results, model, task, k) / "predictions.parquet" for k in range(folds)]
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if all(f.exists() for f in files) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cores", default="all")
    ap.add_argument("--bootstrap", type=int, default=1000, help="paired resamples per comparison")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="synthetic-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", args.cores,
             "--config", f"demo={{n_patients: {args.patients}, n_mif: 0}}", f"splits={{n_folds: {args.folds}}}",
             f"train={{models: [{', '.join(MODELS)}]}}"], work)
        wall = time.perf_counter() - t0
        res = work / "results"
        summary = pd.read_csv(res / "eval" / "summary.csv")
        print(f"\n{args.patients} synthetic patients, {args.folds} folds, wall {wall:.0f} s on {os.cpu_count()} CPUs")
        for task, (metric, fn) in HEADLINE.items():
            rows = summary[(summary.task == task) & (summary.metric == metric)].sort_values("mean", ascending=False)
            print(f"\n{task} {metric}: fold mean ± sd, pooled [95 % CI]")
            for r in rows.itertuples():
                print(f"  {r.model:24s} {r.mean:.3f} ± {r.std:.3f}   {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]")
            print(f"{task} {metric}: paired differences (A − B) [paired bootstrap 95 % CI], * = CI excludes 0")
            for a, b in PAIRS:
                pa, pb = predictions(res, a, task, args.folds), predictions(res, b, task, args.folds)
                if pa is None or pb is None:
                    continue
                d = paired_difference(pa, pb, fn, n=args.bootstrap, seed=0)
                star = "*" if d["ci_low"] > 0 or d["ci_high"] < 0 else " "
                print(f"  {a:22s} − {b:22s} {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] {star} "
                      f"(n = {d['n_patients']})")


if __name__ == "__main__":
    main()
