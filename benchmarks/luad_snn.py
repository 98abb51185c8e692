"""Genes-only survival on TCGA LUAD: the PORPOISE table → pathomix sheets → Snakemake → C-index.

    python benchmarks/luad_snn.py [--table PATH] [--folds 5] [--keep DIR] [--config KEY=VALUE ...]

Converts ``../shared/data/genomics/tcga_luad_all_clean.csv.zip`` (453 patients, RNA-seq) into a
temporary folder with ``python -m pathomix.io.convert``, runs the workflow genes-only
(``slides=null``, ``train.models=[snn]``, ``train.tasks=[survival]``, patient-level k-fold CV,
every other key at its config.yaml default), then prints the test C-index of each fold, their
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


def c_index_table(results: Path) -> pd.DataFrame:
    m = pd.read_parquet(results / "eval" / "metrics.parquet")
    return m[(m.model == "snn") & (m.task == "survival") & (m.metric == "c_index")].set_index("fold")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", type=Path, default=LUAD)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--config", nargs="*", default=[], help="more snakemake --config overrides")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="luad-snn-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run([sys.executable, "-m", "pathomix.io.convert", str(args.table), "--out", str(work / "cohort")], work)
        t1 = time.perf_counter()
        run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "all",
             "--config", "slides=null", f"clinical={work / 'cohort' / 'clinical.tsv'}",
             f"genes={work / 'cohort' / 'genes.parquet'}", f"results_dir={work / 'results'}",
             "train={models: [snn], tasks: [survival]}",
             f"splits={{n_folds: {args.folds}}}", *args.config], work)
        t2 = time.perf_counter()
        c = c_index_table(work / "results")
    folds = c.drop(index="all").value
    print(f"\nTCGA LUAD, snn on survival (genes only), {args.folds}-fold patient-level CV, test C-index:")
    for fold, v in folds.items():
        print(f"  fold {fold}: {v:.3f}")
    print(f"  mean ± sd over folds: {folds.mean():.3f} ± {folds.std(ddof=1):.3f}")
    pooled = c.loc["all"]
    ci = f" [95 % CI {pooled.ci_low:.3f}–{pooled.ci_high:.3f}]" if pd.notna(pooled.ci_low) else ""
    print(f"  pooled out-of-fold: {pooled.value:.3f}{ci}")
    print(f"wall time: {t2 - t0:.0f} s (convert {t1 - t0:.1f} s, snakemake {t2 - t1:.0f} s) on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
