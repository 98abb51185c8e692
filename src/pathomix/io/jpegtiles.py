"""Compressed JPEG tile bytes straight from a tiled TIFF, for decoding many tiles at once on a device.

A region of a pyramid level, at an integer level position, is covered by a grid of TIFF tiles. For a
JPEG-compressed level this module returns each covered tile as a *complete* JPEG stream plus where the
region lies in the assembled grid (:class:`RegionStreams`), so that a batched decoder
(``torchvision.io.decode_jpeg`` on nvjpeg) can decode them and the caller stitches and crops.

Stream assembly: TIFF JPEG tiles are often *abbreviated* streams whose quantisation and Huffman tables sit
once in the level's ``JPEGTables`` tag (347). A complete stream is ``SOI``, an APP14 "Adobe" segment that
states the colour transform, the tables without their ``SOI``/``EOI``, then the tile without its ``SOI``.
The APP14 segment matters: Aperio SVS tiles are RGB-encoded (Photometric RGB) with component ids 0, 1, 2
and no marker saying so, and libjpeg-turbo then assumes YCbCr and returns wrong colours (mean |diff| ≈ 48
on CMU-1-Small-Region); with ``transform=0`` they decode exactly like openslide/tifffile. YCbCr tiles get
``transform=1``, which is libjpeg's default for 3 components anyway.

Eligible (:func:`level_reason` is None): JPEG compression (7), tiled, 8-bit, 3 interleaved samples,
Photometric RGB or YCbCr, every tile present, no NDPI-style ``jpegheader``. Edge tiles are stored padded
to the full tile size, so they decode like inner tiles and are cropped. Regions must lie inside the level;
anything else returns None and the caller reads the region the usual way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import tifffile

from pathomix.io.slide import Slide, WSISlide
from pathomix.io.tiffwsi import TiffSlide

log = logging.getLogger(__name__)

JPEG = 7
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_PHOTOMETRIC_TRANSFORM = {2: 0, 6: 1}       # TIFF Photometric RGB → APP14 transform 0, YCbCr → 1
_OPENSLIDE_TIFF_VENDORS = frozenset({"aperio", "generic-tiff"})   # plain TIFF levels openslide reads unchanged


def adobe_segment(transform: int) -> bytes:
    """An APP14 "Adobe" marker segment declaring the colour transform (0: none/RGB, 1: YCbCr)."""
    return b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([transform])


@dataclass(frozen=True)
class RegionStreams:
    """The TIFF tiles covering one region, and how to place them.

    ``keys`` are ``(level, tile index)`` (row-major over the level), so tiles shared by neighbouring regions
    can be decoded once; ``streams`` are their complete JPEG bytes, in the same order, row-major over the
    covered grid of ``cols`` tiles per row. The region is ``size`` = (h, w) pixels at ``offset`` = (y, x)
    in that grid of ``tile`` = (th, tw) pixel tiles."""

    keys: tuple[tuple[int, int], ...]
    streams: tuple[bytes, ...]
    cols: int
    tile: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]

    @property
    def rows(self) -> int:
        return len(self.keys) // self.cols


def level_reason(page: tifffile.TiffPage | tifffile.TiffFrame) -> str | None:
    """None when ``page``'s tiles can be handed out as JPEG streams; otherwise why not (for the log)."""
    kf = page.keyframe
    checks = (
        (kf.compression == JPEG, f"compression {int(kf.compression)}, not JPEG (7)"),
        (kf.is_tiled, "stored in strips, not tiles"),
        (kf.dtype == np.uint8, f"{kf.dtype} samples, not 8-bit"),
        (kf.samplesperpixel == 3 and kf.planarconfig == 1, f"{kf.samplesperpixel} samples (planar config "
                                                           f"{kf.planarconfig}), not interleaved RGB"),
        (int(kf.photometric) in _PHOTOMETRIC_TRANSFORM, f"photometric {kf.photometric}, not RGB or YCbCr"),
        (not kf.jpegheader, "tiles need a shared JPEG header (NDPI-style)"),
        (all(page.databytecounts), "missing tiles"),
    )
    return next((why for ok, why in checks if not ok), None)


