"""``python -m pathomix.batch.qc_report``: the tiling QC images of batch runs, gathered for the Snakemake report.

With batch jobs (``slide_batches``) the QC images are written next to the coords stores but are not outputs
Snakemake knows by name, so they cannot be flagged for the report one by one. This light job, run once after
every tiling batch, links them into one folder, ``tiles/qc_report/{mag}_{slide}.png``, which the workflow flags
for the report as a directory (category "Tiling QC", one item per image, as with one tiling job per slide).
Hard links where the file system allows (no copy of the images), else copies.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from pathomix import paths as P
from pathomix.cli import exit_process, stage_main

log = logging.getLogger("pathomix.batch.qc_report")


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def gather(markers: list[Path], results: Path, out: Path) -> int:
    """Link every QC image of the slides the tiling markers list into ``out`` (made whole, then renamed into
    place); → the number of images. A slide whose QC image is missing is logged and left out."""
    rows = pd.concat([pd.read_parquet(m, columns=["slide_id", "mag"]) for m in markers], ignore_index=True)
    rows = rows.drop_duplicates().sort_values(["mag", "slide_id"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    n = 0
    for r in rows.itertuples():
        qc = P.tile_qc(results, r.mag, r.slide_id)
        if not qc.exists():
            log.warning("slide %s: no tiling QC image at %s; left out of the report", r.slide_id, qc)
            continue
        link_or_copy(qc, tmp / f"{r.mag}_{r.slide_id}.png")
        n += 1
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return n


@stage_main("pathomix.batch.qc_report")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.batch.qc_report", description=__doc__.splitlines()[0])
    p.add_argument("--markers", nargs="+", required=True, type=Path, help="tiles/batches/{k}.parquet")
    p.add_argument("--results", required=True, type=Path, help="the results folder")
    p.add_argument("--out", required=True, type=Path, help="tiles/qc_report (a folder)")
    args = p.parse_args(argv)
    log.info("%d tiling QC images gathered in %s", gather(args.markers, args.results, args.out), args.out)
    return 0


if __name__ == "__main__":
    exit_process(main())
