"""Drawing for the slide heatmaps: attention per tile → a thumbnail-sized map, grid figures, exports."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from pathomix.evaluate.png import save_figure, save_rgb  # noqa: E402

# the usual attention colour map (CLAM, TRIDENT), blue = low, red = high, in 10 steps: deciles of the
# within-slide percentile read off at a glance (and survive the palette PNG exactly)
CMAP = plt.get_cmap("jet", 10)
ALPHA = 0.5           # opacity of the attention over the thumbnail
PANEL_IN = 3.3        # width of one panel in the grid figure (inches)
DPI = 80
PANEL_PX = 2 * round(PANEL_IN * DPI)  # thumbnails in the grid: twice the panel's pixels is plenty


# display colours of mIF markers: the nuclear stain blue, the others in this order
NUCLEAR = ("DAPI", "HOECHST")
MARKER_COLOURS = ((0.1, 0.9, 0.1), (1.0, 0.15, 0.1), (1.0, 0.1, 1.0), (1.0, 0.85, 0.0), (0.0, 0.9, 0.9),
                  (1.0, 0.55, 0.0), (0.6, 0.6, 1.0), (0.9, 0.9, 0.9))


def mif_composite(chw: np.ndarray, channels: list[str], autofluorescence: list[bool]) -> np.ndarray:
    """An mIF thumbnail ``(C, h, w)`` as a fluorescence-style RGB image ``(h, w, 3)`` uint8: each marker
    (autofluorescence left out) stretched between its 1st and 99.5th percentile and added in its own
    colour, the nuclear stain in blue."""
    keep = [i for i, af in enumerate(autofluorescence) if not af] or list(range(len(chw)))
    nuclear = [i for i in keep if channels[i].upper() in NUCLEAR]
    others = [i for i in keep if i not in nuclear]
    colours = {i: (0.2, 0.4, 1.0) for i in nuclear} | {
        i: MARKER_COLOURS[k % len(MARKER_COLOURS)] for k, i in enumerate(others)}
    rgb = np.zeros((*chw.shape[1:], 3), np.float32)
    for i, colour in colours.items():
        lo, hi = np.percentile(chw[i], [1.0, 99.5])
        rgb += np.clip((chw[i] - lo) / max(hi - lo, 1e-6), 0, 1)[..., None] * np.asarray(colour, np.float32)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def shrink(thumb: np.ndarray, long_side: int = PANEL_PX) -> np.ndarray:
    """The thumbnail reduced to ``long_side`` px (drawing a larger one only costs time)."""
    h, w = thumb.shape[:2]
    f = long_side / max(h, w)
    if f >= 1:
        return thumb
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(thumb).resize(size, Image.Resampling.BOX))


def attention_grid(thumb: np.ndarray, tile_index: np.ndarray, weights: np.ndarray, coords: np.ndarray,
                   size_level0: int, level0_wh: tuple[int, int]) -> np.ndarray:
    """(h, w) float map over the thumbnail: each tile's attention as a percentile within the slide
    (rank / n, 1 = the most attended tile), NaN where no tile is."""
    h, w = thumb.shape[:2]
    out = np.full((h, w), np.nan, np.float32)
    if len(weights) == 0:
        return out
    pct = pd.Series(weights).rank(pct=True, method="average").to_numpy(np.float32)
    sx, sy = w / level0_wh[0], h / level0_wh[1]
    for i, v in zip(np.asarray(tile_index, int), pct, strict=True):
        x, y = coords[i]
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = int(np.ceil((x + size_level0) * sx)), int(np.ceil((y + size_level0) * sy))
        region = out[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
        np.fmax(region, v, out=region)  # overlapping tiles: the higher attention wins
    return out


def blend(thumb: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Thumbnail with the attention colours blended in where there are tiles ((h, w, 3) uint8)."""
    rgb = plt.get_cmap(CMAP)(np.nan_to_num(grid))[..., :3] * 255
    mask = np.isfinite(grid)[..., None]
    out = np.where(mask, (1 - ALPHA) * thumb.astype(np.float32) + ALPHA * rgb, thumb)
    return out.clip(0, 255).astype(np.uint8)


def export_png(thumb: np.ndarray, grid: np.ndarray, path: Path) -> None:
    save_rgb(blend(thumb, grid), path)


def _label(r) -> str:
    risk = "" if pd.isna(r.risk_pct) else f", risk pct {r.risk_pct:.0%}"
    return f"{r.slide_id} ({r.group}{risk})"


def grid_figure(thumbs: dict[str, np.ndarray], chosen: pd.DataFrame, columns: list[tuple[str, str]],
                panels: list[list[np.ndarray]], title: str, path: Path) -> None:
    """Rows = chosen slides, columns = (task, magnification); a shared colour bar."""
    n_rows, n_cols = max(1, len(chosen)), max(1, len(columns))
    aspect = max((t.shape[0] / t.shape[1] for t in thumbs.values()), default=0.7)
    width, height = PANEL_IN * n_cols + 1.0, (PANEL_IN * aspect + 0.45) * n_rows + 0.5
    # a fixed grid (constrained layout would double the drawing time); room for titles and the colour bar
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False, gridspec_kw={
        "left": 0.01, "right": 1 - 1.0 / width, "bottom": 0.01, "top": 1 - 0.75 / height, "wspace": 0.04,
        "hspace": 0.45 / (PANEL_IN * aspect)})
    for ax in axes.flat:
        ax.set_axis_off()
    for i, r in enumerate(chosen.itertuples()):
        for j, (task, mag) in enumerate(columns):
            ax, grid = axes[i, j], panels[i][j]
            ax.imshow(thumbs[r.slide_id])
            ax.imshow(np.ma.masked_invalid(grid), cmap=CMAP, vmin=0, vmax=1, alpha=ALPHA, interpolation="nearest")
            if not np.isfinite(grid).any():
                ax.text(0.5, 0.5, "no attention rows", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{_label(r)}\n{task} · {mag}" if j == 0 else f"\n{task} · {mag}", fontsize=8, loc="left")
    mappable = plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap=CMAP)
    cax = fig.add_axes((1 - 0.8 / width, 0.3, 0.15 / width, 0.4))
    fig.colorbar(mappable, cax=cax, label="attention percentile within the slide (deciles)")
    fig.suptitle(title)
    save_figure(fig, path, dpi=DPI, tight=False)  # constrained layout fits it already
