"""One reader interface for H&E whole-slide images (openslide) and mIF images (tifffile).

Coordinates are level-0 pixels ``(x, y)`` of the top-left corner; sizes say which level
they are in. H&E regions are ``(h, w, 3)`` uint8 RGB (alpha composited on white); mIF
regions are ``(C, h, w)`` float32 raw values. Every user-facing failure raises
:class:`PathomixInputError` naming the slide id and the file.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import openslide
import tifffile
from PIL import Image

from pathomix.constants import MODALITIES as MODALITIES  # re-exported; defined once there
from pathomix.errors import PathomixInputError

log = logging.getLogger(__name__)

MPP_RANGE = (0.05, 100.0)         # µm/px a microscopy image can really have (coarse levels and overviews included)
# µm/px that a desktop resolution default writes (25 400 / dpi): a tag, not a scanner
DPI_DEFAULTS = {dpi: 25_400.0 / dpi for dpi in (72, 96, 150, 300, 600, 1200)}
LEVEL_TOLERANCE = 0.01            # best_level accepts levels up to 1 % coarser than asked
_STRIP_PIXELS = 16_000_000        # thumbnail reads at most this many level pixels at once
# Thumbnails may decode their level with tifffile instead of openslide (about 6x faster: no
# cairo/ARGB round trip), only where the pixels are the same: these openslide vendors, tiled 8-bit
# RGB pages (JPEG as YCbCr or RGB, or lossless), no missing tiles, levels up to this many pixels.
_TIFF_LEVEL_PIXELS = 64_000_000
_TIFF_VENDORS = frozenset({"generic-tiff", "aperio"})
_TIFF_CODECS = frozenset({1, 5, 7, 8, 32946})      # none, LZW, JPEG, Adobe deflate, deflate
_TIFF_PHOTOMETRIC = frozenset({2, 6})             # RGB, YCbCr (the latter with JPEG only)
# what every "cannot read this format" message proposes
CONVERT = ("convert it to a pyramidal OME-TIFF with Bio-Formats: `bfconvert -noflat -tilex 512 -tiley 512 "
           "-pyramid-resolutions 5 -pyramid-scale 2 -compression JPEG IN OUT.ome.tiff`, or `bioformats2raw IN "
           "OUT.zarr` then `raw2ometiff OUT.zarr OUT.ome.tiff` (pathomix reads OME-TIFF with tifffile)")
_RESOLUTION_UNIT_UM = {"centimeter": 1e4, "inch": 25_400.0, "3": 1e4, "2": 25_400.0}


def checked_mpp(mpp_file: float | None, override: float | None, what: str) -> float:
    """Return the level-0 µm/px: ``override`` wins, else the file's value if plausible.

    ``what`` names the slide and file for the error message.
    """
    if override is not None:
        if not (math.isfinite(override) and override > 0):
            raise PathomixInputError(
                f"{what}: the `mpp` override {override} must be a positive number (µm/px); fix slides.tsv"
            )
        return float(override)
    if mpp_file is None:
        raise PathomixInputError(
            f"{what} has no MPP (µm per pixel) in its metadata; add an `mpp` column to slides.tsv"
        )
    lo, hi = MPP_RANGE
    dpi = next((d for d, um in DPI_DEFAULTS.items() if math.isclose(mpp_file, um, rel_tol=1e-3)), None)
    if dpi is not None or not lo <= mpp_file <= hi:
        why = (f"exactly what a {dpi}-dpi default resolution tag gives (25 400 / {dpi}), not a scanner" if dpi
               else f"outside what a microscope gives ({lo}–{hi} µm/px)")
        raise PathomixInputError(
            f"{what} reports an MPP of {mpp_file:.4g} µm/px, which is implausible: {why}; add an `mpp` column "
            "with the true value to slides.tsv"
        )
    return float(mpp_file)


def mpp_from_resolution(resolution: float | None, unit: str | None) -> float | None:
    """µm/px from a TIFF XResolution (pixels per unit) and ResolutionUnit name or code."""
    scale = _RESOLUTION_UNIT_UM.get(str(unit).lower()) if unit is not None else None
    if not resolution or scale is None or resolution <= 0:
        return None
    return scale / float(resolution)


def tiff_tag_mpp(page: tifffile.TiffPage) -> float | None:
    """µm/px from a TIFF page's XResolution and ResolutionUnit tags (None when absent)."""
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is None or unit is None:
        return None
    num, den = res.value if isinstance(res.value, tuple) else (res.value, 1)
    return mpp_from_resolution(num / den if den else None, str(int(unit.value)))


