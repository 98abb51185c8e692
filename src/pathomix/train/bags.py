"""Patient bags from the feature manifest: the union of the tiles of all H&E slides of a
patient at one magnification (PORPOISE/MCAT), keeping each tile's slide id, row index and
position on the tile grid.

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

import numpy as np
import pandas as pd
import torch

from pathomix.io.errors import PathomixInputError
from pathomix.io.h5store import read_features

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("slide_id", "patient_id", "path")


@dataclass(frozen=True)
class Bag:
    """One patient's tiles at one magnification, in slide-id order then store-row order."""

    features: torch.Tensor  # (N, D), stored precision, CPU
    slide_ids: np.ndarray  # (N,) str
    tile_index: np.ndarray  # (N,) int64, row in that slide's store
    positions: np.ndarray  # (N, 2) float32 (x, y) on the patient's tile grid, in tile units

    def __len__(self) -> int:
        return int(self.features.shape[0])


def read_manifest(path: str | Path, mags: Sequence[str]) -> pd.DataFrame:
    """H&E rows of the manifest at ``mags`` (mag taken from the store's folder when absent)."""
    path = Path(path)
    if not path.exists():
        raise PathomixInputError(f"feature manifest {path} does not exist; run the features stage first")
    df = pd.read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise PathomixInputError(
            f"feature manifest {path} lacks column(s) {missing}; it has {list(df.columns)}")
    if "mag" not in df.columns:  # features/{encoder}/{mag}/{slide_id}.h5
        df["mag"] = [Path(p).parent.name for p in df.path]
    if "modality" in df.columns:
        df = df[df.modality == "he"]
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


def _read_store(row: pd.Series) -> tuple[np.ndarray, str, np.ndarray]:
    feats, coords, _, coord_attrs = read_features(row.path)
    if feats.ndim != 2 and len(feats):
        raise PathomixInputError(
            f"feature store {row.path} (slide {row.slide_id}) has shape {feats.shape}; H&E features "
            "must be (N, D) — is it an mIF store listed as modality 'he'?")
    positions = tile_positions(coords, coord_attrs)
    return feats, row.slide_id, positions


def _side_by_side(positions: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-slide positions, shifting each slide right of the previous one (one column gap)."""
    out, x0 = [], 0.0
    for pos in positions:
        out.append(pos + np.array([x0, 0.0], np.float32))
        x0 += float(pos[:, 0].max()) + 2.0
    return np.concatenate(out).astype(np.float32)


def load_bags(manifest: pd.DataFrame, patients: Iterable[str]
              ) -> tuple[dict[str, dict[str, Bag]], int | None]:
    """Load every non-empty bag of ``patients`` into memory.

    Returns (bags[patient][mag], feature dim D or None when there is no tile at all); a
    patient whose stores at a magnification all have 0 tiles has no bag there (logged).
    """
    wanted = set(patients)
    bags: dict[str, dict[str, Bag]] = {}
    empty: dict[str, list[str]] = {}
    dim: int | None = None
    for (pid, mag), rows in manifest[manifest.patient_id.isin(wanted)].groupby(["patient_id", "mag"]):
        parts = [_read_store(r) for r in rows.itertuples(index=False)]
        parts = [(f, s, pos) for f, s, pos in parts if len(f)]
        if not parts:
            empty.setdefault(pid, []).append(mag)
            continue
        dims = {f.shape[1] for f, _, _ in parts} | ({dim} if dim else set())
        if len(dims) > 1:
            raise PathomixInputError(
                f"feature stores have different dimensions {sorted(dims)} (patient {pid}, {mag}); "
                "all slides must be encoded with the same encoder")
        dim = dims.pop()
        bags.setdefault(pid, {})[mag] = Bag(
            features=torch.from_numpy(np.concatenate([f for f, _, _ in parts])),
            slide_ids=np.concatenate([np.full(len(f), s, dtype=object) for f, s, _ in parts]),
            tile_index=np.concatenate([np.arange(len(f), dtype=np.int64) for f, _, _ in parts]),
            positions=_side_by_side([pos for _, _, pos in parts]),
        )
    for pid, mags in empty.items():
        log.info("patient %s: all H&E feature stores at %s have 0 tiles", pid, ", ".join(mags))
    n_tiles = [len(b) for by_mag in bags.values() for b in by_mag.values()]
    log.info("loaded %d bags of %d patients (%d tiles, D=%s)", len(n_tiles), len(bags), sum(n_tiles), dim)
    return bags, dim
