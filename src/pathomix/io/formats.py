"""Which reader opens an H&E slide: the format is detected from the file (openslide's vendor, then magic
bytes and OME-XML), and a registry maps each format to its reader or to an error that names a conversion.

Readers: openslide for the scanner formats it knows (SVS, NDPI, MRXS, SCN, BIF, generic tiled TIFF, …),
openslide + pydicom/imagecodecs for DICOM WSI (:mod:`pathomix.io.dicom`: colours decoded right), tifffile
for OME-TIFF (:mod:`pathomix.io.tiffwsi`: QuPath/Bio-Formats exports, which openslide refuses).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import openslide
import tifffile

from pathomix.errors import PathomixInputError
from pathomix.io.slide import CONVERT, Slide, WSISlide

log = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# formats pathomix recognises but cannot read → their name in messages (and what to do on top of CONVERT)
UNSUPPORTED = {
    "czi": "a Zeiss CZI file that openslide does not recognise",
    "vsi": "an Olympus/Evident VSI file (its pixels are in .ets files in a folder beside it)",
    "mirax-no-data": "a 3DHISTECH MRXS index without its data folder (the folder of the same name, with "
                     "Slidedat.ini and Data*.dat, must sit beside the .mrxs file)",
    "ndpis": "a Hamamatsu NDPIS set (one NDPI per fluorophore): list it as modality `mif`, one file per channel",
    "tiff": "a TIFF that openslide does not recognise as a slide (untiled, or truncated)",
    "unknown": "no image format that pathomix or openslide recognises (or a truncated file)",
}


def _magic(path: Path) -> tuple[bytes, bytes]:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[:16], head[128:132]


def detect_format(path: Path) -> str:
    """``ome-tiff``, ``dicom``, an openslide vendor (``aperio``, ``hamamatsu``, ``generic-tiff``, …) or one of
    :data:`UNSUPPORTED`'s keys."""
    head, dicm = _magic(path)
    suffix = path.suffix.lower()
    if suffix in (".vsi", ".ndpis"):   # a VSI is a TIFF whose own pages hold only an overview: never read it as one
        return suffix[1:]
    if head.startswith(_TIFF_MAGIC):
        try:
            with tifffile.TiffFile(path) as tf:
                if tf.is_ome:
                    return "ome-tiff"
        except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as e:
            log.debug("%s: tifffile cannot parse it (%s)", path, e)
    vendor = openslide.OpenSlide.detect_format(str(path))
    if vendor == "mirax" and not path.with_suffix("").is_dir():
        return "mirax-no-data"
    if vendor:
        return str(vendor)
    if head.startswith(b"ZISRAWFILE"):
        return "czi"
    if dicm == b"DICM":
        return "dicom"
    by_suffix = {".czi": "czi", ".mrxs": "mirax-no-data"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    return "tiff" if head.startswith(_TIFF_MAGIC) else "unknown"


def dicom_in_folder(folder: Path) -> Path | None:
    """The first DICOM file (by name) of a folder, or None."""
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if _magic(f)[1] == b"DICM":
            return f
    return None


def _dicom(path: Path, slide_id: str, mpp: float | None) -> Slide:
    from pathomix.io.dicom import DicomSlide

    return DicomSlide(path, slide_id, mpp)


def _ome(path: Path, slide_id: str, mpp: float | None) -> Slide:
    from pathomix.io.tiffwsi import TiffSlide

    return TiffSlide(path, slide_id, mpp)


# detected format → reader; any other openslide vendor → WSISlide
READERS: dict[str, Callable[[Path, str, float | None], Slide]] = {"ome-tiff": _ome, "dicom": _dicom}


def open_he(path: Path, slide_id: str, mpp: float | None) -> Slide:
    """Open an H&E slide with the reader of its detected format; an unreadable format raises
    :class:`PathomixInputError` naming the format and a conversion."""
    fmt = detect_format(path)
    what = f"slide {slide_id} ({path})"
    if fmt in UNSUPPORTED:
        lead = ("is not a whole-slide image that openslide recognises" if fmt in ("tiff", "unknown")
                else "cannot be read")
        raise PathomixInputError(f"{what} {lead} (detected: {UNSUPPORTED[fmt]}). Check the file is complete, "
                                 f"or {CONVERT}")
    log.debug("%s: format %s", what, fmt)
    return READERS.get(fmt, WSISlide)(path, slide_id, mpp)
