"""``python -m pathomix.batch tile|extract|tile-extract``: tile and/or encode a batch of slides in one job.

Slides are tiled and extracted in jobs of several slides (:mod:`pathomix.batch.policy` sizes them;
``slide_batches`` in config.yaml), so a job's start-up (interpreter, imports, CUDA context, encoder) is paid
once per batch and Snakemake plans hundreds of jobs instead of tens of thousands. The outputs are the same
per-slide stores as with one job per slide (``tiles/{mag}/{slide}.h5`` + QC images,
``features/{encoder}/{mag}/{slide}.h5``); each batch job also writes a marker, ``tiles/batches/{batch}.parquet``
or ``features/{encoder}/batches/{batch}.parquet`` (slide_id, mag, path, status, seconds, started, ended), which
the downstream rules depend on. ``tile-extract`` does both in one job and writes both markers; with
``--tile-workers N`` its slides are tiled ahead in N background processes, so slide k+1 is tiled while slide k
is encoded (:func:`tile_extract`).

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
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
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

MARKER_COLUMNS = ("slide_id", "mag", "path", "status", "seconds", "started", "ended")


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


def do(w: Work) -> str:
    """Run one slide's work unless its outputs are up to date → its status."""
    if up_to_date(w.stores, w.others, w.stamp):
        return "up to date"
    w.run()
    write_stamp(w.stores, w.stamp)
    return "computed"


def marker_rows(m: Member, mags: Sequence[str], stores: Sequence[Path], status: str, started: float,
                ended: float) -> list[dict]:
    """The marker rows of one slide: one per magnification; ``started``/``ended`` in seconds since the epoch."""
    return [{"slide_id": m.slide_id, "mag": mag, "path": str(Path(s).resolve()), "status": status,
             "seconds": ended - started, "started": started, "ended": ended}
            for mag, s in zip(mags, stores, strict=True)]


def failed_error(failed: Sequence[str], n: int) -> PathomixInputError:
    return PathomixInputError(f"{len(failed)} of {n} slides of this batch failed: {list(failed)} "
                              "(messages above); fix them, or remove them from the slides sheet")


def run_batch(members: Sequence[Member], work: Callable[[Member], Work], mags: Sequence[str]) -> pd.DataFrame:
    """Do each member whose outputs are missing or stale → the marker rows; raises after the others
    are done when any slide failed."""
    rows, failed = [], []
    for i, m in enumerate(members, 1):
        start = time.time()
        try:
            w = work(m)
            status = do(w)
        except PathomixInputError as err:
            log.error("slide %s: %s", m.slide_id, err)
            failed.append(m.slide_id)
            continue
        log.info("[%d/%d] slide %s: %s (%.2f s)", i, len(members), m.slide_id, status, time.time() - start)
        rows += marker_rows(m, mags, w.stores, status, start, time.time())
    if failed:
        raise failed_error(failed, len(members))
    return pd.DataFrame(rows, columns=list(MARKER_COLUMNS))


def tile_args(args: argparse.Namespace) -> argparse.Namespace:
    """The tiling half of ``tile-extract``'s arguments, as ``tile`` takes them."""
    return argparse.Namespace(**{**vars(args), "params": args.tile_params, "code": args.tile_code})


def tile_one(m: Member, args: argparse.Namespace) -> dict:
    """Tile one slide (in a tiling worker process, or inline) → status, stores, started, ended, or error."""
    started = time.time()
    try:
        w = tile_work(m, args)
        status = do(w)
    except PathomixInputError as err:
        return {"error": str(err)}
    return {"status": status, "stores": w.stores, "started": started, "ended": time.time()}


def tiling_ahead(members: Sequence[Member], args: argparse.Namespace) -> Iterator[dict]:
    """The tiling outcome of each member, in order. With ``--tile-workers N`` > 0 every slide is queued at once
    on N background processes, so slide k+1 tiles while slide k is encoded; with 0, each slide is tiled when
    asked for (no second process: on CPU the two would only share the same cores)."""
    targs = tile_args(args)
    if not args.tile_workers:
        yield from (tile_one(m, targs) for m in members)
        return
    # spawn: the parent may hold CUDA and torch threads, which a forked child must not inherit
    pool = ProcessPoolExecutor(args.tile_workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(tile_one, m, targs) for m in members]
        yield from (f.result() for f in futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def tile_extract(members: Sequence[Member], args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tile and encode a batch in one job (one start-up, one encoder load): each slide is encoded as soon as
    its tile stores exist → (tile marker, feature marker); raises after the others when any slide failed."""
    work = Extractor(args).work
    tiles, features, failed, t0 = [], [], [], time.time()
    for i, (m, tiled) in enumerate(zip(members, tiling_ahead(members, args), strict=True), 1):
        if "error" in tiled:
            log.error("slide %s: %s", m.slide_id, tiled["error"])
            failed.append(m.slide_id)
            continue
        tiles += marker_rows(m, args.mag, tiled["stores"], tiled["status"], tiled["started"], tiled["ended"])
        started = time.time()
        try:
            w = work(m)  # after tiling: the features' stamp names the tiles' stamps
            status = do(w)
        except PathomixInputError as err:
            log.error("slide %s: %s", m.slide_id, err)
            failed.append(m.slide_id)
            continue
        features += marker_rows(m, args.mag, w.stores, status, started, time.time())
        log.info("[%d/%d] slide %s: tiles %s at +%.2f..+%.2f s, features %s at +%.2f..+%.2f s", i, len(members),
                 m.slide_id, tiled["status"], tiled["started"] - t0, tiled["ended"] - t0, status, started - t0,
                 time.time() - t0)
    if failed:
        raise failed_error(failed, len(members))
    return (pd.DataFrame(tiles, columns=list(MARKER_COLUMNS)), pd.DataFrame(features, columns=list(MARKER_COLUMNS)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pathomix.batch", description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("tile", "extract", "tile-extract"))
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
    both = p.add_argument_group("tile-extract (--params and --code are extraction's)")
    both.add_argument("--tile-params", default="{}", help="JSON of the tiling config subtree")
    both.add_argument("--tile-code", default="", help="code hash of tiling")
    both.add_argument("--tile-out", type=Path, help="the batch's tiling marker (.parquet)")
    both.add_argument("--tile-workers", type=int, default=0,
                      help="background tiling processes (0: tile each slide just before encoding it)")
    args = p.parse_args(argv)
    if args.stage == "tile-extract" and args.tile_out is None:
        p.error("tile-extract needs --tile-out")
    return args


@stage_main("pathomix.batch")
def main(argv: list[str] | None = None) -> int:
    """Tile, encode, or tile and encode one batch: 0 on success, 1 on an input problem (logged, no marker written)."""
    args = parse_args(argv)
    start = time.perf_counter()
    members = read_members(args.members)
    if args.stage == "tile-extract":
        tiles, marker = tile_extract(members, args)
        write_parquet(tiles, args.tile_out)
    else:
        marker = run_batch(members, STAGES[args.stage](args), args.mag)
    write_parquet(marker, args.out)
    done = marker.drop_duplicates("slide_id").status.value_counts().to_dict()
    log.info("batch %s: %d slides %s in %.1f s", args.out.name, len(members), done, time.perf_counter() - start)
    return 0
