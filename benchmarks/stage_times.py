"""Per-stage time and memory of a finished run, from Snakemake's benchmark files.

    python benchmarks/stage_times.py [results]

Prints, per rule: jobs, summed wall seconds, mean and max wall seconds, summed CPU seconds
and the largest peak RSS. Summed wall time exceeds the run's elapsed time when jobs ran in
parallel. Batch jobs (pathomix.batch) also list per slide what they did: their markers give, per
stage, the slides computed, the summed seconds of those slides and what the jobs spent besides
(start-up, imports, the encoder's load: job wall time minus the slides' seconds). Where tiling runs
ahead of extraction the first term counts the tiling that was hidden, too.
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


def batch_slides(results: Path) -> pd.DataFrame:
    """Per stage (tiles, features/{encoder}), from the batch markers: slides computed, their summed seconds and
    the earliest start / latest end (seconds since the first start)."""
    rows = []
    for marker in sorted(results.glob("**/batches/*.parquet")):
        m = pd.read_parquet(marker).drop_duplicates("slide_id")
        rows.append(m.assign(stage=str(marker.parent.parent.relative_to(results))))
    if not rows:
        return pd.DataFrame()
    df = pd.concat(rows)
    t0 = df.started.min() if "started" in df else 0
    done = df[df.status == "computed"]
    return done.groupby("stage").agg(slides=("slide_id", "size"), slide_s=("seconds", "sum"),
                                     first_start=("started", lambda v: v.min() - t0),
                                     last_end=("ended", lambda v: v.max() - t0)).round(1)


if __name__ == "__main__":
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    table = stage_times(results)
    print(table.sort_values("wall_s", ascending=False).to_string())
    print(f"all jobs: {table.wall_s.sum():.0f} s wall summed, {table.cpu_s.sum():.0f} s CPU")
    if len(slides := batch_slides(results)):
        print("\nbatch jobs, per slide (markers):")
        print(slides.to_string())
