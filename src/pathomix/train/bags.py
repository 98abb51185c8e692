"""Patient bags from the feature manifest: the union of the tiles of all H&E slides (or all mIF
images) of a patient at one magnification (PORPOISE/MCAT), keeping each tile's slide id and row
index. H&E tiles are ``(D,)`` features, mIF tiles ``(C, D)``: one embedding per marker channel,
named by the store's ``channels`` attribute."""

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
# manifest modality → (name in messages, dimensions of one store's features: (N, D) or (N, C, D))
MODALITIES: dict[str, tuple[str, int]] = {"he": ("H&E", 2), "mif": ("mIF", 3)}


@dataclass(frozen=True)
class Bag:
    """One patient's tiles at one magnification, in slide-id order then store-row order."""

    features: torch.Tensor  # (N, D) H&E or (N, C, D) mIF, stored precision, CPU
    slide_ids: np.ndarray  # (N,) str
    tile_index: np.ndarray  # (N,) int64, row in that slide's store

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class Bags:
    """Every loaded bag: ``bags[patient][mag]``; ``tile_shape`` is ``(D,)`` or ``(C, D)`` (None when
    no patient has a tile); ``channels`` the mIF marker names (empty for H&E)."""

    bags: dict[str, dict[str, Bag]]
    tile_shape: tuple[int, ...] | None
    channels: tuple[str, ...] = ()


def read_manifest(path: str | Path, mags: Sequence[str], modality: str = "he") -> pd.DataFrame:
    """Rows of ``modality`` (``he`` | ``mif``) of the manifest at ``mags`` (mag taken from the
    store's folder when absent; a manifest without a ``modality`` column is all H&E)."""
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
        df = df[df.modality == modality]
    elif modality != "he":
        df = df.iloc[:0]
    df = df.assign(patient_id=df.patient_id.astype(str), slide_id=df.slide_id.astype(str))
    return df[df.mag.isin(mags)].sort_values(["patient_id", "mag", "slide_id"]).reset_index(drop=True)


def _read_store(row: pd.Series, modality: str) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """(features, slide id, marker names) of one store; checks the number of dimensions."""
    feats, _, attrs = read_features(row.path)
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
    return feats, row.slide_id, channels


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
        parts = [p for p in parts if len(p[0])]
        if not parts:
            empty.setdefault(pid, []).append(mag)
            continue
        shapes = {f.shape[1:] for f, _, _ in parts} | ({shape} if shape else set())
        if len(shapes) > 1:
            raise PathomixInputError(
                f"{name} feature stores have different shapes per tile {sorted(shapes)} (patient {pid}, {mag}); "
                "all slides must be encoded with the same encoder" + (" and the same marker panel"
                                                                       if modality == "mif" else ""))
        shape = shapes.pop()
        for _, slide, names in parts:
            if channels is not None and names != channels:
                raise PathomixInputError(
                    f"mIF image {slide} (patient {pid}) has markers {list(names)}, others {list(channels)}; "
                    "train on one marker panel (same channels in the same order) at a time")
            channels = names
        bags.setdefault(pid, {})[mag] = Bag(
            features=torch.from_numpy(np.concatenate([f for f, _, _ in parts])),
            slide_ids=np.concatenate([np.full(len(f), s, dtype=object) for f, s, _ in parts]),
            tile_index=np.concatenate([np.arange(len(f), dtype=np.int64) for f, _, _ in parts]),
        )
    for pid, mags in empty.items():
        log.info("patient %s: all %s feature stores at %s have 0 tiles", pid, name, ", ".join(mags))
    n_tiles = [len(b) for by_mag in bags.values() for b in by_mag.values()]
    log.info("loaded %d %s bags of %d patients (%d tiles, shape per tile %s%s)", len(n_tiles), name, len(bags),
             sum(n_tiles), shape, f", markers {list(channels)}" if channels else "")
    return Bags(bags, shape, channels or ())
