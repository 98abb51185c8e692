"""Fault injection (issue 20): the real mechanism wherever this machine allows it.

``tmpfs(path, size)`` mounts a small tmpfs (a disk that can fill up); it needs root and skips otherwise.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs (a disk that fills up) needs root to mount; run as root to inject ENOSPC")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the disk-full tests need one")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def tmpfs(tmp_path):
    """A factory: ``tmpfs("results", "4m")`` → a mounted tmpfs under tmp_path, unmounted at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda name, size: stack.enter_context(mounted_tmpfs(tmp_path / name, size))
