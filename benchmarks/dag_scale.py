"""How fast Snakemake plans the workflow for large cohorts (dry run, no slide is opened).

    python benchmarks/dag_scale.py [N ...] [--per-slide] [--root CHECKOUT]     (default: 1000 10000)

``--per-slide`` also plans the same cohort with one job per slide (``slide_batches.size: 0``), side by
side with the batch jobs that cohorts above ``slide_batches.above`` get.

For each N: a temporary cohort of N slides (empty stub files; N/2 patients), a config.yaml
next to it, then ``snakemake -n`` timed end to end; also the sheet validation alone
(``pathomix.io.sheets.read_slides`` + ``pathomix.config.validate_table``, as the Snakefile does).
Cohorts above ``slide_batches.above`` (500) are planned in batch jobs (config.yaml).
Prints wall seconds, the CPU seconds of the snakemake process (user + sys: what a shared machine's load
does not inflate) and the load average before each run. Targets: 10 000 slides in under 15 s, 100 000 in
under 30 s on 2 cores. ``--root`` plans with another checkout's Snakefile (e.g. main, for a before/after;
set PYTHONPATH to its src too).
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE_ROOT = ROOT  # --root: the checkout whose Snakefile is planned


def make_cohort(work: Path, n: int, per_slide: bool = False, models: tuple[str, ...] = ("abmil",)) -> None:
    """N stub slides of N/2 patients, their sheets and a config.yaml (also used by tests/test_batch.py)."""
    (work / "slides").mkdir()
    for i in range(n):
        (work / "slides" / f"S{i:05d}.svs").touch()
    pd.DataFrame({"slide_id": [f"S{i:05d}" for i in range(n)], "patient_id": [f"P{i // 2:05d}" for i in range(n)],
                  "path": [f"slides/S{i:05d}.svs" for i in range(n)], "modality": "he", "mpp": 0.25}) \
        .to_csv(work / "slides.tsv", sep="\t", index=False)
    pd.DataFrame({"patient_id": [f"P{i:05d}" for i in range((n + 1) // 2)], "idh": "wt"}) \
        .to_csv(work / "clinical.tsv", sep="\t", index=False)
    cfg = yaml.safe_load((SNAKEFILE_ROOT / "config.yaml").read_text())
    cfg.update(slides="slides.tsv", clinical="clinical.tsv", genes=None, mif_channels=None, demo={"enabled": False})
    cfg["train"]["models"] = list(models)
    if per_slide:
        cfg["slide_batches"] = {"size": 0, "above": 0}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))


def time_validation(work: Path) -> float:
    code = ("import time, yaml; from pathomix.config import validate_table; from pathomix.io.sheets import read_slides;"
            f"schema = yaml.safe_load(open('{ROOT}/workflow/schemas/slides.schema.yaml'));"
            f"t = time.perf_counter(); df = read_slides('{work}/slides.tsv');"
            "validate_table(df, schema, 'slides'); print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                 .stdout.split()[-1])


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_dry_run(work: Path) -> tuple[float, float, int]:
    """``snakemake -n`` of the cohort in ``work`` → (wall s, CPU s, jobs)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start, cpu = time.perf_counter(), child_cpu()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE_ROOT / "Snakefile"), "-d", str(work),
                           "-n", "--quiet", "rules", "--cores", "2"], capture_output=True, text=True, env=env)
    seconds, cpu = time.perf_counter() - start, child_cpu() - cpu
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    total = re.search(r"^total\s+(\d+)", proc.stdout, re.M)
    return seconds, cpu, int(total.group(1)) if total else 0


def main() -> None:
    global SNAKEFILE_ROOT
    args = sys.argv[1:]
    if "--root" in args:
        i = args.index("--root")
        SNAKEFILE_ROOT = Path(args[i + 1]).resolve()
        del args[i:i + 2]
    sizes = [int(a) for a in args if a != "--per-slide"] or [1000, 10000]
    modes = [False, True] if "--per-slide" in args else [False]
    for n in sizes:
        seconds = {}
        for per_slide in modes:
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                make_cohort(work, n, per_slide)
                v = time_validation(work)
                load = os.getloadavg()[0]
                s, cpu, jobs = time_dry_run(work)
                seconds[per_slide] = s
                mode = "one job per slide" if per_slide else "default batching"
                print(f"N = {n:6d} slides, {mode}: sheet read + schema validation {v:6.2f} s; "
                      f"snakemake -n {s:6.2f} s wall, {cpu:6.2f} s CPU for {jobs} jobs ({jobs / s:,.0f} jobs/s; "
                      f"load average {load:.1f} before)", flush=True)
        if len(seconds) == 2:
            print(f"N = {n:6d}: per-slide / default planning time = {seconds[True] / seconds[False]:.1f}x")


if __name__ == "__main__":
    main()