def resize_rgb(arr: np.ndarray, size: tuple[int, int], box: tuple[float, ...] | None = None,
               resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """Resize an (h, w, 3) uint8 image to ``size`` = (w, h); ``box`` is a source crop."""
    if box is None and (arr.shape[1], arr.shape[0]) == tuple(size):
        return arr
    return np.array(Image.fromarray(arr).resize(size, resample, box=box))


def resize_chw(arr: np.ndarray, size: tuple[int, int], box: tuple[float, ...] | None = None,
               resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """Resize a (C, h, w) float32 stack channel by channel to ``size`` = (w, h)."""
    if box is None and (arr.shape[2], arr.shape[1]) == tuple(size):
        return arr.astype(np.float32, copy=False)
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(c, np.float32)).resize(size, resample, box=box))
           for c in arr]
    return np.stack(out) if out else np.zeros((0, size[1], size[0]), np.float32)


class Slide(ABC):
    """A slide or mIF image opened for reading; use as a context manager."""

    _row_axis = 0  # axis of image rows in what read_region returns

    def __init__(self, slide_id: str, path: Path, modality: str, mpp: float,
                 level_dimensions: tuple[tuple[int, int], ...], level_downsamples: tuple[float, ...],
                 channels: list[str], autofluorescence: list[bool], objective_power: float | None) -> None:
        self.slide_id = slide_id
        self.path = path
        self.modality = modality
        self.mpp = mpp
        self.level_dimensions = tuple((int(w), int(h)) for w, h in level_dimensions)
        self.level_downsamples = tuple(float(d) for d in level_downsamples)
        self.channels = list(channels)
        self.autofluorescence = list(autofluorescence)
        self.objective_power = objective_power if objective_power else 10.0 / mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_dimensions[0]

    @property
    def label(self) -> str:
        """``slide ID (path)`` for messages."""
        return f"slide {self.slide_id} ({self.path})"

    def best_level(self, downsample: float) -> int:
        """The deepest level whose downsample is <= ``downsample`` (1 % tolerance)."""
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + LEVEL_TOLERANCE)]
        return max(ok, key=lambda i: self.level_downsamples[i]) if ok else 0

    @abstractmethod
    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """Read ``w`` x ``h`` pixels of ``level`` starting at level-0 ``(x, y)``."""

    @abstractmethod
    def _resize(self, arr: np.ndarray, size: tuple[int, int], box: tuple[float, ...] | None,
                resample: Image.Resampling) -> np.ndarray:
        """Resize a region returned by :meth:`read_region`."""

    def read_tile(self, x: int, y: int, size_level0: int, out_px: int) -> np.ndarray:
        """A ``size_level0`` square at level-0 ``(x, y)`` read from the best level, resized to ``out_px``."""
        level = self.best_level(size_level0 / out_px)
        n = max(1, round(size_level0 / self.level_downsamples[level]))
        region = self.read_region(x, y, level, n, n)
        return self._resize(region, (out_px, out_px), None, Image.Resampling.BILINEAR)

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at about ``mpp`` µm/px, read from the best level in row strips."""
        w0, h0 = self.dimensions
        factor = max(mpp / self.mpp, 1.0)
        tw, th = max(1, round(w0 / factor)), max(1, round(h0 / factor))
        level = self.best_level(factor)
        lw, lh = self.level_dimensions[level]
        fy = lh / th
        rows = max(1, int(_STRIP_PIXELS / max(lw * fy * self._planes(), 1)))
        ds = self.level_downsamples[level]
        starts = [int(math.floor(r0 * fy)) for r0 in range(0, th, rows)]
        # A strip whose level-0 start maps back to a whole level row is read by openslide without
        # resampling, so a direct decode of the level gives the same pixels; a fractional start
        # (non-integer downsample) is interpolated by openslide, so such slides keep read_region.
        exact = all(round(i * ds) / ds == i for i in starts) and lw * lh <= _TIFF_LEVEL_PIXELS
        whole = self._level_pixels(level) if exact else None
        out: np.ndarray | None = None   # filled strip by strip (no list + concatenate: one copy of the result)
        for r0 in range(0, th, rows):
            r1 = min(th, r0 + rows)
            y0, y1 = r0 * fy, r1 * fy
            iy0, iy1 = int(math.floor(y0)), min(lh, int(math.ceil(y1)))
            if whole is not None:
                region = whole[iy0:iy1]
            else:
                region = self.read_region(0, round(iy0 * ds), level, lw, iy1 - iy0)
            box = (0.0, y0 - iy0, float(lw), min(y1, lh) - iy0)
            strip = self._resize(region, (tw, r1 - r0), box, Image.Resampling.BOX)
            del region
            if out is None:
                shape = list(strip.shape)
                shape[self._row_axis] = th
                out = np.empty(shape, strip.dtype)
            out[(slice(None),) * self._row_axis + (slice(r0, r1),)] = strip
        return out

    def _level_pixels(self, level: int) -> np.ndarray | None:
        """The whole ``level`` exactly as :meth:`read_region` returns it, when a faster reader can
        give it; None otherwise (the default)."""
        return None

    def _planes(self) -> int:
        """Planes decoded per pixel that count against the thumbnail's strip budget (mIF: its channels)."""
        return 1

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the file handle."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.slide_id!r}, {self.dimensions[0]}x{self.dimensions[1]}, "
                f"mpp={self.mpp:.4g}, levels={len(self.level_dimensions)}, channels={len(self.channels)})")


