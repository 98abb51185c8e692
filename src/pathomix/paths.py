"""The one place where result paths are built (DESIGN.md §4).

Both the Snakemake rules and the stage code call these, so a layout change is made once.
Magnifications are written like ``20x``; folds like ``fold0``.
"""

from __future__ import annotations

from pathlib import Path


def mag_name(mag: str | float) -> str:
    """``20`` or ``"20"`` or ``"20x"`` → ``"20x"``."""
    s = str(mag).rstrip("x")
    return f"{float(s):g}x"


def tiles(results: str | Path, mag: str, slide_id: str) -> Path:
    return Path(results) / "tiles" / mag_name(mag) / f"{slide_id}.h5"


def tile_qc(results: str | Path, mag: str, slide_id: str) -> Path:
    return Path(results) / "tiles" / mag_name(mag) / "qc" / f"{slide_id}.png"


def tile_batch(results: str | Path, batch: int | str) -> Path:
    """Marker of a tiling batch job (large cohorts): the slides and stores it covers."""
    return Path(results) / "tiles" / "batches" / f"{batch}.parquet"


def feature_batch(results: str | Path, encoder: str, batch: int | str) -> Path:
    """Marker of an extraction batch job (large cohorts)."""
    return Path(results) / "features" / encoder / "batches" / f"{batch}.parquet"


def features(results: str | Path, encoder: str, mag: str, slide_id: str) -> Path:
    return Path(results) / "features" / encoder / mag_name(mag) / f"{slide_id}.h5"


def manifest(results: str | Path, encoder: str) -> Path:
    return Path(results) / "features" / encoder / "manifest.parquet"


def hvg(results: str | Path) -> Path:
    return Path(results) / "genes" / "hvg.parquet"


def subspaces(results: str | Path) -> Path:
    return Path(results) / "genes" / "subspaces.parquet"


def folds(results: str | Path) -> Path:
    return Path(results) / "splits" / "folds.parquet"


def model_dir(results: str | Path, model: str, task: str, fold: int | str) -> Path:
    return Path(results) / "models" / model / task / f"fold{fold}"


def metrics(results: str | Path) -> Path:
    return Path(results) / "eval" / "metrics.parquet"


def figures(results: str | Path) -> Path:
    return Path(results) / "eval" / "figures"
