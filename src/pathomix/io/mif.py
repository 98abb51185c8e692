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
from pathomix.io.planes import Plane, SegmentCache, fluorophore_plane, series_planes, signal_plane
from pathomix.io.slide import Slide, checked_mpp, resize_chw, tiff_tag_mpp

log = logging.getLogger(__name__)

AF_PATTERN = re.compile(r"autofluorescence|^af$|^af[_ ]|\baf$|background", re.IGNORECASE)
TIFF_SUFFIXES = (".tif", ".tiff")
CHANNEL_SUFFIXES = (*TIFF_SUFFIXES, ".ndpi")   # a folder's channel files (NDPI: one fluorophore per file)
MPP_TOLERANCE = 0.005                          # channel files of one scan agree on µm/px within 0.5 %
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
    region: Callable[[int, int, int, int, int], np.ndarray]   # (level, lx, ly, w, h) → (C, h, w) native dtype
    named: bool = False                           # the names come from the file's metadata (not placeholders)
    close: Callable[[], None] = lambda: None      # release file handles


def read_channel_sheet(path: str | Path) -> tuple[list[str], list[bool]]:
    """A channel sheet (TSV: ``index``, ``marker``, ``autofluorescence`` 0/1, optional ``file``) → (markers,
    flags)."""
    rows = _sheet_rows(path)
    af = [r.get("autofluorescence", "0").lower() in ("1", "1.0", "true", "yes", "y") for r in rows]
    return [r["marker"] for r in rows], af


def channel_sheet_files(path: str | Path) -> list[str] | None:
    """The sheet's ``file`` column (each channel's file in the slide's folder: a name or a glob pattern such as
    ``*-DAPI.ndpi``), in channel order; None when the sheet has no such column."""
    rows = _sheet_rows(path)
    if "file" not in rows[0]:
        return None
    empty = [r["marker"] for r in rows if not r["file"]]
    if empty:
        raise PathomixInputError(f"mIF channel sheet {path}: `file` is empty for marker(s) {empty}; name every "
                                 "channel's file, or drop the column")
    return [r["file"] for r in rows]


def _sheet_rows(path: str | Path) -> list[dict[str, str]]:
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
    return [r for _, r in sorted(zip(index, rows, strict=True), key=lambda t: t[0])]


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


def _names(found: list[str | None], n: int, what: str) -> list[str]:
    if len(found) != n or not all(found):
        if any(found):
            log.warning("%s: %d channel names for %d channels; using channel_0..", what, len(found), n)
        return [f"channel_{i}" for i in range(n)]
    return [str(f) for f in found]


class _WholeLevels:
    """Fallback for layouts without one page per channel (e.g. interleaved samples): a level is decoded whole,
    once, and regions are cut from it."""

    def __init__(self, path: Path, level_axes: list[str], what: str) -> None:
        self.path, self.level_axes, self.what = path, level_axes, what
        self.cache: dict[int, np.ndarray] = {}

    def region(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        if level not in self.cache:
            arr = tifffile.imread(self.path, series=0, level=level, maxworkers=1)
            self.cache[level] = _to_cyx(arr, self.level_axes[level], self.what)
        return _cut(self.cache[level], lx, ly, w, h)


def _cut(arr: np.ndarray, lx: int, ly: int, w: int, h: int) -> np.ndarray:
    """(C, h, w) of a (C, H, W) array at (lx, ly), 0 outside."""
    out = np.zeros((arr.shape[0], h, w), arr.dtype)
    x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, arr.shape[2]), min(ly + h, arr.shape[1])
    if x1 > x0 and y1 > y0:
        out[:, y0 - ly:y1 - ly, x0 - lx:x1 - lx] = arr[:, y0:y1, x0:x1]
    return out