class WSISlide(Slide):
    """An H&E whole-slide image read through openslide."""

    def __init__(self, path: Path, slide_id: str, mpp: float | None = None) -> None:
        what = f"slide {slide_id} ({path})"
        self._osr = _open_openslide(path, what)
        props = self._osr.properties
        mpp0 = checked_mpp(_wsi_file_mpp(props), mpp, what)
        power = _float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        super().__init__(slide_id, path, "he", mpp0, self._osr.level_dimensions,
                         self._osr.level_downsamples, ["R", "G", "B"], [False] * 3, power)
        self._tiles: TiffTiles | None | bool = False   # False: not looked at yet; None: not applicable

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB; transparent (outside the slide) pixels come out white.

        Regions inside a level of a plain tiled TIFF (see :class:`TiffTiles`) are decoded directly,
        about 10x faster than openslide's ARGB round trip, with the same pixels; anything else,
        and any tile that fails to decode, goes through openslide (which names corrupt data)."""
        direct = self._direct_tiles()
        if direct is not None:
            ds = self.level_downsamples[level]
            lx, ly = x / ds, y / ds
            if lx.is_integer() and ly.is_integer():
                region = direct.region(level, int(lx), int(ly), int(w), int(h))
                if region is not None:
                    return region
        return self._openslide_region(x, y, level, w, h)

    def _direct_tiles(self) -> TiffTiles | None:
        if self._tiles is False:
            vendor = self._osr.properties.get(openslide.PROPERTY_NAME_VENDOR)
            self._tiles = TiffTiles.open(self.path, self.level_dimensions) if vendor in _TIFF_VENDORS else None
        return self._tiles

    def _openslide_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        try:
            rgba = self._osr.read_region((int(x), int(y)), int(level), (int(w), int(h)))
        except openslide.OpenSlideError as e:
            raise PathomixInputError(
                f"{self.label}: reading a {w}x{h} region at level {level}, level-0 x={x}, y={y} failed "
                f"({e}); the image data is corrupt there. Re-export or re-copy the slide, or drop it "
                "from slides.tsv"
            ) from e
        return _composite_white(rgba)

    def _resize(self, arr: np.ndarray, size: tuple[int, int], box: tuple[float, ...] | None,
                resample: Image.Resampling) -> np.ndarray:
        return resize_rgb(arr, size, box, resample)

    def _level_pixels(self, level: int) -> np.ndarray | None:
        """Decode a whole level with tifffile where that gives openslide's pixels (see :class:`TiffTiles`)."""
        direct = self._direct_tiles()
        return direct.level(level) if direct is not None else None

    def close(self) -> None:
        """Close the openslide handle (and the direct TIFF reader, if one was opened)."""
        if self._tiles:
            self._tiles.close()
        self._tiles = False
        self._osr.close()


