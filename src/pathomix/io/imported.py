"""Feature stores users already have (config ``features.import``): TRIDENT, CLAM and STAMP layouts.

    features:
      import:
        uni_trident: /data/trident_processed/20x_256px_0px_overlap/features_uni_v1   # a folder
        ctp_stamp: {path: /data/stamp/ctranspath-1a2b3c4d, mag: 10x}                   # or a mapping
        r50_clam: {path: /data/clam_features, mag: 20x, fallback: resnet50_trunc}       # extract missing slides

An imported encoder may have any name (it need not be registered). Layouts, as the projects write them:

- ``trident``: ``{folder}/{slide_id}.h5``, datasets ``features`` (N, D) and ``coords`` (N, 2) int level-0
  top-left px; ``coords`` attributes ``patch_size`` (px at the target), ``patch_size_level0``,
  ``level0_magnification``, ``target_magnification``, ``overlap``, ``name`` (TRIDENT ``save_h5``).
- ``clam``: ``{folder}/h5_files/{slide_id}.h5`` (beside ``pt_files/``), datasets ``features`` and ``coords``
  (level-0 px); CLAM's feature files carry no magnification (its patch files' ``coords`` have
  ``patch_level``, ``patch_size``, read when present), so the entry names it: ``mag: 20x``.
- ``stamp``: ``{folder}/{slide_id}.h5``, datasets ``feats`` (N, D) float16 and ``coords`` (N, 2) float in
  **µm** from the level-0 top-left; file attributes ``extractor``, ``unit`` (``um``), ``tile_size_um``,
  ``tile_size_px`` (KatherLab/STAMP ``stamp.preprocessing``). Converting µm to level-0 px needs the slide's
  µm/px: the slides sheet's ``mpp``, else the slide file's.

``format`` (``auto`` by default) is read off the folder: an ``h5_files/`` subfolder is CLAM, a ``feats``
dataset STAMP, else TRIDENT. The stores' magnification (TRIDENT ``target_magnification``, STAMP
``tile_size_um / tile_size_px``, or the entry's ``mag``) is matched to a ``tiling.magnifications`` name;
an imported folder holds one magnification, so every configured magnification must be it.

The workflow validates an import at planning time (:func:`plan`: every H&E slide has a readable store with the
dataset, one feature dimension, coords; one error lists every problem) and plans no tiling or extraction for
its slides (``fallback``: a registered encoder of the same dimension, the one that made the stores, extracts the
slides that have none, tiled as usual; their manifest rows have an empty ``source``):
``python -m pathomix.io.imported`` (rule ``import_features``) converts each store into
``features/{encoder}/{mag}/{slide_id}.h5`` in pathomix's own format (DESIGN §5; the original is only read),
so training, heatmaps and checks read it like an extracted store; the manifest's ``source`` column names the
original file and its format.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pathomix.cli import exit_process, stage_main
from pathomix.errors import PathomixInputError
from pathomix.io.h5store import _decode, write_features

log = logging.getLogger("pathomix.io.imported")
FORMATS = ("trident", "clam", "stamp")
FEATURE_DATASET = {"trident": "features", "clam": "features", "stamp": "feats"}
MAG_TOLERANCE = 0.1  # a store's µm/px within 10 % of a configured magnification's is that magnification


@dataclass(frozen=True)
class ImportSpec:
    """One ``features.import`` entry: the encoder ``name``, its ``folder``, ``format`` and optional ``mag``."""

    name: str
    folder: Path
    format: str = "auto"
    mag: str | None = None
    fallback: str | None = None  # a registered encoder that extracts the slides without a store

    def layout(self) -> str:
        """The format, read off the folder when ``auto``."""
        if self.format != "auto":
            return self.format
        if (self.folder / "h5_files").is_dir():
            return "clam"
        first = next(iter(sorted(self.folder.glob("*.h5"))), None)
        if first is not None:
            try:
                with h5py.File(first, "r") as h:
                    return "stamp" if "feats" in h else "trident"
            except OSError:
                pass
        return "trident"

    def store(self, slide_id: str, layout: str | None = None) -> Path:
        """Where the store of ``slide_id`` is in this layout."""
        layout = layout or self.layout()
        return self.folder / "h5_files" / f"{slide_id}.h5" if layout == "clam" else self.folder / f"{slide_id}.h5"


def parse_imports(entries: Mapping[str, Any] | None) -> dict[str, ImportSpec]:
    """``features.import`` → name → :class:`ImportSpec` (a value is a folder or ``{path, format, mag}``)."""
    out = {}
    for name, value in (entries or {}).items():
        spec = {"path": value} if isinstance(value, str | Path) else dict(value or {})
        if not spec.get("path"):
            raise PathomixInputError(f"features.import.{name}: give the folder of the stores (a path, or path: ...)")
        fmt = spec.get("format") or "auto"
        if fmt not in (*FORMATS, "auto"):
            raise PathomixInputError(f"features.import.{name}: format {fmt!r} is not one of auto, {', '.join(FORMATS)}")
        fallback = spec.get("fallback")
        if fallback is not None:
            from pathomix.features.entries import ENCODERS

            if fallback not in ENCODERS:
                raise PathomixInputError(f"features.import.{name}: fallback {fallback!r} is not a registered encoder "
                                         f"{sorted(ENCODERS)}")
        out[name] = ImportSpec(name, Path(spec["path"]).expanduser(), fmt, spec.get("mag"), fallback)
    return out


@dataclass(frozen=True)
class StoreInfo:
    """What planning reads of one store: feature dimension, tile count, the tiles' µm/px (None if unknown)."""

    dim: int
    n_tiles: int
    tile_mpp: float | None
    target_magnification: float | None


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {k: _decode(v) for k, v in obj.attrs.items()}


