"""QC image of a tiled slide: thumbnail, tissue-mask tint and outline, tile grid (Pillow).

Pillow rather than matplotlib keeps the per-slide job's start-up short (one job per slide).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pathomix.io.atomic import atomic_path

LONG_SIDE = (600, 1600)          # the image part of the PNG is scaled into this range (px)
HEADER_PX = 26
TISSUE_RGB = (40, 200, 60)
PNG_LEVEL = 1                    # zlib level: 1 writes a 1600 px QC image ~6x faster than Pillow's default 6
OUTLINE_RGB = (0, 170, 0)
TILE_RGB = (31, 119, 180)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 as is; an (h, w) signal in 0..1 as a grey image."""
    if image.ndim == 3:
        return image
    grey = np.clip(np.nan_to_num(image.astype(np.float32)) * 255, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _zoom(shape: tuple[int, int]) -> float:
    lo, hi = LONG_SIDE
    side = max(shape)
    return min(hi / side, max(1.0, lo / side))


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch a non-mask pixel (4-neighbourhood)."""
    p = np.pad(mask, 1, mode="edge")
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _overlay(rgb: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Resize the thumbnail to ``size`` = (w, h), tint tissue green, draw its outline."""
    resample = Image.Resampling.NEAREST if size[0] >= rgb.shape[1] else Image.Resampling.BOX
    image = Image.fromarray(rgb).resize(size, resample)
    big = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    tinted = Image.blend(image, Image.new("RGB", size, TISSUE_RGB), 0.2)   # 80 % image, 20 % green
    out = np.array(Image.composite(tinted, image, big))
    out[_outline(np.asarray(big) > 0)] = OUTLINE_RGB
    return Image.fromarray(out)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):   # Pillow < 10.1 or no FreeType: the small bitmap font
        return ImageFont.load_default()


def render_qc(image: np.ndarray, mask: np.ndarray, coords: np.ndarray, size_level0: int,
              scale: tuple[float, float], title: str) -> Image.Image:
    """The QC picture as a PIL image (see :func:`write_qc` for the arguments)."""
    zoom = _zoom(mask.shape)
    w, h = max(1, round(mask.shape[1] * zoom)), max(1, round(mask.shape[0] * zoom))
    picture = _overlay(_to_rgb(image), mask, (w, h))
    draw = ImageDraw.Draw(picture)
    sx, sy = scale[0] * w / mask.shape[1], scale[1] * h / mask.shape[0]
    for x, y in np.asarray(coords).reshape(-1, 2):
        x0, y0 = x * sx, y * sy
        draw.rectangle((x0, y0, x0 + size_level0 * sx - 1, y0 + size_level0 * sy - 1), outline=TILE_RGB)
    canvas = Image.new("RGB", (max(w, 400), h + HEADER_PX), "white")
    canvas.paste(picture, (0, HEADER_PX))
    ImageDraw.Draw(canvas).text((6, 5), title, fill="black", font=_font(14))
    return canvas


def write_qc(path: str | Path, image: np.ndarray, mask: np.ndarray, coords: np.ndarray,
             size_level0: int, scale: tuple[float, float], title: str) -> None:
    """Write the QC PNG atomically.

    ``image`` is the thumbnail ((h', w', 3) uint8 RGB, or an (h', w') signal in 0..1; resized to the
    picture, so it may be coarser than the mask), ``mask`` the bool (h, w) tissue mask, ``coords``
    level-0 tile corners, ``scale`` the mask px per level-0 px in (x, y).
    """
    picture = render_qc(image, mask, coords, size_level0, scale, title)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", compress_level=PNG_LEVEL)
