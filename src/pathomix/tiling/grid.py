"""Tile grid in level-0 pixels, filtered by the tissue fraction of each tile's footprint."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathomix.errors import PathomixInputError

MAX_UPSAMPLE = 0.9   # the target mpp may be at most 10 % finer than the slide's


@dataclass(frozen=True)
class GridGeometry:
    """Tile size and step in level-0 pixels for one slide and target mpp."""

    patch_size_level0: int
    step_level0: int

    @classmethod
    def for_slide(cls, slide_mpp: float, target_mpp: float, tile_px: int, overlap_px: int,
                  what: str = "slide") -> GridGeometry:
        """``patch_size_level0 = round(tile_px * target_mpp / slide_mpp)``; refuses upsampling."""
        if target_mpp < MAX_UPSAMPLE * slide_mpp:
            finest = MAX_UPSAMPLE * slide_mpp  # the finest target it serves without upsampling more than 10 %
            raise PathomixInputError(
                f"{what} has {slide_mpp:.4g} µm/px at level 0, too coarse for the target {target_mpp:.4g} µm/px "
                f"({10 / target_mpp:g}x): pathomix does not upsample by more than 10 %. The finest magnification "
                f"this image can serve is {10 / finest:.2g}x ({finest:.3g} µm/px): ask only for magnifications at "
                f"least that coarse in tiling.magnifications (e.g. {{'{10 / finest:.2g}x': {finest:.3g}}}), leave "
                "the slide out, or fix its `mpp` in slides.tsv if the file's value is wrong"
            )
        ratio = target_mpp / slide_mpp
        size = max(1, round(tile_px * ratio))
        return cls(size, max(1, size - round(overlap_px * ratio)))

    def positions(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-left x and y positions of tiles that lie fully inside a ``width`` x ``height`` slide."""
        xs = np.arange(0, width - self.patch_size_level0 + 1, self.step_level0, dtype=np.int64)
        ys = np.arange(0, height - self.patch_size_level0 + 1, self.step_level0, dtype=np.int64)
        return xs, ys


def _span(starts: np.ndarray, size: int, scale: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask-pixel [lo, hi) spans of level-0 intervals [start, start + size)."""
    lo = np.clip(np.floor(starts * scale + 0.5).astype(np.int64), 0, max(n - 1, 0))
    hi = np.clip(np.floor((starts + size) * scale + 0.5).astype(np.int64), 0, n)
    return lo, np.maximum(hi, np.minimum(lo + 1, n))


def _column_sums(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), w) int64: ``mask[:r].sum(0)`` for each of the sorted, distinct ``rows``."""
    out = np.zeros((len(rows), mask.shape[1]), np.int64)
    inner = rows[rows > 0]
    if len(inner):   # sums of the bands between consecutive rows, then their running total
        values = mask.view(np.uint8) if mask.dtype == bool else mask
        bands = np.add.reduceat(values[:inner[-1]], np.concatenate([[0], inner[:-1]]), axis=0, dtype=np.int64)
        out[len(rows) - len(inner):] = bands.cumsum(0)
    return out


def tissue_fractions(mask: np.ndarray, dimensions: tuple[int, int], xs: np.ndarray, ys: np.ndarray,
                     size: int) -> np.ndarray:
    """(len(ys), len(xs)) tissue fraction of each tile footprint, via an integral image.

    Only the integral image's rows at footprint edges are built: one pass of column sums, then
    a cumulative sum along those few rows.
    """
    mh, mw = mask.shape
    width, height = dimensions
    x0, x1 = _span(xs, size, mw / width, mw)
    y0, y1 = _span(ys, size, mh / height, mh)
    rows, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    integral = np.zeros((len(rows), mw + 1), np.int64)    # integral[k, j] = mask[:rows[k], :j].sum()
    integral[:, 1:] = _column_sums(mask, rows).cumsum(1)
    k0, k1 = inverse[:len(y0), None], inverse[len(y0):, None]
    total = integral[k1, x1] - integral[k0, x1] - integral[k1, x0] + integral[k0, x0]
    area = np.maximum((y1 - y0)[:, None] * (x1 - x0), 1)
    return total / area


def tile_coords(mask: np.ndarray, dimensions: tuple[int, int], geometry: GridGeometry,
                min_tissue_fraction: float) -> np.ndarray:
    """int64 (N, 2) level-0 top-left (x, y) of tiles on tissue, sorted row-major (y, then x)."""
    xs, ys = geometry.positions(*dimensions)
    if not len(xs) or not len(ys) or not mask.size:
        return np.zeros((0, 2), np.int64)
    frac = tissue_fractions(mask, dimensions, xs, ys, geometry.patch_size_level0)
    iy, ix = np.nonzero(frac >= min_tissue_fraction - 1e-9)
    return np.stack([xs[ix], ys[iy]], axis=1).astype(np.int64).reshape(-1, 2)


def n_positions(dimensions: tuple[int, int], geometry: GridGeometry) -> int:
    """How many grid positions fit in the slide (before the tissue filter)."""
    xs, ys = geometry.positions(*dimensions)
    return len(xs) * len(ys)

