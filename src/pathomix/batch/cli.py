"""``python -m pathomix.batch tile|extract``: tile or encode a batch of slides in one job.

Cohorts with more than ``slide_batches.above`` slides are tiled and extracted in jobs of about
``slide_batches.size`` slides (a slide's batch is ``crc32(slide_id) mod n_batches``), so Snakemake plans
hundreds of jobs instead of tens of thousands. The outputs are the same per-slide stores as with one job
per slide (``tiles/{mag}/{slide}.h5`` + QC images, ``features/{encoder}/{mag}/{slide}.h5``); each batch
job also writes a marker, ``tiles/batches/{batch}.parquet`` or ``features/{encoder}/batches/{batch}.parquet``
(slide_id, mag, path, status, seconds), which the downstream rules depend on.

A batch job that reruns (a slide added to the batch, a slide file or the stage's config or code
changed) redoes only the slides whose outputs are missing or stale: every store carries a stamp of what
made it (:mod:`pathomix.io.stamps`; the per-slide jobs write the same stamps). Equal stamp → the slide is
left as it is.

A slide that fails (an input error: no MPP, unreadable file, ...) is logged with its message; the
other slides of the batch go on, then the job fails naming every failed slide and writes no marker,
so nothing downstream runs on a partial batch (other batches go on under ``--keep-going``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pathomix import paths as P
from pathomix.cli import stage_main
from pathomix.constants import BAD_TILE_POLICIES
from pathomix.errors import PathomixInputError
from pathomix.features.tiles import SlideRef
from pathomix.io.atomic import write_parquet
from pathomix.io.stamps import read_stamp, write_stamp

if TYPE_CHECKING:
    from pathomix.tiling.params import TilingParams

log = logging.getLogger("pathomix.batch")

MARKER_COLUMNS = ("slide_id", "mag", "path", "status", "seconds")


Member = SlideRef  # one slide of a batch, as the slides sheet gives it


def read_members(text: str) -> list[Member]:
    """``--members`` JSON: a list of {slide_id, path, modality, mpp} (or ``@file.json``)."""
    raw = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    return [Member(str(m["slide_id"]), str(m["path"]), str(m.get("modality", "he")),
                   None if m.get("mpp") is None else float(m["mpp"])) for m in raw]


def up_to_date(stores: Sequence[Path], others: Sequence[Path], stamp: str) -> bool:
    return all(read_stamp(s) == stamp for s in stores) and all(Path(o).exists() for o in others)


@dataclass(frozen=True)
class Work:
    """What one slide needs done: the stores it writes (stamped), other files, its stamp and the call."""

    stores: list[Path]
    others: list[Path]
    stamp: str
    run: Callable[[], Any]


def tile_work(m: Member, args: argparse.Namespace, params: TilingParams | None = None) -> Work:
    """One slide's tiling: :func:`pathomix.tiling.stage.run` with typed params and paths."""
    from pathomix.tiling import stage as tiling
    from pathomix.tiling.params import TilingParams

    params = params or TilingParams.from_json(args.params)
    sheet = Path(args.channels_sheet) if m.modality == "mif" and args.channels_sheet else None
    paths = tiling.TilePaths(
        m.slide_id, Path(m.path), m.modality, tuple(args.mag), tuple(args.target_mpp),
        tuple(P.tiles(args.results, mag, m.slide_id) for mag in args.mag),
        tuple(P.tile_qc(args.results, mag, m.slide_id) for mag in args.mag), m.mpp, sheet)
    return Work(list(paths.out), list(paths.qc), tiling.stamp(params, paths, args.code),
                partial(tiling.run, params, paths))


