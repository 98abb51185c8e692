"""H&E whole-slide images that openslide does not read, decoded with tifffile: OME-TIFF exports of QuPath,
Bio-Formats (``bfconvert``) or ``bioformats2raw`` + ``raw2ometiff``, with the pyramid in SubIFDs or as a series
of images, RGB stored interleaved (``YXS``), as three 8-bit channel pages (``CYX``, raw2ometiff's default) or
planar-separate.

µm/px comes from the OME-XML (``PhysicalSizeX`` in ``PhysicalSizeXUnit``, µm when absent), else from the
TIFF resolution tags. Regions are decoded tile by tile (or strip by strip) through :mod:`pathomix.io.planes`,
so a large slide is never loaded whole; pixels are the same whatever the region's offset and size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pathomix.errors import PathomixInputError
from pathomix.io.ome import ome_objective_power, ome_pixels, pixels_mpp
from pathomix.io.planes import Plane, SegmentCache, series_planes
from pathomix.io.slide import Slide, checked_mpp, resize_rgb, tiff_tag_mpp

log = logging.getLogger(__name__)

_LEVEL_PIXELS = 64_000_000         # thumbnails decode a whole level at once up to this size
_DECODE_ERRORS = (tifffile.TiffFileError, ValueError, RuntimeError, OSError, IndexError, KeyError)
_LEVEL_ASPECT = 0.02               # a later image is a pyramid level if its aspect ratio is within 2 %


def _extra(series: tifffile.TiffPageSeries, keep: str) -> int:
    return int(np.prod([n for n, a in zip(series.shape, series.axes, strict=True) if a not in keep] or [1]))


def _interleaved_rgb(series: tifffile.TiffPageSeries) -> bool:
    """One 8-bit RGB(A) image stored interleaved (``YXS`` with 3 or 4 samples)."""
    return (series.axes.endswith("YXS") and series.shape[-1] in (3, 4) and series.dtype == np.uint8
            and _extra(series, "YXS") == 1 and series.keyframe.planarconfig == 1)


def rgb_planes(tf: tifffile.TiffFile, what: str) -> tuple[list[Plane], bool]:
    """(planes, interleaved): one plane of interleaved RGB pages, or three planes (R, G, B) for channel pages or
    planar-separate samples; the first image's levels, finest first (its SubIFD/OME pyramid, or, for older
    Bio-Formats exports, the following images of the same aspect ratio and decreasing size)."""
    series = tf.series[0]
    cache = SegmentCache()
    kf = series.keyframe
    if _interleaved_rgb(series):
        pages = [lvl.keyframe for lvl in series.levels]
        if len(pages) == 1:
            h0, w0 = pages[0].shape[:2]
            for other in tf.series[1:]:
                page = other.keyframe
                h, w = page.shape[:2]
                smaller = h < pages[-1].shape[0] and w < pages[-1].shape[1]
                if _interleaved_rgb(other) and smaller and abs((w / h) / (w0 / h0) - 1) <= _LEVEL_ASPECT:
                    pages.append(page)
        return [Plane(tf, pages, cache=cache, fill=255)], True
    if series.dtype == np.uint8 and kf.planarconfig == 2 and kf.samplesperpixel == 3 and _extra(series, "SYX") == 1:
        pages = [lvl.keyframe for lvl in series.levels]
        return [Plane(tf, pages, s, cache=cache, fill=255) for s in range(3)], False
    channels = series.shape[series.axes.index("C")] if "C" in series.axes else 0
    planes = series_planes(tf, 3) if series.dtype == np.uint8 and channels == 3 and _extra(series, "CYX") == 1 else None
    if planes is None:
        raise PathomixInputError(
            f"{what} is an OME-TIFF with image axes {series.axes!r}, shape {series.shape}, {series.dtype}; H&E "
            "slides must be 8-bit RGB (interleaved YXS, or 3 channels CYX). For a fluorescence or multiplex image "
            "set modality `mif`; otherwise re-export it as RGB (QuPath: File > Export images > OME TIFF)"
        )
    for p in planes:
        p.cache, p.fill = cache, 255
    return planes, False


class TiffSlide(Slide):
    """An 8-bit RGB (OME-)TIFF pyramid read with tifffile; regions as (h, w, 3) uint8, white outside."""

    def __init__(self, path: Path, slide_id: str, mpp: float | None = None) -> None:
        what = f"slide {slide_id} ({path})"
        try:
            self._tif = tifffile.TiffFile(path)
        except _DECODE_ERRORS as e:
            raise PathomixInputError(f"{what} is not a readable TIFF ({e}); check the file is complete") from e
        try:
            self._rgb, self._interleaved = rgb_planes(self._tif, what)
            file_mpp = pixels_mpp(ome_pixels(self._tif)) if self._tif.is_ome else None
            if file_mpp is None:
                file_mpp = tiff_tag_mpp(self._rgb[0].pages[0].keyframe)
            mpp0 = checked_mpp(file_mpp, mpp, what)
        except PathomixInputError:
            self._tif.close()
            raise
        first = self._rgb[0]
        dims = tuple(first.level_size(lvl) for lvl in range(len(first.pages)))
        w0, h0 = dims[0]
        downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in dims)
        power = ome_objective_power(self._tif) if self._tif.is_ome else None
        super().__init__(slide_id, path, "he", mpp0, dims, downsamples, ["R", "G", "B"], [False] * 3, power)
        log.debug("%s: read with tifffile, %d level(s) %s, %s", self.label, len(dims), dims,
                  "interleaved RGB" if self._interleaved else "one plane per colour")

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of ``level`` at level-0 ``(x, y)`` (rounded to the level's pixel grid)."""
        ds = self.level_downsamples[level]
        lx, ly, w, h = round(x / ds), round(y / ds), int(w), int(h)
        try:
            if self._interleaved:
                return self._rgb[0].bands(level, lx, ly, w, h)[..., :3]
            return np.stack([p.region(level, lx, ly, w, h) for p in self._rgb], axis=-1)
        except _DECODE_ERRORS as e:
            raise PathomixInputError(
                f"{self.label}: reading a {w}x{h} region at level {level}, level-0 x={x}, y={y} failed ({e}); "
                "the image data is corrupt there. Re-export or re-copy the slide, or drop it from slides.tsv"
            ) from e

    def _level_pixels(self, level: int) -> np.ndarray | None:
        w, h = self.level_dimensions[level]
        return self.read_region(0, 0, level, w, h) if w * h <= _LEVEL_PIXELS else None

    def _resize(self, arr: np.ndarray, size: tuple[int, int], box: tuple[float, ...] | None,
                resample: Image.Resampling) -> np.ndarray:
        return resize_rgb(np.ascontiguousarray(arr), size, box, resample)

    def close(self) -> None:
        """Close the TIFF file."""
        self._rgb[0].cache.clear()
        self._tif.close()


