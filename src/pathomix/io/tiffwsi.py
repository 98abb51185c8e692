"""H&E whole-slide images that openslide does not read, decoded with tifffile: OME-TIFF exports of QuPath,
Bio-Formats (``bfconvert``) or ``raw2ometiff``, with the pyramid in SubIFDs or as a series of images.

µm/px comes from the OME-XML (``PhysicalSizeX`` in ``PhysicalSizeXUnit``, µm when absent), else from the
TIFF resolution tags. Regions are decoded tile by tile (one tile in memory at a time per read), so a large
slide is never loaded whole; pixels are the same whatever the region's offset and size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pathomix.errors import PathomixInputError
from pathomix.io.ome import ome_objective_power, ome_pixels, pixels_mpp
from pathomix.io.regions import stitch
from pathomix.io.slide import Slide, checked_mpp, mpp_from_resolution, resize_rgb

log = logging.getLogger(__name__)

_WHOLE_PAGE_PIXELS = 256_000_000   # a strip (untiled) level is decoded whole: at most this many pixels
_LEVEL_PIXELS = 64_000_000         # thumbnails decode a whole level at once up to this size
_DECODE_ERRORS = (tifffile.TiffFileError, ValueError, RuntimeError, OSError, IndexError, KeyError)
_LEVEL_ASPECT = 0.02               # a later image is a pyramid level if its aspect ratio is within 2 %


def _rgb_page(series: tifffile.TiffPageSeries) -> bool:
    """One 8-bit RGB plane (``YXS`` with 3 samples), stored interleaved."""
    page = series.keyframe
    extra = int(np.prod([n for n, a in zip(series.shape, series.axes, strict=True) if a not in "YXS"] or [1]))
    return (series.axes.endswith("YXS") and series.shape[-1] in (3, 4) and series.dtype == np.uint8
            and extra == 1 and page.planarconfig == 1)


def pyramid_pages(tf: tifffile.TiffFile, what: str) -> list[tifffile.TiffPage]:
    """The first image's levels, finest first: its SubIFD/OME pyramid, or (older Bio-Formats exports) the
    following images of the same aspect ratio and decreasing size."""
    series = tf.series[0]
    if not _rgb_page(series):
        raise PathomixInputError(
            f"{what} is an OME-TIFF with image axes {series.axes!r}, shape {series.shape}, {series.dtype}; H&E "
            "slides must be 8-bit RGB (axes YXS). For a fluorescence or multiplex image set modality `mif`; "
            "otherwise re-export it as RGB (QuPath: File > Export images > OME TIFF)"
        )
    levels = [lvl.keyframe for lvl in series.levels]
    if len(levels) == 1:
        h0, w0 = levels[0].shape[:2]
        for other in tf.series[1:]:
            page = other.keyframe
            h, w = page.shape[:2]
            if not _rgb_page(other) or not (h < levels[-1].shape[0] and w < levels[-1].shape[1]):
                continue
            if abs((w / h) / (w0 / h0) - 1) <= _LEVEL_ASPECT:
                levels.append(page)
    return levels


class TiffSlide(Slide):
    """An 8-bit RGB (OME-)TIFF pyramid read with tifffile; regions as (h, w, 3) uint8, white outside."""

    def __init__(self, path: Path, slide_id: str, mpp: float | None = None) -> None:
        what = f"slide {slide_id} ({path})"
        try:
            self._tif = tifffile.TiffFile(path)
        except _DECODE_ERRORS as e:
            raise PathomixInputError(f"{what} is not a readable TIFF ({e}); check the file is complete") from e
        try:
            self._pages = pyramid_pages(self._tif, what)
            page0 = self._pages[0]
            file_mpp = pixels_mpp(ome_pixels(self._tif)) if self._tif.is_ome else None
            if file_mpp is None:
                file_mpp = _tag_mpp(page0)
            mpp0 = checked_mpp(file_mpp, mpp, what)
        except PathomixInputError:
            self._tif.close()
            raise
        h0, w0 = page0.shape[:2]
        dims = tuple((p.shape[1], p.shape[0]) for p in self._pages)
        downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in dims)
        power = ome_objective_power(self._tif) if self._tif.is_ome else None
        super().__init__(slide_id, path, "he", mpp0, dims, downsamples, ["R", "G", "B"], [False] * 3, power)
        self._whole: dict[int, np.ndarray] = {}
        log.debug("%s: read with tifffile, %d level(s) %s", self.label, len(dims), dims)

    def _decode_tile(self, page: tifffile.TiffPage, index: int) -> np.ndarray | None:
        if not page.databytecounts[index]:
            return None
        fh = self._tif.filehandle
        with fh.lock:
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
        return page.decode(data, index, jpegtables=page.jpegtables)[0][0]

    def _page_whole(self, level: int) -> np.ndarray:
        if level not in self._whole:
            page = self._pages[level]
            if page.shape[0] * page.shape[1] > _WHOLE_PAGE_PIXELS:
                raise PathomixInputError(
                    f"{self.label}: level {level} ({page.shape[1]}x{page.shape[0]}) is stored in strips, not "
                    "tiles, and is too large to decode whole; convert it to a tiled pyramid, e.g. `bfconvert "
                    "-tilex 512 -tiley 512 -pyramid-resolutions 5 -compression JPEG IN OUT.ome.tiff`"
                )
            self._whole[level] = page.asarray(maxworkers=1)
        return self._whole[level]

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of ``level`` at level-0 ``(x, y)`` (rounded to the level's pixel grid)."""
        page = self._pages[level]
        ds = self.level_downsamples[level]
        lx, ly = round(x / ds), round(y / ds)
        try:
            if page.is_tiled:
                return stitch(lambda i: self._decode_tile(page, i), (page.tilewidth, page.tilelength),
                              (page.shape[1], page.shape[0]), lx, ly, int(w), int(h))
            whole = self._page_whole(level)
            return stitch(lambda _: whole, (page.shape[1], page.shape[0]), (page.shape[1], page.shape[0]),
                          lx, ly, int(w), int(h))
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
        return resize_rgb(arr, size, box, resample)

    def close(self) -> None:
        """Close the TIFF file."""
        self._whole.clear()
        self._tif.close()


def _tag_mpp(page: tifffile.TiffPage) -> float | None:
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is None or unit is None:
        return None
    num, den = res.value if isinstance(res.value, tuple) else (res.value, 1)
    return mpp_from_resolution(num / den if den else None, str(int(unit.value)))
