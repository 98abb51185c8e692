"""The real third-party test files in ../shared/data (never copied into the repo; see its MANIFEST.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"


def need(path: Path) -> Path:
    """Skip the test when a shared test file is absent."""
    if not path.exists():
        pytest.skip(f"shared test data {path} is absent (see shared/data/MANIFEST.md)")
    return path
