"""DICOM VL Whole Slide Microscopy images: openslide for the series' geometry and µm/px, pydicom + imagecodecs
for the pixels.

openslide 4.0 trusts the header's PhotometricInterpretation: a series whose header says ``RGB`` while its
JPEG frames are YCbCr (a JFIF marker, or an Adobe marker with transform 1 — what many converters write)
comes out in wrong colours (white background turns salmon and counts as tissue). So the frames of every
``TILED_FULL`` level are decoded here by the codec of their transfer syntax, which reads the colour space
from the JPEG itself (as pydicom does). A level that cannot be decoded here is read by openslide only when
its colours are known to be right; otherwise reading it is an error, never silently wrong pixels.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pathomix.errors import PathomixInputError
from pathomix.io.regions import stitch
from pathomix.io.slide import WSISlide

log = logging.getLogger(__name__)

_LEVEL_PIXELS = 64_000_000
_ITEM, _SEQ_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _jpeg(data: bytes) -> np.ndarray:
    return imagecodecs.jpeg8_decode(data)   # colour space from the JPEG's own markers (JFIF/Adobe/component ids)


# transfer syntax UID → frame decoder (bytes → (rows, columns[, samples]))
DECODERS: dict[str, Callable[[bytes], np.ndarray]] = {
    _JPEG_BASELINE: _jpeg,                              # JPEG baseline (8-bit)
    "1.2.840.10008.1.2.4.51": _jpeg,                    # JPEG extended
    "1.2.840.10008.1.2.4.57": imagecodecs.ljpeg_decode,  # JPEG lossless
    "1.2.840.10008.1.2.4.70": imagecodecs.ljpeg_decode,  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": imagecodecs.jpegls_decode,
    "1.2.840.10008.1.2.4.81": imagecodecs.jpegls_decode,
    "1.2.840.10008.1.2.4.90": imagecodecs.jpeg2k_decode,  # JPEG 2000 lossless (RCT) and lossy (ICT): RGB out
    "1.2.840.10008.1.2.4.91": imagecodecs.jpeg2k_decode,
    "1.2.840.10008.1.2.4.201": imagecodecs.htj2k_decode if hasattr(imagecodecs, "htj2k_decode") else None,
}
DECODERS = {k: v for k, v in DECODERS.items() if v is not None}
_RGB_OUT = frozenset({"RGB", "YBR_FULL_422", "YBR_FULL", "YBR_ICT", "YBR_RCT"})  # decoders above give RGB for these


def jpeg_is_ycbcr(data: bytes) -> bool:
    """Whether a baseline JPEG holds YCbCr by its own markers: JFIF APP0, or Adobe APP14 with transform 1."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xE0 and body.startswith(b"JFIF"):
            return True
        if marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            return body[11] == 1
        if marker == 0xDA:   # start of scan: no marker said
            break
        pos += 2 + length
    return False


@dataclass
class DicomLevel:
    """One TILED_FULL instance: frame offsets in the file and how to decode them."""

    path: Path
    size: tuple[int, int]            # (W, H) of the total pixel matrix
    tile: tuple[int, int]            # (columns, rows) of a frame
    frames: list[tuple[int, int]]    # (offset, length) of each frame's bytes
    decode: Callable[[bytes], np.ndarray] | None
    photometric: str
    syntax: str

    def read_frame(self, index: int) -> bytes:
        offset, length = self.frames[index]
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)


def _frames(path: Path, value_offset: int, n_frames: int) -> list[tuple[int, int]] | None:
    """(offset, length) per frame of encapsulated pixel data: one fragment per frame, or fragments grouped by
    the basic offset table; None when the layout is something else."""
    fragments: list[tuple[int, int]] = []
    with open(path, "rb") as fh:
        fh.seek(value_offset)
        head = fh.read(8)
        if head[:4] != _ITEM:
            return None
        bot_len = struct.unpack("<I", head[4:])[0]
        bot = np.frombuffer(fh.read(bot_len), "<u4") if bot_len else np.zeros(0, "<u4")
        first = fh.tell()
        while True:
            head = fh.read(8)
            if len(head) < 8 or head[:4] == _SEQ_END:
                break
            if head[:4] != _ITEM:
                return None
            length = struct.unpack("<I", head[4:])[0]
            fragments.append((fh.tell(), length))
            fh.seek(length, 1)
    if len(fragments) == n_frames:
        return fragments
    if len(bot) == n_frames:   # several fragments per frame: the table gives where each frame starts
        starts = [first + int(b) for b in bot] + [None]
        out = []
        for s, e in zip(starts[:-1], starts[1:], strict=True):
            parts = [(o, n) for o, n in fragments if o - 8 >= s and (e is None or o - 8 < e)]
            if not parts or any(p[0] != q[0] + q[1] + 8 for q, p in zip(parts, parts[1:], strict=False)):
                return None
            out.append((parts[0][0], parts[-1][0] + parts[-1][1] - parts[0][0]))
        return out
    return None


