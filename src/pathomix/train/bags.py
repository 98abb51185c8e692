"""Patient bags from the feature manifest: the union of the tiles of all H&E slides (or all mIF
images) of a patient at one magnification (PORPOISE/MCAT), keeping each tile's slide id, row
index and position on the tile grid. H&E tiles are ``(D,)`` features, mIF tiles ``(C, D)``: one
embedding per marker channel, named by the store's ``channels`` attribute.

Positions are in tile units (level-0 ``coords`` divided by the tile step, from the store's
``patch_size_level0`` and ``overlap`` attributes, or inferred from the coordinate spacing when a
CLAM/TRIDENT store lacks them). A patient's slides are laid side by side along x, one empty
column apart, so that tiles of different slides never share a grid cell.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from pathomix.errors import PathomixInputError
from pathomix.io.corrupt import read_parquet
from pathomix.io.h5store import read_features
from pathomix.paths import results_of_manifest

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("slide_id", "patient_id", "path")
# manifest modality → (name in messages, dimensions of one store's features: (N, D) or (N, C, D))
MODALITIES: dict[str, tuple[str, int]] = {"he": ("H&E", 2), "mif": ("mIF", 3)}


@dataclass(frozen=True)
class Bag:
    """One patient's tiles at one magnification, in slide-id order then store-row order."""

    features: torch.Tensor  # (N, D) H&E or (N, C, D) mIF, stored precision, CPU
    slide_ids: np.ndarray  # (N,) str
    tile_index: np.ndarray  # (N,) int64, row in that slide's store
    positions: np.ndarray  # (N, 2) float32 (x, y) on the patient's tile grid, in tile units

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class Bags:
    """Every loaded bag: ``bags[patient][mag]``; ``tile_shape`` is ``(D,)`` or ``(C, D)`` (None when
    no patient has a tile); ``channels`` the mIF marker names (empty for H&E)."""

    bags: dict[str, dict[str, Bag]]
    tile_shape: tuple[int, ...] | None
    channels: tuple[str, ...] = ()


def manifest_encoder(path: str | Path | None) -> str:
    """The encoder named by a feature manifest's stores (several joined by '+'); empty without a manifest."""
    if path is None:
        return ""
    table = read_parquet(path)
    names = table.encoder.astype(str).unique() if "encoder" in table.columns else []
    return "+".join(sorted(names))


def _check_sizes(df: pd.DataFrame, manifest: Path) -> None:
    """Each store as the manifest recorded it (its size; a cheap check before hours of training): a store
    truncated, replaced or copied partly after extraction is refused, naming it and the fix."""
    if "size_bytes" not in df.columns:
        return  # a manifest from before the column, or an imported one without it
    changed = []
    for p, size in zip(df.path, df.size_bytes, strict=True):
        now = Path(p).stat().st_size if Path(p).exists() else None
        if pd.notna(size) and now != int(size):
            changed.append(f"{p} ({'missing' if now is None else f'{now} bytes'}, recorded {int(size)})")
    if changed:
        raise PathomixInputError(
            f"feature manifest {manifest}: {len(changed)} store(s) changed after extraction, e.g. {changed[:3]}; "
            "delete them (`python -m pathomix.verify RESULTS_DIR --remove` finds the unreadable ones) or the manifest, "
            "and rerun the same command: the missing stores are recomputed")


def read_manifest(path: str | Path, mags: Sequence[str], modality: str = "he") -> pd.DataFrame:
    """Rows of ``modality`` (``he`` | ``mif``) of the manifest at ``mags`` (mag taken from the
    store's folder when absent; a manifest without a ``modality`` column is all H&E). Relative store
    paths are resolved against the manifest's results folder."""
    path = Path(path)
    if not path.exists():
        raise PathomixInputError(f"feature manifest {path} does not exist; run the features stage first")
    df = read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise PathomixInputError(
            f"feature manifest {path} lacks column(s) {missing}; it has {list(df.columns)}")
    if not all(Path(p).is_absolute() for p in df.path):
        root = results_of_manifest(path.resolve())
        df["path"] = [p if Path(p).is_absolute() else str(root / p) for p in df.path]
    _check_sizes(df, path)
    if "mag" not in df.columns:  # features/{encoder}/{mag}/{slide_id}.h5
        df["mag"] = [Path(p).parent.name for p in df.path]
    if "modality" in df.columns:
        df = df[df.modality == modality]
    elif modality != "he":
        df = df.iloc[:0]
    df = df.assign(patient_id=df.patient_id.astype(str), slide_id=df.slide_id.astype(str))
    return df[df.mag.isin(mags)].sort_values(["patient_id", "mag", "slide_id"]).reset_index(drop=True)


def _step(values: np.ndarray) -> float | None:
    """Smallest positive spacing of the distinct values of one coordinate axis (None if < 2)."""
    diffs = np.diff(np.unique(values))
    return float(diffs.min()) if len(diffs) else None