class Extractor:
    """Encodes slide after slide with one encoder (built once per batch job)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from pathomix.features import cli as features

        self.args, self.encoder, self.batch_encoders = args, None, {}
        self.params = features.load_extract_params(args.params, args.on_bad_tile)

    def work(self, m: Member) -> Work:
        from pathomix.features import cli as features

        args = self.args
        paths = features.ExtractPaths(
            m.slide_id, m.path, tuple(str(P.tiles(args.results, mag, m.slide_id)) for mag in args.mag),
            tuple(str(P.features(args.results, args.encoder, mag, m.slide_id)) for mag in args.mag), m.modality,
            m.mpp, str(args.channels_sheet) if m.modality == "mif" and args.channels_sheet else None)

        def run() -> None:
            if self.encoder is None:
                self.encoder = features.load_encoder(self.params)
            features.run(self.params, paths, args.threads, self.encoder, self.batch_encoders)
        return Work([Path(p) for p in paths.out], [], features.stamp(self.params, paths.tiles, args.code), run)


def tiler(args: argparse.Namespace) -> Callable[[Member], Work]:
    """Tiles slide after slide with the batch's params (parsed once: a bad key fails the job at once)."""
    from pathomix.tiling.params import TilingParams

    params = TilingParams.from_json(args.params)
    return lambda m: tile_work(m, args, params)


STAGES: dict[str, Callable[[argparse.Namespace], Callable[[Member], Work]]] = {
    "tile": tiler,
    "extract": lambda args: Extractor(args).work,
}


def run_batch(members: Sequence[Member], work: Callable[[Member], Work], mags: Sequence[str]) -> pd.DataFrame:
    """Do each member whose outputs are missing or stale → the marker rows; raises after the others
    are done when any slide failed."""
    rows, failed = [], []
    for i, m in enumerate(members, 1):
        start = time.perf_counter()
        try:
            w = work(m)
            if up_to_date(w.stores, w.others, w.stamp):
                status = "up to date"
            else:
                w.run()
                write_stamp(w.stores, w.stamp)
                status = "computed"
        except PathomixInputError as err:
            log.error("slide %s: %s", m.slide_id, err)
            failed.append(m.slide_id)
            continue
        seconds = time.perf_counter() - start
        log.info("[%d/%d] slide %s: %s (%.2f s)", i, len(members), m.slide_id, status, seconds)
        rows += [{"slide_id": m.slide_id, "mag": mag, "path": str(Path(s).resolve()), "status": status,
                  "seconds": seconds} for mag, s in zip(mags, w.stores, strict=True)]
    if failed:
        raise PathomixInputError(f"{len(failed)} of {len(members)} slides of this batch failed: {failed} "
                                 "(messages above); fix them, or remove them from the slides sheet")
    return pd.DataFrame(rows, columns=list(MARKER_COLUMNS))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pathomix.batch", description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("tile", "extract"))
    p.add_argument("--members", required=True, help="JSON list of {slide_id, path, modality, mpp}, or @file")
    p.add_argument("--results", required=True, help="results folder (stores go to their usual paths in it)")
    p.add_argument("--mag", required=True, nargs="+", help="magnification names, e.g. 20x 10x")
    p.add_argument("--target-mpp", nargs="+", type=float, default=[], help="tile: µm/px per --mag")
    p.add_argument("--encoder", help="extract: encoder name (the features/{encoder} folder)")
    p.add_argument("--params", default="{}", help="JSON of the stage's config subtree")
    p.add_argument("--code", default="", help="code hash of the stage (part of the stamp)")
    p.add_argument("--channels-sheet", default=None, help="mIF channel sheet")
    p.add_argument("--on-bad-tile", default=None, choices=BAD_TILE_POLICIES,
                   help="extract: overrides the config's features.on_bad_tile")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, type=Path, help="the batch's marker (.parquet)")
    return p.parse_args(argv)


@stage_main("pathomix.batch")
def main(argv: list[str] | None = None) -> int:
    """Tile or encode one batch: 0 on success, 1 on an input problem (logged, no marker written)."""
    args = parse_args(argv)
    start = time.perf_counter()
    members = read_members(args.members)
    work = STAGES[args.stage](args)
    marker = run_batch(members, work, args.mag)
    write_parquet(marker, args.out)
    done = marker.drop_duplicates("slide_id").status.value_counts().to_dict()
    log.info("batch %s: %d slides %s in %.1f s", args.out.name, len(members), done, time.perf_counter() - start)
    return 0