def _read_level(path: Path, ds: pydicom.Dataset) -> DicomLevel | None:
    """A directly decodable TILED_FULL level, or None (logged) when the instance is laid out otherwise."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    size = (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))
    tile = (int(ds.Columns), int(ds.Rows))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    tiles = -(-size[0] // tile[0]) * -(-size[1] // tile[1])
    n_frames = int(ds.get("NumberOfFrames", 1))
    organised = str(ds.get("DimensionOrganizationType", "TILED_FULL"))
    why = None
    if organised != "TILED_FULL" or n_frames < tiles:
        why = f"{organised} with {n_frames} frames for {tiles} tiles"
    elif syntax not in DECODERS or photometric not in _RGB_OUT or int(ds.get("SamplesPerPixel", 3)) != 3:
        why = f"transfer syntax {syntax}, {photometric}"
    frames = None if why else _frames(path, ds["PixelData"].file_tell, n_frames)
    if frames is None:
        log.debug("%s: not decoded directly (%s)", path, why or "pixel data fragments do not map to frames")
        return None
    return DicomLevel(path, size, tile, frames[:tiles], DECODERS[syntax], photometric, syntax)


def series_levels(path: Path) -> tuple[dict[tuple[int, int], DicomLevel], list[Path]]:
    """The VOLUME instances of ``path``'s series found in its folder (as openslide finds them), by (W, H) →
    (decodable levels, instances whose colours openslide gets wrong: header RGB, YCbCr JPEG frames)."""
    first = pydicom.dcmread(path, stop_before_pixels=True)
    uid = first.SeriesInstanceUID
    levels: dict[tuple[int, int], DicomLevel] = {}
    wrong: list[Path] = []
    for f in sorted(p for p in path.parent.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(f, defer_size=256)
        except (InvalidDicomError, OSError, ValueError, struct.error):
            continue
        if ds.get("SeriesInstanceUID") != uid or "VOLUME" not in list(ds.get("ImageType", [])) or "PixelData" not in ds:
            continue
        level = _read_level(f, ds)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if syntax == _JPEG_BASELINE and str(ds.get("PhotometricInterpretation")) == "RGB":
            probe = level.read_frame(0) if level else b""
            if level is None or jpeg_is_ycbcr(probe):
                wrong.append(f)
        if level is not None:
            levels.setdefault(level.size, level)
    return levels, wrong


class DicomSlide(WSISlide):
    """A DICOM WSI series; geometry from openslide, pixels decoded here (see the module's docstring)."""

    def __init__(self, path: Path, slide_id: str, mpp: float | None = None) -> None:
        super().__init__(path, slide_id, mpp)
        self._tiles = None   # no TIFF fast path
        try:
            found, wrong = series_levels(path)
        except (InvalidDicomError, OSError, ValueError, AttributeError) as e:
            self._osr.close()
            raise PathomixInputError(f"{self.label}: its DICOM header cannot be read ({e})") from e
        self._levels = {i: found.get(dims) for i, dims in enumerate(self.level_dimensions)}
        self._openslide_wrong = bool(wrong)
        if wrong:
            log.info("%s: the header says RGB but the JPEG frames are YCbCr (%d instance(s)); decoding the frames "
                     "with their own colour space", self.label, len(wrong))

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of ``level`` at level-0 ``(x, y)``, white outside the image."""
        lvl = self._levels.get(level)
        if lvl is None:
            if self._openslide_wrong:
                raise PathomixInputError(
                    f"{self.label}: level {level} cannot be decoded by pathomix, and openslide would give wrong "
                    "colours for this series (header RGB, JPEG frames YCbCr); convert it, e.g. with "
                    "`wsidicomizer` or to OME-TIFF with `bfconvert`, or read another level"
                )
            return self._openslide_region(x, y, level, w, h)
        ds = self.level_downsamples[level]
        try:
            return stitch(lambda i: self._decode(lvl, i), lvl.tile, lvl.size, round(x / ds), round(y / ds),
                          int(w), int(h))
        except (RuntimeError, ValueError, OSError) as e:   # imagecodecs' codec errors are RuntimeErrors
            raise PathomixInputError(
                f"{self.label}: decoding a {w}x{h} region at level {level}, level-0 x={x}, y={y} from "
                f"{lvl.path.name} failed ({e}); the image data is corrupt there. Re-export the slide, or drop it "
                "from slides.tsv"
            ) from e

    @staticmethod
    def _decode(lvl: DicomLevel, index: int) -> np.ndarray:
        arr = lvl.decode(lvl.read_frame(index))
        if arr.dtype != np.uint8 or arr.shape[:2] != (lvl.tile[1], lvl.tile[0]):
            raise ValueError(f"frame {index} decoded to {arr.shape} {arr.dtype}, expected "
                             f"({lvl.tile[1]}, {lvl.tile[0]}, 3) uint8")
        return arr

    def _level_pixels(self, level: int) -> np.ndarray | None:
        w, h = self.level_dimensions[level]
        return self.read_region(0, 0, level, w, h) if self._levels.get(level) and w * h <= _LEVEL_PIXELS else None