class JpegTiles:
    """JPEG streams of the eligible levels of one TIFF file (``pages``: level → page).

    ``exact`` says how a level-0 position maps to a level: True (openslide readers) accepts only positions
    that fall on a whole level pixel, as :class:`~pathomix.io.slide.WSISlide` decodes directly only there;
    False rounds, as :class:`~pathomix.io.tiffwsi.TiffSlide` does."""

    def __init__(self, tif: tifffile.TiffFile, pages: dict[int, tifffile.TiffPage], downsamples: tuple[float, ...],
                 exact: bool) -> None:
        self._tif, self._pages, self._downsamples, self._exact = tif, pages, downsamples, exact
        self._headers: dict[int, bytes] = {}

    @property
    def levels(self) -> tuple[int, ...]:
        """The eligible levels."""
        return tuple(sorted(self._pages))

    def level_position(self, level: int, x: int, y: int) -> tuple[int, int] | None:
        """Level pixel of level-0 ``(x, y)``, or None where this reader would not decode it directly."""
        ds = self._downsamples[level]
        lx, ly = x / ds, y / ds
        if self._exact:
            return (int(lx), int(ly)) if lx.is_integer() and ly.is_integer() else None
        return round(lx), round(ly)

    def region(self, level: int, x: int, y: int, w: int, h: int) -> RegionStreams | None:
        """The streams of a ``w`` x ``h`` region of ``level`` at level-0 ``(x, y)``; None when the level is not
        eligible, the position is not on the level's pixel grid, or the region leaves the level."""
        page = self._pages.get(level)
        pos = self.level_position(level, x, y) if page is not None else None
        if pos is None:
            return None
        lx, ly = pos
        kf = page.keyframe
        height, width = kf.imagelength, kf.imagewidth
        if lx < 0 or ly < 0 or w <= 0 or h <= 0 or lx + w > width or ly + h > height:
            return None
        tw, th = kf.tilewidth, kf.tilelength
        per_row = math.ceil(width / tw)
        tx0, ty0, tx1, ty1 = lx // tw, ly // th, (lx + w - 1) // tw, (ly + h - 1) // th
        indices = [ty * per_row + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        return RegionStreams(tuple((level, i) for i in indices), tuple(self.stream(level, i) for i in indices),
                             tx1 - tx0 + 1, (th, tw), (ly - ty0 * th, lx - tx0 * tw), (h, w))

    def stream(self, level: int, index: int) -> bytes:
        """Tile ``index`` of ``level`` as one complete JPEG stream (tables merged, colour transform declared)."""
        page = self._pages[level]
        fh = self._tif.filehandle
        with fh.lock:
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
        return self._header(level) + data[2:] if data.startswith(_SOI) else data

    def _header(self, level: int) -> bytes:
        """SOI + APP14 + the level's JPEGTables without SOI and EOI (cached per level)."""
        header = self._headers.get(level)
        if header is None:
            kf = self._pages[level].keyframe
            tables = bytes(kf.jpegtables or b"")
            if tables.startswith(_SOI):
                tables = tables[2:]
            if tables.endswith(_EOI):
                tables = tables[:-2]
            header = self._headers[level] = _SOI + adobe_segment(_PHOTOMETRIC_TRANSFORM[int(kf.photometric)]) + tables
        return header

    def close(self) -> None:
        self._tif.close()


def open_jpeg_tiles(slide: Slide) -> tuple[JpegTiles | None, str]:
    """(reader, '') for a slide with at least one eligible level, else (None, why not).

    Readers: :class:`~pathomix.io.slide.WSISlide` for openslide's ``aperio`` and ``generic-tiff`` vendors
    (the levels it decodes directly with tifffile: one tiled page of the level's size) and
    :class:`~pathomix.io.tiffwsi.TiffSlide` with interleaved RGB (OME-TIFF, plain TIFF). Everything else
    (DICOM, other openslide vendors, mIF) returns None."""
    if isinstance(slide, WSISlide):
        vendor = openslide.OpenSlide.detect_format(str(slide.path))
        if vendor not in _OPENSLIDE_TIFF_VENDORS:
            return None, f"openslide vendor {vendor!r}, not a plain tiled TIFF"
        return _open_pages(slide.path, slide.level_dimensions, slide.level_downsamples, exact=True)
    if isinstance(slide, TiffSlide):
        return _open_pages(slide.path, slide.level_dimensions, slide.level_downsamples, exact=False, series=True)
    return None, f"reader {type(slide).__name__} does not read TIFF tiles"


def _open_pages(path: Path, dims: tuple[tuple[int, int], ...], downsamples: tuple[float, ...], exact: bool,
                series: bool = False) -> tuple[JpegTiles | None, str]:
    """Match each level to one page of its size (``series``: the first series' interleaved levels, as
    :func:`~pathomix.io.tiffwsi.rgb_planes` finds them) and keep the eligible ones."""
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError) as e:
        return None, f"not readable as TIFF ({e})"
    try:
        candidates = _series_pages(tif) if series else list(tif.pages)
        pages, reasons = {}, []
        for level, (w, h) in enumerate(dims):
            match = [p for p in candidates if p.is_tiled and p.keyframe.imagewidth == w and p.keyframe.imagelength == h]
            if len(match) != 1:
                reasons.append(f"level {level}: {len(match)} tiled pages of {w}x{h}")
                continue
            why = level_reason(match[0])
            if why is None:
                pages[level] = match[0]
            else:
                reasons.append(f"level {level}: {why}")
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as e:
        tif.close()
        return None, f"TIFF structure not understood ({e})"
    if not pages:
        tif.close()
        return None, "; ".join(reasons) or "no levels"
    if reasons:
        log.debug("%s: JPEG tile streams for levels %s only (%s)", path, sorted(pages), "; ".join(reasons))
    return JpegTiles(tif, pages, downsamples, exact), ""


def _series_pages(tif: tifffile.TiffFile) -> list:
    """Keyframes of the first series' levels plus later series (older Bio-Formats exports store levels as
    separate images)."""
    pages = [lvl.keyframe for lvl in tif.series[0].levels]
    for other in tif.series[1:]:
        pages.append(other.keyframe)
    return pages
