"""QC image of a tiled slide: thumbnail, tissue-mask outline and tile grid (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pathomix.io.atomic import atomic_path

MAX_INCHES = 8.0
DPI = 110


def _figure(shape: tuple[int, int]) -> Figure:
    h, w = shape
    scale = MAX_INCHES / max(h, w, 1)
    fig = Figure(figsize=(max(w * scale, 3.0), max(h * scale, 3.0) + 0.4), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _tile_boxes(coords: np.ndarray, size_level0: int, scale: tuple[float, float]) -> PatchCollection:
    sx, sy = scale
    boxes = [Rectangle((x * sx - 0.5, y * sy - 0.5), size_level0 * sx, size_level0 * sy) for x, y in coords]
    return PatchCollection(boxes, facecolor="none", edgecolor="tab:blue", linewidth=0.4)


def write_qc(path: str | Path, image: np.ndarray, mask: np.ndarray, coords: np.ndarray,
             size_level0: int, scale: tuple[float, float], title: str) -> None:
    """Write the QC PNG atomically.

    ``image`` is the thumbnail ((h, w, 3) RGB or (h, w) signal), ``mask`` the tissue mask of
    the same (h, w), ``scale`` = thumbnail px per level-0 px in (x, y).
    """
    fig = _figure(mask.shape)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.4 / fig.get_figheight()))
    ax.imshow(image, cmap=None if image.ndim == 3 else "magma", interpolation="nearest")
    if mask.any():
        ax.imshow(np.ma.masked_where(~mask, mask), cmap="Greens", alpha=0.25, vmin=0, vmax=1,
                  interpolation="nearest")
        if min(mask.shape) >= 2:
            ax.contour(mask.astype(np.uint8), levels=[0.5], colors="lime", linewidths=0.8)
    if len(coords):
        ax.add_collection(_tile_boxes(coords, size_level0, scale))
    ax.set_xlim(-0.5, mask.shape[1] - 0.5)
    ax.set_ylim(mask.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    fig.suptitle(title, fontsize=9, y=0.995, va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
