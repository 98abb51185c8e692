"""Wall time of the embedded demo from nothing to the report's inputs, where the time goes, and the CPU spent.

    python benchmarks/demo_time.py [--cores 2] [--keep DIR] [--snakemake-args "..."]

Copies the repository's tracked files (``git ls-files``) to a fresh folder, runs ``snakemake --cores N`` there
with the Python on PATH (install the package first: ``pip install -e .``), and prints: the wall time; the CPU
time of the whole run (Snakemake and every job, from ``getrusage``) against the CPU time the jobs' benchmark
files record, so the cost of Snakemake itself and of job start-up shows; the number of jobs; and the per-rule
table of ``benchmarks/stage_times.py``. Run it on a quiet machine: the wall time is what the README quotes.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from stage_times import stage_times  # noqa: E402


def copy_tracked(dest: Path) -> None:
    """The repository as a fresh clone would have it (tracked files only: no results, no venvs)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="run in this (new) folder and keep it")
    ap.add_argument("--snakemake-args", default="", help="more arguments for snakemake")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="pathomix-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        copy_tracked(work)
        cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), *shlex.split(args.snakemake_args)]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        cpu0, t0 = children_cpu(), time.perf_counter()
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return done.returncode
        table = stage_times(work / "results")
        load = os.getloadavg()
        print(f"demo on {args.cores} cores: {wall:.1f} s wall; CPU {cpu:.1f} s in all (Snakemake + jobs), "
              f"{table.cpu_s.sum():.1f} s recorded by the jobs' benchmarks; {int(table.jobs.sum())} jobs; "
              f"load average after the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(table.sort_values("wall_s", ascending=False).to_string())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
