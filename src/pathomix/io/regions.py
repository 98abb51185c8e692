"""Regions stitched from the tiles (frames) of one pyramid level, for readers that decode tiles themselves."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def stitch(decode: Callable[[int], np.ndarray | None], tile: tuple[int, int], level: tuple[int, int],
           lx: int, ly: int, w: int, h: int, fill: int = 255, bands: int = 3,
           dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """(h, w, bands) of a level at level pixel (lx, ly), from row-major tiles (or strips: tiles as wide as
    the level).

    ``decode(i)`` returns tile ``i`` as (th, tw, S) or (th, tw), or None for a missing tile; a last strip
    may be shorter. ``tile`` = (tw, th), ``level`` = (W, H). Pixels outside the level and in missing tiles
    are ``fill`` (H&E: white, as openslide's transparent pixels come out; mIF: 0).
    """
    (tw, th), (lw, lh) = tile, level
    out = np.full((h, w, bands), fill, dtype)
    x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
    if x1 <= x0 or y1 <= y0:
        return out
    per_row = -(-lw // tw)
    for ty in range(y0 // th, (y1 - 1) // th + 1):
        for tx in range(x0 // tw, (x1 - 1) // tw + 1):
            data = decode(ty * per_row + tx)
            if data is None:
                continue
            if data.ndim == 2:
                data = data[..., None]
            ax0, ay0 = max(x0, tx * tw), max(y0, ty * th)
            ax1, ay1 = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
            ty0, tx0 = ty * th, tx * tw
            out[ay0 - ly:ay1 - ly, ax0 - lx:ax1 - lx] = data[ay0 - ty0:ay1 - ty0, ax0 - tx0:ax1 - tx0, :bands]
    return out
