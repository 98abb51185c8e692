"""Patient bags from the feature manifest: the union of the tiles of all H&E slides of a
patient at one magnification (PORPOISE/MCAT), keeping each tile's slide id and row index."""

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


def _read_store(row: pd.Series) -> tuple[np.ndarray, str]:
    feats, _, _ = read_features(row.path)
    if feats.ndim != 2 and len(feats):
        raise PathomixInputError(
            f"feature store {row.path} (slide {row.slide_id}) has shape {feats.shape}; H&E features "
            "must be (N, D) — is it an mIF store listed as modality 'he'?")
    return feats, row.slide_id


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
        parts = [(f, s) for f, s in parts if len(f)]
        if not parts:
            empty.setdefault(pid, []).append(mag)
            continue
        dims = {f.shape[1] for f, _ in parts} | ({dim} if dim else set())
        if len(dims) > 1:
            raise PathomixInputError(
                f"feature stores have different dimensions {sorted(dims)} (patient {pid}, {mag}); "
                "all slides must be encoded with the same encoder")
        dim = dims.pop()
        bags.setdefault(pid, {})[mag] = Bag(
            features=torch.from_numpy(np.concatenate([f for f, _ in parts])),
            slide_ids=np.concatenate([np.full(len(f), s, dtype=object) for f, s in parts]),
            tile_index=np.concatenate([np.arange(len(f), dtype=np.int64) for f, _ in parts]),
        )
    for pid, mags in empty.items():
        log.info("patient %s: all H&E feature stores at %s have 0 tiles", pid, ", ".join(mags))
    n_tiles = [len(b) for by_mag in bags.values() for b in by_mag.values()]
    log.info("loaded %d bags of %d patients (%d tiles, D=%s)", len(n_tiles), len(bags), sum(n_tiles), dim)
    return bags, dim
