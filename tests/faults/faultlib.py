"""Helpers of the fault-injection tests."""

from __future__ import annotations

import os
from pathlib import Path


def fill(where: Path, leave: int) -> Path:
    """Fill the filesystem of ``where`` up to ``leave`` bytes free with one file; delete it to free the space."""
    st = os.statvfs(where)
    free = st.f_frsize * st.f_bfree
    filler = where / "filler.bin"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler
