"""Genes-only survival on TCGA LUAD: the PORPOISE table → pathomix sheets → Snakemake → C-index.

    python benchmarks/luad_snn.py [--table PATH] [--folds 5] [--omics rnaseq[,cnv,mut]] [--keep DIR]
                                  [--config KEY=VALUE ...]

Converts ``../shared/data/genomics/tcga_luad_all_clean.csv.zip`` (453 patients) into a temporary folder
with ``python -m pathomix.io.convert --omics ...``, runs the workflow genes-only (``slides=null``,
``train.tasks=[survival]``, patient-level k-fold CV, every other key at its config.yaml default) with three
models on the same folds: ``snn`` on the genes, ``snn-age`` (snn with ``train.covariates: [age]``, late
fusion) and ``cox_clinical`` on age alone; then prints per model the test C-index of each fold, their
mean ± sd, the pooled out-of-fold C-index with its bootstrap 95 % CI, and the wall time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
LUAD = ROOT.parent / "shared" / "data" / "genomics" / "tcga_luad_all_clean.csv.zip"


def run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


MODELS = "train={models: [snn, snn-age, cox_clinical], tasks: [survival], variants: {snn-age: {model: snn, covariates: [age]}, cox_clinical: {covariates: [age]}}}"  # noqa: E501


def c_index_table(results: Path) -> pd.DataFrame:
    m = pd.read_parquet(results / "eval" / "metrics.parquet")
    return m[(m.task == "survival") & (m.metric == "c_index")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", type=Path, default=LUAD)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--omics", default="rnaseq", help="omics families of the table: rnaseq, or rnaseq,cnv,mut")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--config", nargs="*", default=[], help="more snakemake --config overrides")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="luad-snn-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run([sys.executable, "-m", "pathomix.io.convert", str(args.table), "--omics", args.omics,
             "--out", str(work / "cohort")], work)
        t1 = time.perf_counter()
        run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "all",
             "--config", "slides=null", f"clinical={work / 'cohort' / 'clinical.tsv'}",
             f"genes={work / 'cohort' / 'genes.parquet'}", f"results_dir={work / 'results'}",
             MODELS,
             f"splits={{n_folds: {args.folds}}}", *args.config], work)
        t2 = time.perf_counter()
        c = c_index_table(work / "results")
    print(f"\nTCGA LUAD ({args.omics}), survival, {args.folds}-fold patient-level CV, test C-index:")
    for model, rows in c.groupby("model", sort=False):
        folds = rows[rows.fold != "all"].set_index("fold").value
        pooled = rows[rows.fold == "all"].iloc[0]
        ci = f" [95 % CI {pooled.ci_low:.3f}–{pooled.ci_high:.3f}]" if pd.notna(pooled.ci_low) else ""
        print(f"  {model:13s} folds {' '.join(f'{v:.3f}' for v in folds)}  mean ± sd {folds.mean():.3f} ± "
              f"{folds.std(ddof=1):.3f}  pooled {pooled.value:.3f}{ci}")
    print(f"wall time: {t2 - t0:.0f} s (convert {t1 - t0:.1f} s, snakemake {t2 - t1:.0f} s) on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
