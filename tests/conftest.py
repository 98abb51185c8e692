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