def _planes_region(planes: list[Plane]) -> Callable[[int, int, int, int, int], np.ndarray]:
    def region(level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        return np.stack([p.region(level, lx, ly, w, h) for p in planes])
    return region


def probe_tiff(path: Path, what: str) -> MIFSource:
    """Probe an OME-TIFF or multi-page TIFF without decoding pixels; regions are then decoded lazily, tile by
    tile, where each channel is its own page (OME-TIFF, QPTIFF, MIBItiff), else a level at a time."""
    try:
        tf = tifffile.TiffFile(path)
    except _READ_ERRORS as e:
        raise PathomixInputError(f"{what} is not a readable TIFF ({e}); check the file or its `path`") from e
    try:
        if len(tf.series) > 1:
            log.info("%s holds %d image series; reading the first", what, len(tf.series))
        series = tf.series[0]
        shapes = [_cyx_shape(lvl.shape, lvl.axes, what) for lvl in series.levels]
        n = shapes[0][0]
        found, mpp = ome_names_mpp(tf) if tf.is_ome else ([], None)
        if not found and len(tf.pages) >= n > 1:
            found = [_page_name(tf.pages[i]) for i in range(n)]
        mpp = mpp if mpp is not None else tiff_tag_mpp(tf.pages[0])
        planes = series_planes(tf, n)
    except PathomixInputError:
        tf.close()
        raise
    names = _names(found, n, what)
    level_shapes = [(s[2], s[1]) for s in shapes]
    if planes is not None:
        def close() -> None:
            planes[0].cache.clear()
            tf.close()

        return MIFSource(names, mpp, level_shapes, _planes_region(planes), names == found, close)
    log.info("%s: channels are not one page each; each level is decoded whole when first read", what)
    whole = _WholeLevels(path, [lvl.axes for lvl in series.levels], what)
    tf.close()
    return MIFSource(names, mpp, level_shapes, whole.region, names == found, whole.cache.clear)


def _cyx_shape(shape: tuple[int, ...], axes: str, what: str) -> tuple[int, int, int]:
    c, y, x = _cyx_axes(axes, what)
    return (1 if c is None else shape[c]), shape[y], shape[x]


def _channel_plane(f: Path, tf: tifffile.TiffFile, what: str) -> Plane:
    """The one channel of a single-channel file: a grey plane, or the signal plane of an RGB-stored
    fluorescence slide (from its metadata, else the plane with the most signal; logged)."""
    series = tf.series[0]
    pages = [lvl.keyframe for lvl in series.levels]
    axes, shape = series.axes, series.shape
    if axes.endswith("YXS") and shape[-1] in (3, 4) and int(np.prod(shape[:-3] or [1])) == 1:
        plane, why = fluorophore_plane(tf)
        if plane is None:
            plane, why = signal_plane(tf, pages), "the plane with the most signal"
        log.info("%s: channel file %s is stored as RGB; its signal is the %s plane (%s)", what, f.name, "RGB"[plane],
                 why)
        return Plane(tf, pages, plane)
    c, _, _ = _cyx_axes(axes, f"{what}: {f.name}")
    if c is not None and shape[c] != 1:
        raise PathomixInputError(
            f"{what}: channel file {f.name} has {shape[c]} channels (axes {axes!r}); every file of a folder must "
            "hold one channel (one fluorophore)"
        )
    return Plane(tf, pages)


def _file_mpp(tf: tifffile.TiffFile) -> float | None:
    mpp = ome_names_mpp(tf)[1] if tf.is_ome else None
    return mpp if mpp is not None else tiff_tag_mpp(tf.pages[0])


def channel_files(path: Path, patterns: list[str] | None, what: str) -> list[Path]:
    """A folder's channel files: the sheet's ``file`` entries (a name or glob, one match each), else every
    TIFF/NDPI file sorted by name."""
    if patterns is None:
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in CHANNEL_SUFFIXES and
                        not p.name.startswith(".")), key=lambda p: p.name)
        if not files:
            raise PathomixInputError(
                f"{what} is a folder without {'/'.join(CHANNEL_SUFFIXES)} files; put one file per channel in it"
            )
        return files
    files = []
    for pattern in patterns:
        hits = [path / pattern] if (path / pattern).is_file() else sorted(path.glob(pattern))
        if len(hits) != 1:
            raise PathomixInputError(
                f"{what}: the channel sheet's file {pattern!r} matches {len(hits)} files in {path} "
                f"({[h.name for h in hits][:5]}); it must match exactly one"
            )
        files.append(hits[0])
    return files


def _real_mpp(mpp: float | None) -> bool:
    """A µm/px that a scanner wrote (not absent, not a desktop dpi default, not implausible)."""
    try:
        return mpp is not None and checked_mpp(mpp, None, "") == mpp
    except PathomixInputError:
        return False


