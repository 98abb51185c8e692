"""A read-only bind mount (needs root; without it, the folder itself with its write bits cleared)."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def read_only_bind(source: Path, target: Path) -> Iterator[Path]:
    """``source`` visible read-only at ``target``: a read-only bind mount as root (root ignores write bits), else
    ``target`` is a symlink to ``source`` with every write bit cleared (restored afterwards)."""
    target.mkdir(parents=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "--bind", str(source), str(target)],
                                                   capture_output=True).returncode == 0
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True, capture_output=True)
        try:
            yield target
        finally:
            subprocess.run(["umount", "-l", str(target)], check=False)
        return
    target.rmdir()
    target.symlink_to(source)
    paths = [source, *source.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield target
    finally:
        for p in reversed(paths):
            p.chmod(modes[p])