class TiffTiles:
    """Direct decoding of whole TIFF tiles, for the levels openslide would read unchanged.

    A level qualifies when exactly one tiled page has its size and that page is plain 8-bit RGB
    (:func:`_plain_rgb`: codecs decoded like openslide does, no missing tiles). A region that lies
    inside such a level, at an integer level position, is stitched from its tiles; ``None`` (read it
    through openslide) otherwise. Tests check the pixels equal openslide's on the shared slides.
    """

    def __init__(self, tif: tifffile.TiffFile, pages: dict[int, tifffile.TiffPage]) -> None:
        self._tif, self._pages = tif, pages

    @classmethod
    def open(cls, path: Path, level_dimensions: Sequence[tuple[int, int]]) -> TiffTiles | None:
        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, OSError) as e:
            log.debug("%s: no direct TIFF tile reads (%s)", path, e)
            return None
        pages = {}
        for level, (w, h) in enumerate(level_dimensions):
            match = [p for p in tif.pages if p.is_tiled and p.shape[:2] == (h, w)]
            if len(match) == 1 and _plain_rgb(match[0]):
                pages[level] = match[0]
        if not pages:
            tif.close()
            return None
        return cls(tif, pages)

    def region(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray | None:
        """(h, w, 3) uint8 of ``level`` at level pixel (lx, ly), or None when this reader cannot give it."""
        page = self._pages.get(level)
        if page is None or lx < 0 or ly < 0 or lx + w > page.shape[1] or ly + h > page.shape[0]:
            return None
        tw, th = page.tilewidth, page.tilelength
        per_row = -(-page.shape[1] // tw)
        out = np.empty((h, w, 3), np.uint8)
        fh = self._tif.filehandle
        try:
            for ty in range(ly // th, (ly + h - 1) // th + 1):
                for tx in range(lx // tw, (lx + w - 1) // tw + 1):
                    index = ty * per_row + tx
                    with fh.lock:
                        fh.seek(page.dataoffsets[index])
                        data = fh.read(page.databytecounts[index])
                    tile = page.decode(data, index, jpegtables=page.jpegtables)[0][0]
                    x0, y0 = max(lx, tx * tw), max(ly, ty * th)
                    x1, y1 = min(lx + w, (tx + 1) * tw), min(ly + h, (ty + 1) * th)
                    out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = tile[y0 - ty * th:y1 - ty * th, x0 - tx * tw:x1 - tx * tw]
        except (RuntimeError, ValueError, OSError, IndexError) as e:   # corrupt data: openslide reports it
            log.debug("direct TIFF read of level %d at (%d, %d) failed (%s); using openslide", level, lx, ly, e)
            return None
        return out

    def level(self, level: int) -> np.ndarray | None:
        """The whole ``level`` (h, w, 3), when it qualifies and has at most ``_TIFF_LEVEL_PIXELS`` pixels."""
        page = self._pages.get(level)
        if page is None or page.shape[0] * page.shape[1] > _TIFF_LEVEL_PIXELS:
            return None
        try:
            arr = page.asarray(maxworkers=1)
        except (tifffile.TiffFileError, ValueError, RuntimeError, OSError) as e:
            log.debug("level %d not decoded with tifffile (%s); reading it through openslide", level, e)
            return None   # read_region then reads it, and reports corrupt data in its own words
        return arr if arr.shape == (*page.shape[:2], 3) else None

    def close(self) -> None:
        self._tif.close()


def _plain_rgb(page: tifffile.TiffPage) -> bool:
    """A tiled, contiguous 8-bit RGB page without missing tiles, in a codec decoded like openslide does."""
    return (page.dtype == np.uint8 and page.samplesperpixel == 3 and page.planarconfig == 1
            and page.compression in _TIFF_CODECS and page.photometric in _TIFF_PHOTOMETRIC
            and (page.photometric == 2 or page.compression == 7) and all(page.databytecounts))


def _composite_white(rgba: Image.Image) -> np.ndarray:
    """Non-premultiplied RGBA (openslide) → (h, w, 3) uint8 RGB on a white background."""
    if rgba.getextrema()[3][0] < 255:
        rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.array(rgba.convert("RGB"))


def _open_openslide(path: Path, what: str) -> openslide.OpenSlide:
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as e:
        raise PathomixInputError(
            f"{what} is not a whole-slide image that openslide recognises (truncated, not a slide, or "
            f"an unsupported format); check the file is complete, or {CONVERT}"
        ) from e
    except openslide.OpenSlideError as e:
        raise PathomixInputError(
            f"{what} could not be opened by openslide (detected format: "
            f"{openslide.OpenSlide.detect_format(str(path)) or 'unknown'}): {e}; the file is corrupt or uses an "
            f"unsupported encoding. Check the file is complete, or {CONVERT}, or drop it from slides.tsv"
        ) from e


def _float_or_none(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _wsi_file_mpp(props: Mapping[str, str]) -> float | None:
    """MPP from ``openslide.mpp-x``, else from the TIFF resolution tags."""
    mpp = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X))
    if mpp is not None:
        return mpp
    resolution = _float_or_none(props.get("tiff.XResolution"))
    return mpp_from_resolution(resolution, props.get("tiff.ResolutionUnit"))


def open_slide(path: str | Path, modality: str = "he", mpp: float | None = None,
               slide_id: str | None = None, channels_sheet: str | Path | None = None) -> Slide:
    """Open an H&E WSI (``modality="he"``: the reader of its detected format, see
    :mod:`pathomix.io.formats`) or an mIF image (``"mif"``: OME-TIFF, multi-page TIFF
    or a folder of one TIFF per channel).

    ``mpp`` overrides the file's µm/px; ``channels_sheet`` (mIF only) gives marker names and
    autofluorescence flags. Raises :class:`PathomixInputError` on any unusable input.
    """
    path = Path(path)
    slide_id = slide_id or path.stem
    if modality not in MODALITIES:
        raise PathomixInputError(
            f"slide {slide_id} ({path}): modality {modality!r} is not one of {MODALITIES}; fix slides.tsv"
        )
    if mpp is not None and isinstance(mpp, float) and math.isnan(mpp):
        mpp = None
    if not path.exists():
        raise PathomixInputError(
            f"slide {slide_id}: file {path} does not exist; fix the `path` column in slides.tsv"
        )
    if modality == "mif":
        from pathomix.io.mif import MIFSlide

        return MIFSlide(path, slide_id, mpp=mpp, channels_sheet=channels_sheet)
    from pathomix.io.formats import dicom_in_folder, open_he

    if path.is_dir():
        first = dicom_in_folder(path)   # a DICOM WSI series is a folder of instances: open it from any one
        if first is None:
            raise PathomixInputError(
                f"slide {slide_id}: {path} is a folder, but H&E slides must be one file (or a folder holding a DICOM "
                "WSI series); set modality `mif` for a folder of channel TIFFs"
            )
        path = first
    if channels_sheet is not None:
        log.debug("slide %s: channel sheet ignored for H&E", slide_id)
    return open_he(path, slide_id, mpp)