def probe_folder(path: Path, what: str, patterns: list[str] | None = None) -> MIFSource:
    """Probe a folder of single-channel files (TIFF, or fluorescence NDPI stored as RGB): channel name = file
    stem, sorted by name, unless the channel sheet's ``file`` column picks and orders them. Every file must have
    the same size and µm/px (else the odd file is named)."""
    files = channel_files(path, patterns, what)
    planes: list[Plane] = []
    mpps: list[float | None] = []
    cache = SegmentCache()
    try:
        for f in files:
            try:
                tf = tifffile.TiffFile(f)
            except _READ_ERRORS as e:
                raise PathomixInputError(f"{what}: channel file {f} is not a readable TIFF ({e})") from e
            planes.append(_channel_plane(f, tf, what))
            planes[-1].cache = cache
            mpps.append(_file_mpp(tf))
        first, size0 = files[0], planes[0].level_size(0)
        for f, plane in zip(files, planes, strict=True):
            size = plane.level_size(0)
            if size != size0:
                raise PathomixInputError(
                    f"{what}: channel file {f.name} is {size[0]}x{size[1]} px but {first.name} is "
                    f"{size0[0]}x{size0[1]}; every file must be one channel of the same scan (same size)"
                )
        real = [(f, m) for f, m in zip(files, mpps, strict=True) if _real_mpp(m)]   # dpi defaults say nothing
        mpp0 = real[0][1] if real else mpps[0]
        for f, mpp in real:
            if abs(mpp / mpp0 - 1) > MPP_TOLERANCE:
                raise PathomixInputError(
                    f"{what}: channel file {f.name} has {mpp:.4g} µm/px but {real[0][0].name} has {mpp0:.4g}; "
                    "every file must come from the same scan (same µm/px)"
                )
    except PathomixInputError:
        for p in planes:
            p.tif.close()
        raise
    n_levels = min(len(p.pages) for p in planes)
    common = [lvl for lvl in range(n_levels) if len({p.level_size(lvl) for p in planes}) == 1]
    common = common[:next((i for i, lvl in enumerate(common) if lvl != i), len(common))]   # a prefix: 0, 1, ...
    for p in planes:
        p.pages = p.pages[:len(common)]

    def close() -> None:
        cache.clear()
        for p in planes:
            p.tif.close()

    return MIFSource([f.stem for f in files], mpp0, [planes[0].level_size(lvl) for lvl in range(len(common))],
                     _planes_region(planes), False, close)


class MIFSlide(Slide):
    """An mIF image: level arrays are (C, H, W), loaded once on first read."""

    _row_axis = 1

    def __init__(self, path: Path, slide_id: str, mpp: float | None = None,
                 channels_sheet: str | Path | None = None) -> None:
        what = f"mIF image {path} (slide {slide_id})"
        files = channel_sheet_files(channels_sheet) if channels_sheet is not None else None
        if files is not None and not path.is_dir():
            raise PathomixInputError(
                f"{what}: channel sheet {channels_sheet} names a file per channel, so the slide's `path` must be "
                "the folder that holds them"
            )
        src = probe_folder(path, what, files) if path.is_dir() else probe_tiff(path, what)
        try:
            names, af = self._channels(src, what, channels_sheet, files is not None)
            mpp0 = checked_mpp(src.mpp, mpp, f"slide {slide_id} ({path})")
        except PathomixInputError:
            src.close()
            raise
        w0, h0 = src.level_shapes[0]
        downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in src.level_shapes)
        super().__init__(slide_id, path, "mif", mpp0, tuple(src.level_shapes), downsamples, names, af, None)
        self._src = src

    @staticmethod
    def _channels(src: MIFSource, what: str, sheet: str | Path | None, by_file: bool) -> tuple[list[str], list[bool]]:
        """(names, autofluorescence flags): the file's names (checked against the sheet, if any; the sheet's flags
        win), the sheet's when the file has none, else file names with autofluorescence recognised by name."""
        if sheet is None:
            return src.names, [is_autofluorescence(n) for n in src.names]
        names, af = read_channel_sheet(sheet)
        if len(names) != len(src.names):
            raise PathomixInputError(
                f"{what} has {len(src.names)} channels but channel sheet {sheet} lists "
                f"{len(names)}; give the sheet one row per image channel, in the image's order, or "
                "point `mif_channels` at the sheet of this panel"
            )
        if src.named and not by_file:
            if [n.strip().lower() for n in names] != [n.strip().lower() for n in src.names]:
                raise PathomixInputError(
                    f"{what} names its channels {src.names} in its metadata, but channel sheet {sheet} "
                    f"lists {names}; fix the sheet's `marker` column (same order and spelling), or leave "
                    "`mif_channels` out to use the file's names"
                )
            return src.names, af   # the file's spelling; the sheet's flags
        return names, af

    def level_array(self, level: int = 0) -> np.ndarray:
        """The whole (C, H, W) array of ``level`` in its stored dtype (decoded on each call; prefer regions)."""
        w, h = self.level_dimensions[level]
        return self._region(level, 0, 0, w, h)

    def _region(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        try:
            return self._src.region(level, lx, ly, w, h)
        except _READ_ERRORS as e:
            raise PathomixInputError(
                f"{self.label}: decoding level {level} at ({lx}, {ly}) failed ({e}); the file is corrupt. "
                "Re-export it or drop it from slides.tsv"
            ) from e

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """(C, h, w) float32 raw values; pixels outside the image are 0."""
        ds = self.level_downsamples[level]
        return self._region(level, round(x / ds), round(y / ds), int(w), int(h)).astype(np.float32, copy=False)

    def _resize(self, arr: np.ndarray, size: tuple[int, int], box: tuple[float, ...] | None,
                resample: Image.Resampling) -> np.ndarray:
        return resize_chw(arr, size, box, resample)

    def _planes(self) -> int:
        return max(1, len(self.channels))

    def close(self) -> None:
        """Close the files (and drop any level decoded whole)."""
        self._src.close()
