"""Find the slides of a folder, guess their modality, open each one and list what is wrong before a run.

Every file a reader may take is opened with the readers the workflow uses (:func:`pathomix.io.slide.open_slide`),
so a problem shows here with the message the tiling job would give: files that do not open, files without an MPP
(with the column to fill), images too coarse for the configured magnifications.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import tifffile

from pathomix.errors import PathomixInputError
from pathomix.io.formats import dicom_in_folder
from pathomix.io.slide import open_slide

log = logging.getLogger(__name__)

# file suffixes a reader may take (openslide's scanner formats, TIFF/OME-TIFF/QPTIFF, DICOM) and ones pathomix
# names in its error (CZI, VSI): listed so that a user sees them in the problem table instead of missing them
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide",
                  ".qptiff", ".dcm", ".dicom", ".czi", ".vsi", ".ndpis")
TCGA_PATIENT = r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})"


@dataclass(frozen=True)
class Found:
    """One slide of the folder: its id, path, guessed modality, the file's µm/px (None: missing) and the
    problem that stops it (None: it opens)."""

    slide_id: str
    patient_id: str
    path: Path
    modality: str
    mpp: float | None
    problem: str | None = None


def _series_uid(path: Path) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    except (pydicom.errors.InvalidDicomError, AttributeError, OSError) as err:
        log.debug("%s: no DICOM series uid (%s)", path, err)
        return str(path)


def slide_files(folder: Path) -> list[Path]:
    """Slide files under ``folder`` (recursive). The instances of one DICOM WSI series are one slide: their
    folder when it holds only that series, else the series' first file (openslide finds the others)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in SLIDE_SUFFIXES]
    dicom = [p for p in files if p.suffix.lower() in (".dcm", ".dicom")]
    found = [p for p in files if p not in dicom]
    by_folder: dict[Path, dict[str, list[Path]]] = {}
    for p in dicom:
        by_folder.setdefault(p.parent, {}).setdefault(_series_uid(p), []).append(p)
    for parent, series in by_folder.items():
        for instances in series.values():
            found.append(parent if len(series) == 1 and len(instances) > 1 else instances[0])
    return sorted(found)


def slide_id_of(path: Path) -> str:
    """The file name without its (double) suffix: ``a.ome.tiff`` → ``a``."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.is_file() else name


def patient_of(slide_id: str, pattern: str | None) -> str:
    """The patient of a slide id: the first group of ``pattern`` (default: the TCGA barcode's first three fields,
    ``TCGA-CR-7395-01A-01-TS1`` → ``TCGA-CR-7395``), else the slide id itself (one patient per slide)."""
    m = re.search(pattern or TCGA_PATIENT, slide_id)
    if m is None:
        return slide_id
    return m.group(1) if m.groups() else m.group(0)


def guess_modality(path: Path) -> str:
    """``he`` for RGB brightfield (8-bit, 3 samples) and any DICOM series; ``mif`` for multichannel images
    (QPTIFF/MIBI/OME panels: several planes, or not 8-bit)."""
    if path.is_dir():
        return "he" if dicom_in_folder(path) is not None else "mif"
    try:
        with tifffile.TiffFile(path) as tf:
            if tf.is_qpi:
                return "mif"
            series = tf.series[0]
            shape, axes = series.shape, series.axes
            rgb = "S" in axes and shape[axes.index("S")] in (3, 4)
            planes = [shape[axes.index(a)] for a in "CIQ" if a in axes]
            if series.dtype.itemsize > 1 or (not rgb and (not planes or max(planes) != 3)):
                return "mif"
            if planes and max(planes) > 1 and not (len(planes) == 1 and planes[0] == 3):
                return "mif"
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as err:
        log.debug("%s: not a TIFF tifffile reads (%s); taken as H&E", path, err)
    return "he"


def inspect(path: Path, slide_id: str, patient_id: str, target_mpps: Mapping[str, float]) -> Found:
    """Open the slide as the workflow would; the problem (or None) and the file's µm/px."""
    modality = guess_modality(path)
    try:
        with open_slide(path, modality, slide_id=slide_id) as slide:
            mpp = float(slide.mpp)
    except PathomixInputError as err:
        return Found(slide_id, patient_id, path, modality, None, str(err))
    too_fine = {m: t for m, t in target_mpps.items() if t < mpp * 0.99}
    problem = None
    if too_fine:
        problem = (f"slide {slide_id} ({path}): {mpp:.3g} µm/px is too coarse for {sorted(too_fine)}; keep only "
                   "magnifications it can serve in `tiling.magnifications`, or leave the slide out")
    return Found(slide_id, patient_id, path, modality, mpp, problem)


def scan(folder: Path, target_mpps: Mapping[str, float], pattern: str | None = None) -> list[Found]:
    """Every slide of ``folder``, opened; duplicate slide ids get the folder in front to stay unique."""
    files = slide_files(folder)
    ids = [slide_id_of(p) for p in files]
    dup = {i for i in ids if ids.count(i) > 1}
    out = []
    for path, sid in zip(files, ids, strict=True):
        if sid in dup:
            sid = "_".join([*path.relative_to(folder).parent.parts, sid])
        out.append(inspect(path, sid, patient_of(sid, pattern), target_mpps))
        log.info("%-40s %-4s %s", sid, out[-1].modality, "ok" if out[-1].problem is None else "PROBLEM")
    return out


def problems_table(found: Iterable[Found], extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(what, problem) rows: the slides that do not open, lack an MPP or are too coarse, then ``extra``."""
    rows = [(f.slide_id, f.problem) for f in found if f.problem]
    return rows + list(extra)
