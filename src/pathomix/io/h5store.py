"""CLAM/TRIDENT-compatible h5 stores (DESIGN.md §5).

``coords``: int64 (N, 2) level-0 top-left (x, y), with TRIDENT's and CLAM's attributes and
ours. ``features``: float (N, D) for H&E or (N, C, D) for mIF, with ``encoder``,
``encoder_weights_sha256`` and ``precision``. Stores are written atomically; a store damaged from outside
reads as a :class:`~pathomix.io.corrupt.CorruptStoreError` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pathomix.errors import PathomixInputError
from pathomix.io.atomic import atomic_path
from pathomix.io.corrupt import open_h5

COORD_ATTRS = (
    "patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap",
    "name", "level0_width", "level0_height", "patch_level", "downsample",
    "target_mpp", "level0_mpp", "slide_id",
)
FEATURE_ATTRS = ("encoder", "encoder_weights_sha256", "precision")


def _set_attrs(ds: h5py.Dataset, attrs: Mapping[str, Any]) -> None:
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, list | tuple) and v and isinstance(v[0], str):
            ds.attrs[k] = np.array(v, dtype=h5py.string_dtype())
        else:
            ds.attrs[k] = v


def write_coords(path: str | Path, coords: np.ndarray, attrs: Mapping[str, Any],
                 extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write a coords store; ``attrs`` must hold every name in :data:`COORD_ATTRS`.

    ``extra`` datasets (e.g. ``skipped_coords``) are stored beside ``coords``.
    """
    missing = [a for a in COORD_ATTRS if a not in attrs]
    if missing:
        raise ValueError(f"coords attributes missing: {missing}")
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h:
        _set_attrs(h.create_dataset("coords", data=coords), attrs)
        for name, arr in (extra or {}).items():
            h.create_dataset(name, data=arr)


def read_coords(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read ``coords`` and its attributes from a CLAM/TRIDENT/pathomix store."""
    with open_h5(path) as h:
        if "coords" not in h:
            raise PathomixInputError(f"{path} has no 'coords' dataset; is it a CLAM/TRIDENT/pathomix store?")
        ds = h["coords"]
        return ds[:].astype(np.int64), {k: _decode(v) for k, v in ds.attrs.items()}


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.dtype.kind in "OS":
        return [x.decode() if isinstance(x, bytes) else str(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_features(path: str | Path, coords: np.ndarray, coord_attrs: Mapping[str, Any],
                   features: np.ndarray, feature_attrs: Mapping[str, Any],
                   extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write a feature store (coords + features). Refuses non-finite features, naming the tile.

    ``extra`` datasets (e.g. ``skipped_coords``) are stored beside ``coords`` and ``features``.
    """
    feats = np.asarray(features)
    if feats.dtype not in (np.float16, np.float32):
        raise ValueError(f"features must be float16/float32, got {feats.dtype}")
    if len(feats) != len(coords):
        raise ValueError(f"{len(feats)} feature rows for {len(coords)} coords")
    if feats.size and not np.isfinite(feats).all():
        bad = np.where(~np.isfinite(feats.reshape(len(feats), -1)).all(axis=1))[0]
        x, y = coords[bad[0]]
        raise PathomixInputError(
            f"slide {coord_attrs.get('slide_id')}: non-finite features for {len(bad)} tile(s), first at "
            f"tile {bad[0]} (x={x}, y={y}), so {path} was not written; check the slide region there and the "
            "encoder precision (`features.precision: fp32` avoids fp16 overflow)"
        )
    missing = [a for a in FEATURE_ATTRS if a not in feature_attrs]
    if missing:
        raise ValueError(f"feature attributes missing: {missing}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h:
        _set_attrs(h.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2)), coord_attrs)
        _set_attrs(h.create_dataset("features", data=feats), feature_attrs)
        for name, arr in (extra or {}).items():
            h.create_dataset(name, data=arr)


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """→ (features, coords, feature attrs, coords attrs), in one open. Works on CLAM/TRIDENT stores
    too (a store without ``coords`` gives zeros and no coords attrs)."""
    with open_h5(path) as h:
        if "features" not in h:
            raise PathomixInputError(f"{path} has no 'features' dataset; is it a feature store?")
        ds = h["features"]
        feats = ds[:]
        attrs = {k: _decode(v) for k, v in ds.attrs.items()}
        if "coords" in h:
            coords = h["coords"][:].astype(np.int64)
            coord_attrs = {k: _decode(v) for k, v in h["coords"].attrs.items()}
        else:
            coords, coord_attrs = np.zeros((len(feats), 2), np.int64), {}
    return feats, coords, attrs, coord_attrs