def tile_positions(coords: np.ndarray, attrs: dict) -> np.ndarray:
    """Level-0 top-left ``coords`` (N, 2) → (N, 2) float32 tile-grid positions, starting at 0.

    The tile step (level-0 px) is ``patch_size_level0 · (1 − overlap / patch_size)`` when the store
    says so (``overlap`` is in px at the target magnification), else the smallest coordinate spacing
    along either axis (1 px only if the store has a single tile)."""
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    if not len(coords):
        return np.zeros((0, 2), np.float32)
    size0 = attrs.get("patch_size_level0")
    if size0:
        size = attrs.get("patch_size") or size0
        step = np.full(2, float(size0) * (1.0 - float(attrs.get("overlap") or 0) / float(size)))
    else:  # square tiles: the smallest spacing along either axis
        known = [s for s in (_step(coords[:, 0]), _step(coords[:, 1])) if s]
        step = np.full(2, min(known) if known else 1.0)
    return ((coords - coords.min(axis=0)) / step).astype(np.float32)


class _Store(NamedTuple):
    """One feature store as read for a bag."""

    features: np.ndarray  # (N, D) or (N, C, D)
    slide_id: str
    positions: np.ndarray  # (N, 2) tile-grid positions of the slide alone
    channels: tuple[str, ...]  # mIF marker names; () for H&E


def _read_store(row: pd.Series, modality: str) -> _Store:
    """One store in one open; checks the number of dimensions and names the mIF markers."""
    feats, coords, attrs, coord_attrs = read_features(row.path)
    name, ndim = MODALITIES[modality]
    if feats.ndim != ndim and len(feats):
        other = "mif" if modality == "he" else "he"
        raise PathomixInputError(
            f"feature store {row.path} (slide {row.slide_id}) has shape {feats.shape}; {name} features must "
            f"have {ndim} dimensions — is it a {MODALITIES[other][0]} store listed as modality '{modality}'?")
    channels: tuple[str, ...] = ()
    if modality == "mif" and len(feats):
        channels = tuple(str(c) for c in attrs.get("channels") or ())
        if len(channels) != feats.shape[1]:
            log.warning("mIF store %s has %d channels but names %s; calling them channel0..%d", row.path,
                        feats.shape[1], list(channels), feats.shape[1] - 1)
            channels = tuple(f"channel{i}" for i in range(feats.shape[1]))
    return _Store(feats, row.slide_id, tile_positions(coords, coord_attrs), channels)


def _side_by_side(positions: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-slide positions, shifting each slide right of the previous one (one column gap)."""
    out, x0 = [], 0.0
    for pos in positions:
        out.append(pos + np.array([x0, 0.0], np.float32))
        x0 += float(pos[:, 0].max()) + 2.0
    return np.concatenate(out).astype(np.float32)


def load_bags(manifest: pd.DataFrame, patients: Iterable[str], modality: str = "he") -> Bags:
    """Load every non-empty bag of ``patients`` into memory.

    A patient whose stores at a magnification all have 0 tiles has no bag there (logged). All
    stores must share one tile shape (one encoder) and, for mIF, one marker panel.
    """
    name = MODALITIES[modality][0]
    wanted = set(patients)
    bags: dict[str, dict[str, Bag]] = {}
    empty: dict[str, list[str]] = {}
    shape: tuple[int, ...] | None = None
    channels: tuple[str, ...] | None = None
    for (pid, mag), rows in manifest[manifest.patient_id.isin(wanted)].groupby(["patient_id", "mag"]):
        parts = [_read_store(r, modality) for r in rows.itertuples(index=False)]
        parts = [p for p in parts if len(p.features)]
        if not parts:
            empty.setdefault(pid, []).append(mag)
            continue
        shapes = {p.features.shape[1:] for p in parts} | ({shape} if shape else set())
        if len(shapes) > 1:
            raise PathomixInputError(
                f"{name} feature stores have different shapes per tile {sorted(shapes)} (patient {pid}, {mag}); "
                "all slides must be encoded with the same encoder" + (" and the same marker panel"
                                                                       if modality == "mif" else ""))
        shape = shapes.pop()
        for p in parts:
            if channels is not None and p.channels != channels:
                raise PathomixInputError(
                    f"mIF image {p.slide_id} (patient {pid}) has markers {list(p.channels)}, others "
                    f"{list(channels)}; train on one marker panel (same channels in the same order) at a time")
            channels = p.channels
        bags.setdefault(pid, {})[mag] = Bag(
            features=torch.from_numpy(np.concatenate([p.features for p in parts])),
            slide_ids=np.concatenate([np.full(len(p.features), p.slide_id, dtype=object) for p in parts]),
            tile_index=np.concatenate([np.arange(len(p.features), dtype=np.int64) for p in parts]),
            positions=_side_by_side([p.positions for p in parts]),
        )
    for pid, mags in empty.items():
        log.info("patient %s: all %s feature stores at %s have 0 tiles", pid, name, ", ".join(mags))
    n_tiles = [len(b) for by_mag in bags.values() for b in by_mag.values()]
    log.info("loaded %d %s bags of %d patients (%d tiles, shape per tile %s%s)", len(n_tiles), name, len(bags),
             sum(n_tiles), shape, f", markers {list(channels)}" if channels else "")
    return Bags(bags, shape, channels or ())
