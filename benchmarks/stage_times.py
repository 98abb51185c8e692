"""Per-stage time and memory of a finished run, from Snakemake's benchmark files.

    python benchmarks/stage_times.py [results]

Prints, per rule: jobs, summed wall seconds, mean and max wall seconds, summed CPU seconds
and the largest peak RSS. Summed wall time exceeds the run's elapsed time when jobs ran in
parallel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def stage_times(results: Path) -> pd.DataFrame:
    rows = []
    for f in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = f.relative_to(results / "benchmarks").parts[0].removesuffix(".tsv")
        b = pd.read_csv(f, sep="\t").iloc[-1]
        rows.append({"rule": rule, "s": b["s"], "cpu_time": b["cpu_time"], "max_rss": b["max_rss"]})
    df = pd.DataFrame(rows)
    return df.groupby("rule").agg(jobs=("s", "size"), wall_s=("s", "sum"), mean_s=("s", "mean"),
                                  max_s=("s", "max"), cpu_s=("cpu_time", "sum"),
                                  max_rss_mb=("max_rss", "max")).round(1)


if __name__ == "__main__":
    table = stage_times(Path(sys.argv[1] if len(sys.argv) > 1 else "results"))
    print(table.sort_values("wall_s", ascending=False).to_string())
    print(f"all jobs: {table.wall_s.sum():.0f} s wall summed, {table.cpu_s.sum():.0f} s CPU")
