"""PNG output of the evaluation figures: 256-colour palette PNGs, about 4× smaller than matplotlib's
RGBA output at no visible cost for plots and heatmaps (the report embeds every figure)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from pathomix.io.atomic import atomic_path

COLOURS = 256


def save_image(image: Image.Image, path: str | Path) -> None:
    small = image.convert("RGB").quantize(COLOURS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        small.save(tmp, format="PNG")


def save_rgb(rgb: np.ndarray, path: str | Path) -> None:
    """An (h, w, 3) uint8 array as a palette PNG, written atomically."""
    save_image(Image.fromarray(rgb), path)


def save_figure(fig: Figure, path: str | Path, dpi: int = 100, tight: bool = True) -> None:
    """A matplotlib figure as a palette PNG, written atomically; the figure is closed. A figure with a
    constrained layout is saved as laid out (a second, tight bounding-box pass would only cost time)."""
    import matplotlib.pyplot as plt
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    tight = tight and not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    buf = io.BytesIO()
    # an uncompressed intermediate PNG: it is decoded at once and re-encoded as a palette PNG below
    fig.savefig(buf, dpi=dpi, bbox_inches="tight" if tight else None, format="png", pil_kwargs={"compress_level": 0})
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:
        save_image(im, path)
