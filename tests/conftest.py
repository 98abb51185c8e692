"""Shared fixtures: the real third-party files in ../shared/data (never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not found: the tests read the real files of ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="module")
def cmu_pixels():
    """Level 0 of CMU-1-Small-Region.svs as openslide reads it ((h, w, 3) uint8)."""
    from shared_files import CMU, need

    from pathomix.io.slide import open_slide

    with open_slide(need(CMU)) as s:
        return s.read_region(0, 0, 0, *s.dimensions)
