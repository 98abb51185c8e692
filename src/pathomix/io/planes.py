"""Lazy channel planes of mIF images: a region is decoded from the TIFF tiles (or strips) it touches, one
channel at a time, so a large panel is never held in memory whole (benchmarks/mif_memory.py measures it).

A plane is one page per pyramid level of a TIFF (an OME-TIFF/QPTIFF/MIBItiff channel, a single-channel file),
or one sample of an RGB page (a fluorescence slide stored as RGB, e.g. a Hamamatsu NDPI per fluorophore).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import tifffile

from pathomix.io.regions import stitch

log = logging.getLogger(__name__)

# fluorophore name → RGB plane its signal is stored in (a pseudocolour); emission wavelengths below
PLANE_BY_NAME = {"dapi": 2, "hoechst": 2, "bfp": 2, "fitc": 1, "gfp": 1, "af488": 1, "alexa488": 1, "cy2": 1,
                 "tritc": 0, "cy3": 0, "texasred": 0, "cy5": 0, "af555": 0, "af594": 0, "af647": 0, "mcherry": 0}
_EMISSION_PLANES = ((500.0, 2), (565.0, 1), (float("inf"), 0))   # emission nm below → plane (B, G, R)
_SIGNAL_PIXELS = 4_000_000
CACHE_BYTES = 128 * 2**20        # decoded tiles/strips kept per image (all channels): neighbouring reads reuse them


class SegmentCache:
    """Least-recently-used decoded tiles or strips, up to ``budget`` bytes: an image stored in whole-page strips
    (a MIBItiff page is one strip) is then decoded once per channel, not once per tile read."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget, self.used = budget, 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, key: tuple) -> np.ndarray | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: tuple, value: np.ndarray) -> None:
        if value.nbytes > self.budget:
            return
        self._items[key] = value
        self.used += value.nbytes
        while self.used > self.budget:
            self.used -= self._items.popitem(last=False)[1].nbytes

    def clear(self) -> None:
        self._items.clear()
        self.used = 0


@dataclass
class Plane:
    """One channel: its file's pages per level and, for an RGB page, the sample that holds the signal."""

    tif: tifffile.TiffFile
    pages: list                        # TiffPage or TiffFrame per level, finest first
    sample: int | None = None          # None: single-sample pages
    cache: SegmentCache = field(default_factory=SegmentCache, repr=False)
    fill: int = 0                      # value outside the image (H&E: 255, white)

    def level_size(self, level: int) -> tuple[int, int]:
        """(W, H) of ``level``."""
        kf = self.pages[level].keyframe
        return int(kf.imagewidth), int(kf.imagelength)

    def bands(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """(h, w, S) native dtype of ``level`` at level pixel (lx, ly), every interleaved sample (S = 1 for
        planar-separate pages: then only this plane's sample); ``fill`` outside."""
        page = self.pages[level]
        kf = page.keyframe
        size = self.level_size(level)
        tile = (kf.tilewidth, kf.tilelength) if kf.is_tiled else (size[0], int(kf.rowsperstrip or size[1]))
        n = kf.samplesperpixel if kf.planarconfig == 1 else 1
        separate = n == 1 and kf.samplesperpixel > 1      # sample s's segments follow those of samples < s
        base = (self.sample or 0) * (len(page.dataoffsets) // kf.samplesperpixel) if separate else 0
        return stitch(lambda i: self._decode(page, base + i), tile, size, lx, ly, w, h, fill=self.fill, bands=n,
                      dtype=kf.dtype)

    def region(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """(h, w) native dtype of this channel."""
        out = self.bands(level, lx, ly, w, h)
        return out[..., 0] if out.shape[-1] == 1 else out[..., self.sample or 0]

    def _decode(self, page: tifffile.TiffPage | tifffile.TiffFrame, index: int) -> np.ndarray | None:
        if index >= len(page.databytecounts) or not page.databytecounts[index]:
            return None
        key = (id(self), id(page), index)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        kf = page.keyframe
        fh = self.tif.filehandle
        with fh.lock:
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
        out = kf.decode(data, index, jpegtables=kf.jpegtables, jpegheader=kf.jpegheader)[0][0]
        self.cache.put(key, out)
        return out


def series_planes(tif: tifffile.TiffFile, n_channels: int) -> list[Plane] | None:
    """One plane per channel of the first series when every level stores each channel as its own
    single-sample page; None for other layouts (read whole by the caller)."""
    levels = tif.series[0].levels
    per_level = [list(lvl.pages) for lvl in levels]
    if any(len(pages) != n_channels or any(p is None or p.keyframe.samplesperpixel != 1 for p in pages)
           for pages in per_level):
        return None
    cache = SegmentCache()
    return [Plane(tif, [pages[c] for pages in per_level], cache=cache) for c in range(n_channels)]


def fluorophore_plane(tif: tifffile.TiffFile) -> tuple[int | None, str]:
    """The RGB plane of a single-fluorophore slide from its metadata (NDPI ``Fluorescence`` filter/channel name,
    ``Wavelength``), with what decided it; (None, '') when the metadata says nothing."""
    tags = (tif.pages.first.ndpi_tags or {}) if tif.is_ndpi else {}
    name = str(tags.get("Fluorescence") or "")
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    for fluor, plane in PLANE_BY_NAME.items():
        if fluor in key:
            return plane, f"NDPI Fluorescence {name!r}"
    try:
        nm = float(tags.get("Wavelength") or "nan")
    except (TypeError, ValueError):
        nm = float("nan")
    if np.isfinite(nm) and nm > 0:
        return next(p for limit, p in _EMISSION_PLANES if nm < limit), f"NDPI Wavelength {nm:g} nm"
    return None, ""


def signal_plane(tif: tifffile.TiffFile, pages: list) -> int:
    """The RGB plane with the most signal (99.5th percentile), measured on the smallest level."""
    level = len(pages) - 1
    w, h = Plane(tif, pages).level_size(level)
    side = int(np.sqrt(_SIGNAL_PIXELS))
    rgb = Plane(tif, pages).bands(level, max(0, (w - side) // 2), max(0, (h - side) // 2), min(w, side), min(h, side))
    return int(np.argmax(np.percentile(rgb[..., :3].reshape(-1, min(3, rgb.shape[-1])), 99.5, axis=0)))
