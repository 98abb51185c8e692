"""Stamps: what made a store, written into it (h5 attribute ``pathomix_stamp``).

A stamp hashes a stage's inputs for one slide: the stage's config subtree and code hash, and for
tiling the magnifications, the slide file's size and modification time, its mpp override and mIF
channel sheet; for extraction the tile stores' own stamps. The per-slide jobs and the batch jobs of
large cohorts (:mod:`pathomix.batch`) stamp the same way, so a batch job finds a store made by a
per-slide job up to date (a cohort that grows past ``slide_batches.above`` is not recomputed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py

STAMP_ATTR = "pathomix_stamp"


def file_signature(path: str | Path) -> list[Any]:
    """Size and modification time of a file, or of every file in a folder (an mIF channel folder)."""
    p = Path(path)
    if not p.exists():
        return [str(p), None]
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [str(p), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


def make_stamp(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def tile_stamp(code: str, params: str, mags: Sequence[str], target_mpp: Sequence[float], path: str | Path,
               modality: str, mpp: float | None, channels_sheet: str | Path | None) -> str:
    """Stamp of a slide's tile stores (``params``: the tiling config subtree as JSON)."""
    return make_stamp("tile", code, json.loads(params), list(mags), [float(t) for t in target_mpp],
                      file_signature(path), modality, None if mpp is None else float(mpp),
                      file_signature(channels_sheet) if modality == "mif" and channels_sheet else None)


def extract_stamp(code: str, params: str, on_bad_tile: str, tile_stores: Sequence[str | Path]) -> str:
    """Stamp of a slide's feature stores: the features config, the code and the tile stores' stamps."""
    return make_stamp("extract", code, json.loads(params), on_bad_tile, [read_stamp(t) for t in tile_stores])


def read_stamp(path: str | Path) -> str | None:
    """The stamp of an h5 store, or None (missing file, no stamp, unreadable)."""
    try:
        with h5py.File(path, "r") as h:
            value = h.attrs.get(STAMP_ATTR)
    except (OSError, KeyError):
        return None
    return None if value is None else str(value)


def write_stamp(paths: Sequence[str | Path], stamp: str) -> None:
    for path in paths:
        with h5py.File(path, "a") as h:
            h.attrs[STAMP_ATTR] = stamp
