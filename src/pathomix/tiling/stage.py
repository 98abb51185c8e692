"""The tiling stage: one slide → one coords store (DESIGN.md §5) + QC PNG per magnification.

    python -m pathomix.tiling --slide-id ID --path PATH --modality he|mif --mag 20x [10x ...]
        --target-mpp 0.5 [1.0 ...] [--mpp F] [--channels-sheet TSV] --params JSON
        --out OUT20.h5 [OUT10.h5 ...] --qc QC20.png [QC10.png ...]

The tissue mask is computed once per slide and shared by every magnification.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pathomix.cli import stage_main
from pathomix.constants import MODALITIES
from pathomix.errors import PathomixInputError
from pathomix.io.h5store import write_coords
from pathomix.io.slide import Slide, open_slide
from pathomix.io.stamps import tile_stamp, write_stamp
from pathomix.tiling.grid import GridGeometry, n_positions, tile_coords
from pathomix.tiling.params import TilingParams
from pathomix.tiling.qc import write_qc
from pathomix.tiling.tissue import mif_signal, tissue_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilingResult:
    """Coordinates, store attributes and the mask they came from."""

    coords: np.ndarray                 # int64 (N, 2) level-0 top-left (x, y), row-major
    attrs: dict[str, Any]              # every COORD_ATTRS name (+ channels for mIF)
    thumbnail: np.ndarray              # Tissue.thumbnail: (h', w', 3) uint8 for H&E, (C, h', w') float32 for mIF
    mask: np.ndarray                   # bool (h, w) tissue mask at about mask_mpp (h', w' may be coarser)
    scale: tuple[float, float]         # mask px per level-0 px, (x, y)
    n_positions: int                   # grid positions before the tissue filter

    @property
    def patch_level(self) -> int:
        """The level tiles are read from (CLAM's ``patch_level``)."""
        return int(self.attrs["patch_level"])


def coord_attrs(slide: Slide, geometry: GridGeometry, target_mpp: float, params: TilingParams,
                mag: str | None) -> dict[str, Any]:
    """The attributes of DESIGN.md §5 (TRIDENT, CLAM and ours) for one slide."""
    level = slide.best_level(geometry.patch_size_level0 / params.tile_px)
    attrs: dict[str, Any] = {
        "patch_size": int(params.tile_px),
        "patch_size_level0": int(geometry.patch_size_level0),
        "level0_magnification": float(slide.objective_power or 10.0 / slide.mpp),
        "target_magnification": float(10.0 / target_mpp),
        "overlap": int(params.overlap_px),
        "name": slide.slide_id,
        "level0_width": int(slide.dimensions[0]),
        "level0_height": int(slide.dimensions[1]),
        "patch_level": int(level),
        "downsample": float(slide.level_downsamples[level]),
        "target_mpp": float(target_mpp),
        "level0_mpp": float(slide.mpp),
        "slide_id": slide.slide_id,
        "modality": slide.modality,
    }
    if mag:
        attrs["mag"] = str(mag)
    if slide.modality == "mif":
        attrs["channels"] = list(slide.channels)
        attrs["autofluorescence"] = np.asarray(slide.autofluorescence, dtype=np.int64)
    return attrs


@dataclass(frozen=True)
class Tissue:
    """A slide's thumbnail and tissue mask."""

    thumbnail: np.ndarray              # the image the mask was made from (its level, or mask_mpp if finer):
                                       # (h', w', 3) uint8 for H&E, (C, h', w') float32 for mIF
    mask: np.ndarray                   # bool (h, w) at about mask_mpp
    scale: tuple[float, float]         # mask px per level-0 px, (x, y)
    mpp: float                         # µm/px of the mask


LEVEL_TIE = 0.01   # levels whose downsamples are within 1 % equally close to the mask's count as a tie


def mask_level(slide: Slide, mask_mpp: float) -> int:
    """The pyramid level the tissue mask is made from: the one whose pixel size is closest to
    ``mask_mpp`` (by ratio); of two about equally close, the coarser.

    A 4x pyramid (downsamples 1, 4, 16, 64, as Aperio writes) at 0.25 µm/px and an 8 µm/px mask
    (32x) ties 16x and 64x; the 64x level (what CLAM segments) decodes 16x fewer pixels, and the
    mask made from it is upsampled to ``mask_mpp`` (IoU with the 16x mask in docs/benchmarks.md).
    """
    factor = max(mask_mpp / slide.mpp, 1.0)
    distance = [abs(math.log(d / factor)) for d in slide.level_downsamples]
    near = [i for i, d in enumerate(distance) if d <= min(distance) + math.log1p(LEVEL_TIE)]
    return max(near, key=lambda i: slide.level_downsamples[i])


def source_mpp(slide: Slide, mask_mpp: float) -> float:
    """µm/px of the image the mask is made from: ``mask_mpp`` when the :func:`mask_level` is finer
    (``Slide.thumbnail`` box-reduces it), else the level's own (its pixels as they are)."""
    return max(mask_mpp, slide.mpp * slide.level_downsamples[mask_level(slide, mask_mpp)])


def mask_size(slide: Slide, mask_mpp: float) -> tuple[int, int]:
    """(w, h) of the mask grid at ``mask_mpp``, computed as ``Slide.thumbnail(mask_mpp)`` sizes its image."""
    factor = max(mask_mpp / slide.mpp, 1.0)
    width, height = slide.dimensions
    return max(1, round(width / factor)), max(1, round(height / factor))


def upsample_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` resized to ``size`` = (w, h): bilinear, then >= 0.5, so outlines stay smooth."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    image = Image.fromarray(mask.view(np.uint8) * np.uint8(255)).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image) >= 128


def detect_tissue(slide: Slide, params: TilingParams) -> Tissue:
    """Tissue mask on the mask grid (``params.mask_mpp``), made from the slide's :func:`mask_level`
    at :func:`source_mpp` and upsampled when that level is coarser than the grid."""
    thumb = slide.thumbnail(source_mpp(slide, params.mask_mpp))
    h, w = thumb.shape[:2] if slide.modality == "he" else thumb.shape[1:]
    width, height = slide.dimensions
    thumb_mpp = slide.mpp * (width / w + height / h) / 2
    mask = tissue_mask(thumb, slide.modality, thumb_mpp, params.min_region_um2, slide.autofluorescence)
    size = mask_size(slide, params.mask_mpp)   # = (w, h) unless the level was coarser
    mask = upsample_mask(mask, size)
    scale = (size[0] / width, size[1] / height)
    return Tissue(thumb, mask, scale, slide.mpp * (width / size[0] + height / size[1]) / 2)


def tile_slide(slide: Slide, target_mpp: float, params: TilingParams, mag: str | None = None,
               tissue: Tissue | None = None) -> TilingResult:
    """Tissue mask → tile grid for one open slide. Logs a WARNING when no tile is kept."""
    geometry = GridGeometry.for_slide(slide.mpp, target_mpp, params.tile_px, params.overlap_px, slide.label)
    tissue = tissue or detect_tissue(slide, params)
    coords = tile_coords(tissue.mask, slide.dimensions, geometry, params.min_tissue_fraction)
    n_pos = n_positions(slide.dimensions, geometry)
    if n_pos == 0:
        log.warning("%s: %dx%d px is smaller than one tile (%d level-0 px = %d px at %.3g µm/px); "
                    "writing an empty tile store", slide.label, *slide.dimensions,
                    geometry.patch_size_level0, params.tile_px, target_mpp)
    elif len(coords) == 0:
        log.warning("%s: no tile at %.3g µm/px has >= %.0f%% tissue (the mask at %.3g µm/px covers %.1f%% "
                    "of the slide); writing an empty tile store. If the slide has tissue, check its mpp "
                    "and `tiling.min_tissue_fraction`", slide.label, target_mpp,
                    100 * params.min_tissue_fraction, tissue.mpp, 100 * tissue.mask.mean())
    attrs = coord_attrs(slide, geometry, target_mpp, params, mag)
    return TilingResult(coords, attrs, tissue.thumbnail, tissue.mask, tissue.scale, n_pos)


def _qc_image(slide: Slide, result: TilingResult) -> np.ndarray:
    if slide.modality == "he":
        return result.thumbnail
    return mif_signal(result.thumbnail, slide.autofluorescence)


def write_outputs(slide: Slide, result: TilingResult, out: str | Path, qc: str | Path) -> None:
    """Write the QC PNG, then the coords store (both atomically)."""
    a = result.attrs
    title = (f"{slide.slide_id} | {a.get('mag', '')} | {len(result.coords)} tiles | slide {slide.mpp:.3f} "
             f"-> tiles {a['target_mpp']:g} um/px | level {a['patch_level']}")
    write_qc(qc, _qc_image(slide, result), result.mask, result.coords, a["patch_size_level0"],
             result.scale, title)
    write_coords(out, result.coords, a)


def _optional_float(text: str) -> float | None:
    """``--mpp`` value: empty, ``none`` or ``nan`` mean "use the file's"."""
    if text.strip().lower() in ("", "none", "null", "nan", "na"):
        return None
    value = float(text)
    return None if math.isnan(value) else value


def build_parser() -> argparse.ArgumentParser:
    """The command line the Snakemake rule calls."""
    p = argparse.ArgumentParser(prog="python -m pathomix.tiling", description=__doc__.split("\n")[0])
    p.add_argument("--slide-id", required=True)
    p.add_argument("--path", required=True, type=Path, help="slide file (or folder of mIF channel TIFFs)")
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--mag", required=True, nargs="+", help="magnification name(s), e.g. 20x 10x")
    p.add_argument("--target-mpp", required=True, nargs="+", type=float, help="µm/px of the tiles, per --mag")
    p.add_argument("--mpp", type=_optional_float, default=None, help="level-0 µm/px override")
    p.add_argument("--channels-sheet", type=Path, default=None, help="mIF channel sheet (TSV)")
    p.add_argument("--params", default="{}", help="JSON of the config's `tiling:` section")
    p.add_argument("--out", required=True, nargs="+", type=Path, help="coords store(s) (.h5), per --mag")
    p.add_argument("--qc", required=True, nargs="+", type=Path, help="QC image(s) (.png), per --mag")
    p.add_argument("--code", default=None, help="code hash of the stage: stamps the stores (pathomix.io.stamps)")
    return p


@dataclass(frozen=True)
class TilePaths:
    """What one tiling job reads and writes: one slide, one (mag, target µm/px, store, QC image) per
    magnification. ``code`` (the stage's code hash), when given, stamps the stores."""

    slide_id: str
    path: Path
    modality: str
    mags: tuple[str, ...]
    target_mpp: tuple[float, ...]
    out: tuple[Path, ...]
    qc: tuple[Path, ...]
    mpp: float | None = None            # level-0 µm/px override
    channels_sheet: Path | None = None  # mIF channel sheet (ignored for H&E)
    code: str | None = None

    def __post_init__(self) -> None:
        if len({len(self.mags), len(self.target_mpp), len(self.out), len(self.qc)}) != 1:
            raise PathomixInputError(f"slide {self.slide_id}: --mag, --target-mpp, --out and --qc need the same "
                                     f"number of values, got {len(self.mags)}, {len(self.target_mpp)}, "
                                     f"{len(self.out)}, {len(self.qc)}")
        if self.modality not in MODALITIES:
            raise PathomixInputError(f"slide {self.slide_id}: modality {self.modality!r} is not one of "
                                     f"{MODALITIES}; fix slides.tsv")

    @property
    def sheet(self) -> Path | None:
        return self.channels_sheet if self.modality == "mif" else None

    def jobs(self) -> list[tuple[str, float, Path, Path]]:
        return list(zip(self.mags, self.target_mpp, self.out, self.qc, strict=True))


def stamp(params: TilingParams, paths: TilePaths, code: str) -> str:
    """The stamp of a slide's tile stores (:mod:`pathomix.io.stamps`): per-slide and batch jobs agree."""
    return tile_stamp(code, json.dumps(dataclasses.asdict(params), sort_keys=True), paths.mags, paths.target_mpp,
                      paths.path, paths.modality, paths.mpp, paths.sheet)


def run(params: TilingParams, paths: TilePaths) -> None:
    """Tile one slide at every magnification of ``paths`` (in-process entry point of the stage);
    raises PathomixInputError on bad input, writing nothing."""
    start = time.perf_counter()
    with open_slide(paths.path, paths.modality, mpp=paths.mpp, slide_id=paths.slide_id,
                    channels_sheet=paths.sheet) as slide:
        tile_open_slide(slide, params, paths.jobs())
    if paths.code is not None:  # what made these stores, so a batch job of a larger cohort keeps them
        write_stamp(paths.out, stamp(params, paths, paths.code))
    log.info("slide %s: tiled at %s in %.2f s", paths.slide_id, " ".join(paths.mags), time.perf_counter() - start)


def tile_open_slide(slide: Slide, params: TilingParams, jobs: list[tuple[str, float, Path, Path]]) -> None:
    """Tile one open slide at every (mag, target mpp, out, qc); nothing is written if any target fails."""
    for _, target, _, _ in jobs:   # refuse impossible targets before writing anything
        GridGeometry.for_slide(slide.mpp, target, params.tile_px, params.overlap_px, slide.label)
    tissue = detect_tissue(slide, params)
    for mag, target, out, qc in jobs:
        start = time.perf_counter()
        result = tile_slide(slide, target, params, mag, tissue)
        write_outputs(slide, result, out, qc)
        log.info("slide %s: mpp %.4g, %s at %.3g µm/px, level %d (downsample %.3g), %d of %d tiles kept, "
                 "%.2f s", slide.slide_id, slide.mpp, mag, target, result.patch_level,
                 result.attrs["downsample"], len(result.coords), result.n_positions,
                 time.perf_counter() - start)


@stage_main("pathomix.tiling")
def main(argv: list[str] | None = None) -> int:
    """Tile one slide: 0 on success, 1 on an input problem (logged at ERROR, no traceback)."""
    args = build_parser().parse_args(argv)
    paths = TilePaths(args.slide_id, args.path, args.modality, tuple(args.mag), tuple(args.target_mpp),
                      tuple(args.out), tuple(args.qc), args.mpp, args.channels_sheet, args.code)
    run(TilingParams.from_json(args.params), paths)
    return 0