def read_info(path: Path, layout: str) -> StoreInfo:
    """Shapes and magnification of a store without reading its arrays; PathomixInputError says what is wrong."""
    try:
        h = h5py.File(path, "r")
    except OSError as err:
        raise PathomixInputError(f"{path}: not a readable h5 file ({err})") from None
    with h:
        name = FEATURE_DATASET[layout]
        if name not in h:
            raise PathomixInputError(f"{path}: no '{name}' dataset (a {layout} store has one; datasets: {list(h)})")
        if "coords" not in h:
            raise PathomixInputError(f"{path}: no 'coords' dataset; heatmaps and training need the tile positions")
        feats, coords = h[name], h["coords"]
        if feats.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != feats.shape[0]:
            raise PathomixInputError(f"{path}: '{name}' {feats.shape} and 'coords' {coords.shape} are not (N, D) "
                                     "and (N, 2) of one N")
        file_attrs, coord_attrs = _attrs(h), _attrs(coords)
    return StoreInfo(int(feats.shape[1]), int(feats.shape[0]), *_magnification(layout, file_attrs, coord_attrs))


def _magnification(layout: str, file_attrs: Mapping[str, Any],
                   coord_attrs: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(tile µm/px, target magnification) from a store's attributes (10x = 1 µm/px), or None where unknown."""
    if layout == "stamp" and file_attrs.get("tile_size_um") and file_attrs.get("tile_size_px"):
        mpp = float(file_attrs["tile_size_um"]) / float(file_attrs["tile_size_px"])
        return mpp, 10.0 / mpp
    if coord_attrs.get("target_magnification"):
        mag = float(coord_attrs["target_magnification"])
        return 10.0 / mag, mag
    return None, None


def match_mag(spec: ImportSpec, info: StoreInfo, mags: Mapping[str, float], example: Path) -> str:
    """The ``tiling.magnifications`` name of the stores: the entry's ``mag``, else the one whose µm/px the
    stores' attributes give (within 10 %); PathomixInputError names what was found and how to fix it."""
    from pathomix.paths import mag_name

    if spec.mag is not None:
        names = {mag_name(m): m for m in mags}
        if mag_name(spec.mag) not in names:
            raise PathomixInputError(f"features.import.{spec.name}: mag {spec.mag} is not in tiling.magnifications "
                                     f"{list(mags)}")
        return names[mag_name(spec.mag)]
    if info.tile_mpp is None:
        raise PathomixInputError(
            f"features.import.{spec.name}: the stores do not record their magnification (e.g. {example}); name it: "
            f"features.import.{spec.name}: {{path: {spec.folder}, mag: <one of {list(mags)}>}}")
    for name, mpp in mags.items():
        if abs(info.tile_mpp - float(mpp)) <= MAG_TOLERANCE * float(mpp):
            return name
    raise PathomixInputError(
        f"features.import.{spec.name}: the stores are at {info.tile_mpp:.3g} µm/px (≈{info.target_magnification:.3g}x, "
        f"{example}), which matches no tiling.magnifications entry {dict(mags)}; add it there (e.g. "
        f"{mag_name(info.target_magnification)}: {info.tile_mpp:.3g}) or set features.import.{spec.name}.mag")


@dataclass(frozen=True)
class ImportPlan:
    """A validated import: layout, the magnification name, feature dimension and slide → original store."""

    name: str
    layout: str
    mag: str
    dim: int
    files: dict[str, Path]
    missing: tuple[str, ...] = ()  # slides without a store, extracted with the entry's fallback encoder


def plan(spec: ImportSpec, slide_ids: Iterable[str], mags: Mapping[str, float]) -> ImportPlan:
    """Check an import against the slides (``slide_ids``: the sheet's H&E slides) and the configured
    magnifications; one PathomixInputError lists every problem (missing stores named by folder and file)."""
    if not spec.folder.is_dir():
        raise PathomixInputError(f"features.import.{spec.name}: {spec.folder} is not a folder")
    layout = spec.layout()
    slide_ids = list(slide_ids)
    files = {s: spec.store(s, layout) for s in slide_ids}
    missing = [s for s, f in files.items() if not f.exists()]
    if missing and spec.fallback:
        files = {s: f for s, f in files.items() if s not in missing}
    elif missing:
        where = spec.folder / "h5_files" if layout == "clam" else spec.folder
        raise PathomixInputError(
            f"features.import.{spec.name}: {len(missing)} of {len(slide_ids)} slide(s) have no {layout} store in "
            f"{where} (expected {{slide_id}}.h5, e.g. {files[missing[0]].name}): {', '.join(missing[:20])}"
            + (" ..." if len(missing) > 20 else "") + "; add the stores, remove those slides from the slides sheet, "
            f"or name the registered encoder that made them to extract the missing ones: features.import.{spec.name}: "
            f"{{path: {spec.folder}, fallback: <encoder>}}")
    problems, infos = [], {}
    for s, f in files.items():
        try:
            infos[s] = read_info(f, layout)
        except PathomixInputError as err:
            problems.append(str(err))
    dims = {i.dim for i in infos.values()}
    if len(dims) > 1:
        by_dim = {d: next(s for s, i in infos.items() if i.dim == d) for d in sorted(dims)}
        problems.append(f"feature dimensions differ across slides: {by_dim} (dimension: a slide with it); one "
                        "encoder per imported folder")
    if problems:
        raise PathomixInputError(f"features.import.{spec.name} ({spec.folder}, {layout}):\n  " + "\n  ".join(problems))
    if not infos:
        raise PathomixInputError(f"features.import.{spec.name}: no H&E slide of the slides sheet has a store in "
                                 f"{spec.folder}")
    dim = dims.pop()
    if missing and spec.fallback:
        from pathomix.features.entries import ENCODERS

        if ENCODERS[spec.fallback].dim != dim:
            raise PathomixInputError(
                f"features.import.{spec.name}: fallback {spec.fallback} gives {ENCODERS[spec.fallback].dim}-d "
                f"features, the imported stores are {dim}-d; name the encoder that made them")
    first = next(iter(infos))
    mag = match_mag(spec, infos[first], mags, files[first])
    if extra := [m for m in mags if m != mag]:
        raise PathomixInputError(
            f"features.import.{spec.name}: the imported stores are at {mag} only, but tiling.magnifications also "
            f"names {extra}; set tiling.magnifications to {{{mag}: {mags[mag]}}} for this run")
    return ImportPlan(spec.name, layout, mag, dim, files, tuple(missing) if spec.fallback else ())


# ---- conversion (one slide): the rule import_features ------------------------------------------------
@dataclass(frozen=True)
class SlideGeometry:
    """What the slide file (or the sheet) says: level-0 µm/px and size; None where unknown."""

    mpp: float | None = None
    width: int | None = None
    height: int | None = None
    objective_power: float | None = None


def slide_geometry(path: str | None, mpp: float | None) -> SlideGeometry:
    """The slide's µm/px (the sheet's ``mpp`` wins) and level-0 size, when its file can be opened."""
    if path and Path(path).exists():
        try:
            from pathomix.io.slide import open_slide

            with open_slide(path, "he", mpp) as slide:
                return SlideGeometry(float(slide.mpp), int(slide.dimensions[0]), int(slide.dimensions[1]),
                                     getattr(slide, "objective_power", None))
        except (OSError, PathomixInputError, ValueError) as err:
            log.warning("slide %s could not be opened (%s); its geometry comes from the store", path, err)
    return SlideGeometry(mpp)


def read_store(path: Path, layout: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """→ (features, coords as stored, file attributes, coords attributes)."""
    with h5py.File(path, "r") as h:
        return (h[FEATURE_DATASET[layout]][:], h["coords"][:], _attrs(h), _attrs(h["coords"]))


def _spacing(coords: np.ndarray) -> int | None:
    """The smallest positive step between tile positions (the tile size on a grid without overlap)."""
    steps = [np.diff(np.unique(coords[:, i])) for i in (0, 1)]
    steps = np.concatenate([s[s > 0] for s in steps]) if len(coords) > 1 else np.array([])
    return int(steps.min()) if len(steps) else None


def convert(slide_id: str, source: Path, layout: str, encoder: str, target_mpp: float, mag: str,
            geometry: SlideGeometry) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """One original store → (coords int64 level-0 px, features, coords attrs, feature attrs) of DESIGN §5."""
    feats, coords, file_attrs, cattrs = read_store(source, layout)
    if layout == "stamp":
        if str(file_attrs.get("unit", "um")) not in ("um", "µm"):
            raise PathomixInputError(f"{source}: STAMP coords in unit {file_attrs.get('unit')!r}; expected um")
        if geometry.mpp is None:
            raise PathomixInputError(f"{source}: STAMP coords are in µm; pathomix needs the slide's µm/px to place "
                                     f"the tiles: give slide {slide_id} an `mpp` in the slides sheet")
        level0_mpp = geometry.mpp
        coords = np.rint(np.asarray(coords, np.float64) / level0_mpp)
        patch_px = int(file_attrs.get("tile_size_px") or 0)
        size0 = int(round(float(file_attrs["tile_size_um"]) / level0_mpp)) if file_attrs.get("tile_size_um") else None
    else:
        patch_px = int(cattrs.get("patch_size") or 0)
        size0 = int(cattrs["patch_size_level0"]) if cattrs.get("patch_size_level0") else None
        if size0 is None and patch_px and geometry.mpp:
            size0 = int(round(patch_px * target_mpp / geometry.mpp))
        level0_mpp = geometry.mpp or (target_mpp * patch_px / size0 if patch_px and size0 else None)
    coords = np.asarray(coords).astype(np.int64).reshape(-1, 2)
    size0 = size0 or _spacing(coords) or 256
    patch_px = patch_px or size0
    level0_mpp = level0_mpp or target_mpp * patch_px / size0
    far = coords.max(axis=0) + size0 if len(coords) else np.array([size0, size0])
    coord_attrs = {
        "patch_size": patch_px, "patch_size_level0": size0,
        "level0_magnification": float(cattrs.get("level0_magnification") or geometry.objective_power
                                      or 10.0 / level0_mpp),
        "target_magnification": float(10.0 / target_mpp), "overlap": int(cattrs.get("overlap") or 0),
        "name": slide_id, "level0_width": int(geometry.width or far[0]),
        "level0_height": int(geometry.height or far[1]),
        "patch_level": int(cattrs.get("patch_level") or 0), "downsample": float(size0 / patch_px),
        "target_mpp": float(target_mpp), "level0_mpp": float(level0_mpp), "slide_id": slide_id, "modality": "he",
        "mag": mag,
    }
    feats = np.asarray(feats)
    feats = feats if feats.dtype in (np.float16, np.float32) else feats.astype(np.float32)
    feature_attrs = {"encoder": encoder, "encoder_weights_sha256": f"imported:{layout}",
                     "precision": "fp16" if feats.dtype == np.float16 else "fp32", "n_skipped": 0,
                     "source": str(source.resolve()), "source_format": layout}
    return coords, feats, coord_attrs, feature_attrs


@stage_main("pathomix.io.imported")
def main(argv: list[str] | None = None) -> int:
    """Convert one slide's imported store into a pathomix feature store."""
    p = argparse.ArgumentParser(prog="python -m pathomix.io.imported", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide-id", required=True)
    p.add_argument("--source", required=True, type=Path, help="the original store")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--encoder", required=True, help="the imported encoder's name (features.import key)")
    p.add_argument("--mag", required=True, help="the tiling.magnifications name of the stores, e.g. 20x")
    p.add_argument("--target-mpp", required=True, type=float, help="µm/px of that magnification")
    p.add_argument("--slide", default=None, help="the slide file (for its µm/px and size), when it exists")
    p.add_argument("--mpp", type=float, default=None, help="the slides sheet's µm/px of the slide")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    geometry = slide_geometry(args.slide, args.mpp)
    coords, feats, cattrs, fattrs = convert(args.slide_id, args.source, args.format, args.encoder, args.target_mpp,
                                            args.mag, geometry)
    write_features(args.out, coords, cattrs, feats, fattrs)
    log.info("imported %s (%s) → %s: %s", args.source, args.format, args.out, feats.shape)
    return 0


if __name__ == "__main__":
    exit_process(main())
