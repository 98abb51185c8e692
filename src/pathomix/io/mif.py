"""Multiplex immunofluorescence (mIF) images behind the :class:`~pathomix.io.slide.Slide` interface.

Three layouts are read: a multi-channel OME-TIFF (names from OME ``Channel Name``, µm/px from
``PhysicalSizeX``), a multi-page TIFF such as a MIBItiff or a Vectra/PhenoImager QPTIFF (one channel per
page; names from each page's MIBI JSON ``channel.target``, QPI XML ``Biomarker`` or ``Name``, or its
PageName tag; µm/px from the resolution tags) and a folder of one TIFF per channel (name = file stem,
sorted by name). Pixels are loaded once, lazily, per level and returned as float32 ``(C, h, w)`` raw values.

When the file names its channels and a channel sheet is given too, the sheet must list the same markers in
the same order (case and surrounding spaces aside): a mismatch is an error that lists both, so a panel is
never silently relabelled. The sheet's autofluorescence flags win. Without a sheet the file's names are used
and autofluorescence is recognised by name (``Autofluorescence``, ``AF``, ``Sample AF``, ``Background``).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pathomix.errors import PathomixInputError
from pathomix.io.ome import ome_names_mpp
from pathomix.io.slide import Slide, checked_mpp, mpp_from_resolution, resize_chw

log = logging.getLogger(__name__)

AF_PATTERN = re.compile(r"autofluorescence|^af$|^af[_ ]|\baf$|background", re.IGNORECASE)
TIFF_SUFFIXES = (".tif", ".tiff")
_READ_ERRORS = (tifffile.TiffFileError, OSError, ValueError, RuntimeError)


def is_autofluorescence(name: str) -> bool:
    """True for channel names like ``AF``, ``AF_488``, ``Autofluorescence`` or ``Background``."""
    return bool(AF_PATTERN.search(name.strip()))


@dataclass(frozen=True)
class MIFSource:
    """What a probe of an mIF file found, before any pixels are decoded."""

    names: list[str]
    mpp: float | None
    level_shapes: list[tuple[int, int]]           # (W, H) per level
    load: Callable[[int], np.ndarray]             # level → (C, H, W) native dtype
    named: bool = False                           # the names come from the file's metadata (not placeholders)


def read_channel_sheet(path: str | Path) -> tuple[list[str], list[bool]]:
    """A channel sheet (TSV: ``index``, ``marker``, ``autofluorescence`` 0/1) → (markers, flags)."""
    path = Path(path)
    if not path.exists():
        raise PathomixInputError(
            f"mIF channel sheet {path} does not exist; check `mif_channels` in your config"
        )
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="," if path.suffix == ".csv" else "\t"))
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in rows]
    missing = [c for c in ("index", "marker") if rows and c not in rows[0]]
    if not rows or missing:
        raise PathomixInputError(
            f"mIF channel sheet {path} is empty or lacks column(s) {missing}; use the columns "
            "index, marker, autofluorescence (0/1), one row per image channel"
        )
    try:
        index = [int(float(r["index"])) for r in rows]
    except ValueError as e:
        raise PathomixInputError(f"mIF channel sheet {path}: `index` must be integers ({e})") from e
    if len(set(index)) != len(index):
        raise PathomixInputError(f"mIF channel sheet {path}: `index` values must be unique")
    rows = [r for _, r in sorted(zip(index, rows, strict=True), key=lambda t: t[0])]
    af = [r.get("autofluorescence", "0").lower() in ("1", "1.0", "true", "yes", "y") for r in rows]
    return [r["marker"] for r in rows], af


def _cyx_axes(axes: str, what: str) -> tuple[int | None, int, int]:
    """Positions of the channel, Y and X axes in a tifffile axes string."""
    extra = [i for i, a in enumerate(axes) if a not in "YX"]
    if "Y" not in axes or "X" not in axes or len(extra) > 1:
        raise PathomixInputError(
            f"{what} has image axes {axes!r}; pathomix reads 2-D channel stacks (C, Y, X). "
            "Export one plane per channel (no Z stack or time series)"
        )
    return (extra[0] if extra else None), axes.index("Y"), axes.index("X")


def _to_cyx(arr: np.ndarray, axes: str, what: str) -> np.ndarray:
    c, y, x = _cyx_axes(axes, what)
    return arr.transpose(y, x)[None] if c is None else arr.transpose(c, y, x)


def _qpi_name(desc: str) -> str | None:
    """Channel name from a PerkinElmer/Akoya QPI XML page description: ``Biomarker``, else ``Name``."""
    try:  # the declaration says utf-16, but tifffile hands over text: drop it before parsing
        root = ET.fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", desc))
    except ET.ParseError:
        return None
    for key in ("Biomarker", "Name"):
        el = root.find(key)
        if el is not None and (el.text or "").strip():
            return el.text.strip()
    return None


def _page_name(page: tifffile.TiffPage) -> str | None:
    """Channel name of one page: MIBI JSON ``channel.target``, QPI XML, else the PageName tag."""
    desc = page.description or ""
    if "PerkinElmer-QPI" in desc[:500]:
        return _qpi_name(desc)
    if desc.lstrip().startswith("{"):
        try:
            meta = json.loads(desc)
        except json.JSONDecodeError:
            meta = {}
        for key in ("channel.target", "channel.name", "name"):
            if isinstance(meta, dict) and meta.get(key):
                return str(meta[key])
    tag = page.tags.get("PageName")
    return str(tag.value) if tag is not None and tag.value else None


def _tag_mpp(page: tifffile.TiffPage) -> float | None:
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is None or unit is None:
        return None
    num, den = res.value if isinstance(res.value, tuple) else (res.value, 1)
    return mpp_from_resolution(num / den if den else None, str(int(unit.value)))


def _names(found: list[str | None], n: int, what: str) -> list[str]:
    if len(found) != n or not all(found):
        if any(found):
            log.warning("%s: %d channel names for %d channels; using channel_0..", what, len(found), n)
        return [f"channel_{i}" for i in range(n)]
    return [str(f) for f in found]


def probe_tiff(path: Path, what: str) -> MIFSource:
    """Probe an OME-TIFF or multi-page TIFF without decoding pixels."""
    try:
        tf = tifffile.TiffFile(path)
    except _READ_ERRORS as e:
        raise PathomixInputError(f"{what} is not a readable TIFF ({e}); check the file or its `path`") from e
    with tf:
        if len(tf.series) > 1:
            log.warning("%s holds %d image series; reading the first", what, len(tf.series))
        series = tf.series[0]
        shapes = [_cyx_shape(lvl.shape, lvl.axes, what) for lvl in series.levels]
        n = shapes[0][0]
        found, mpp = ome_names_mpp(tf) if tf.is_ome else ([], None)
        if not found and len(tf.pages) >= n > 1:
            found = [_page_name(tf.pages[i]) for i in range(n)]
        mpp = mpp if mpp is not None else _tag_mpp(tf.pages[0])
        level_axes = [lvl.axes for lvl in series.levels]

    def load(level: int) -> np.ndarray:
        return _to_cyx(tifffile.imread(path, series=0, level=level), level_axes[level], what)

    names = _names(found, n, what)
    return MIFSource(names, mpp, [(s[2], s[1]) for s in shapes], load, named=names == found)


def _cyx_shape(shape: tuple[int, ...], axes: str, what: str) -> tuple[int, int, int]:
    c, y, x = _cyx_axes(axes, what)
    return (1 if c is None else shape[c]), shape[y], shape[x]


def probe_folder(path: Path, what: str) -> MIFSource:
    """Probe a folder of single-channel TIFFs (channel name = file stem, sorted by name)."""
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and
                    not p.name.startswith(".")), key=lambda p: p.name)
    if not files:
        raise PathomixInputError(
            f"{what} is a folder without .tif/.tiff files; put one TIFF per channel in it"
        )
    shapes: dict[Path, tuple[int, int, int]] = {}
    mpp: float | None = None
    for f in files:
        try:
            with tifffile.TiffFile(f) as tf:
                shapes[f] = _cyx_shape(tf.series[0].shape, tf.series[0].axes, f"{what}: {f.name}")
                if f == files[0]:
                    mpp = _tag_mpp(tf.pages[0])
        except _READ_ERRORS as e:
            raise PathomixInputError(f"{what}: channel file {f} is not a readable TIFF ({e})") from e
    first = shapes[files[0]]
    for f, shape in shapes.items():
        if shape[0] != 1 or shape[1:] != first[1:]:
            raise PathomixInputError(
                f"{what}: channel file {f.name} has shape {shape} (C, H, W) but {files[0].name} has "
                f"{first}; every file must be one channel of the same size"
            )

    def load(level: int) -> np.ndarray:
        return np.concatenate([_to_cyx(tifffile.imread(f), "YX", what) for f in files])

    return MIFSource([f.stem for f in files], mpp, [(first[2], first[1])], load)


class MIFSlide(Slide):
    """An mIF image: level arrays are (C, H, W), loaded once on first read."""

    _row_axis = 1

    def __init__(self, path: Path, slide_id: str, mpp: float | None = None,
                 channels_sheet: str | Path | None = None) -> None:
        what = f"mIF image {path} (slide {slide_id})"
        src = probe_folder(path, what) if path.is_dir() else probe_tiff(path, what)
        mpp0 = checked_mpp(src.mpp, mpp, f"slide {slide_id} ({path})")
        names, af = src.names, [is_autofluorescence(n) for n in src.names]
        if channels_sheet is not None:
            names, af = read_channel_sheet(channels_sheet)
            if len(names) != len(src.names):
                raise PathomixInputError(
                    f"{what} has {len(src.names)} channels but channel sheet {channels_sheet} lists "
                    f"{len(names)}; give the sheet one row per image channel, in the image's order, or "
                    "point `mif_channels` at the sheet of this panel"
                )
            if src.named and [n.strip().lower() for n in names] != [n.strip().lower() for n in src.names]:
                raise PathomixInputError(
                    f"{what} names its channels {src.names} in its metadata, but channel sheet {channels_sheet} "
                    f"lists {names}; fix the sheet's `marker` column (same order and spelling), or leave "
                    "`mif_channels` out to use the file's names"
                )
        w0, h0 = src.level_shapes[0]
        downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in src.level_shapes)
        super().__init__(slide_id, path, "mif", mpp0, tuple(src.level_shapes), downsamples, names, af, None)
        self._load = src.load
        self._levels: dict[int, np.ndarray] = {}

    def level_array(self, level: int = 0) -> np.ndarray:
        """The whole (C, H, W) array of ``level`` in its stored dtype (cached)."""
        if level not in self._levels:
            try:
                self._levels[level] = self._load(level)
            except _READ_ERRORS as e:
                raise PathomixInputError(
                    f"{self.label}: decoding level {level} failed ({e}); the file is corrupt. "
                    "Re-export it or drop it from slides.tsv"
                ) from e
        return self._levels[level]

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """(C, h, w) float32 raw values; pixels outside the image are 0."""
        arr = self.level_array(level)
        ds = self.level_downsamples[level]
        lx, ly = round(x / ds), round(y / ds)
        out = np.zeros((arr.shape[0], int(h), int(w)), np.float32)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + int(w), arr.shape[2]), min(ly + int(h), arr.shape[1])
        if x1 > x0 and y1 > y0:
            out[:, y0 - ly:y1 - ly, x0 - lx:x1 - lx] = arr[:, y0:y1, x0:x1]
        return out

    def _resize(self, arr: np.ndarray, size: tuple[int, int], box: tuple[float, ...] | None,
                resample: Image.Resampling) -> np.ndarray:
        return resize_chw(arr, size, box, resample)

    def close(self) -> None:
        """Drop the cached pixel arrays."""
        self._levels.clear()
