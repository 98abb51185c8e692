"""Atomic outputs: write to a temporary sibling, then ``os.replace`` (DESIGN.md §5).

A file that exists is whole: a killed job leaves at most a ``.tmp-*`` sibling, never a
half-written store under the real name. A write that fails because the disk is full (h5py and pyarrow raise
``OSError`` errno 28; ``torch.save`` only a ``RuntimeError`` from its zip writer) removes the temporary file
and raises :class:`~pathomix.errors.DiskFullError` naming the file and the free space.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from pathomix.errors import DiskFullError

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it into place.

    On any exception the temporary file is removed and the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; results should follow the umask
    try:
        yield tmp_path
        tmp_path.replace(path)
    except Exception as exc:
        full = is_disk_full(exc, path.parent)  # before `finally` removes the temporary file: it holds the space
        if full and not isinstance(exc, DiskFullError):
            raise DiskFullError(disk_full_message(path)) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


# below this, a failed write on the filesystem is taken as a full disk even when the writer lost the errno
NEARLY_FULL_BYTES = 1 << 20


def existing_folder(path: str | Path) -> Path:
    """``path`` or its nearest ancestor that exists (a results folder may not be made yet)."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    return where


def free_bytes(where: str | Path) -> int:
    """Bytes this process may still write on the filesystem of ``where`` (root may use the reserved blocks)."""
    st = os.statvfs(where)
    return st.f_frsize * (st.f_bfree if os.geteuid() == 0 else st.f_bavail)


def is_disk_full(exc: BaseException, where: str | Path) -> bool:
    """Whether ``exc``, raised while writing into ``where``, means the disk is full: ENOSPC/EDQUOT from the OS
    (h5py, pyarrow, open/write), or any write error while the filesystem has less than 1 MiB left."""
    if isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)):
        return True
    try:
        return free_bytes(where) < NEARLY_FULL_BYTES
    except OSError:
        return False


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_full_message(path: str | Path) -> str:
    """The user's message for a write into ``path`` that failed for want of space."""
    path = Path(path)
    try:
        free = f"{_size(free_bytes(path.parent))} free"
    except OSError:
        free = "free space unknown"
    return (f"disk full: no space left on the device of {path.parent} while writing {path.name} ({free}); "
            "nothing partial was kept. Free space there (or point `results_dir` at a larger disk), then rerun "
            "the same command")


def low_space_warning(where: str | Path, min_free: int = 64 << 20) -> str | None:
    """A warning when the filesystem of ``where`` has less than ``min_free`` bytes left (None otherwise): what
    the workflow prints on the terminal when a run fails, since a job's own log may sit on the full disk."""
    where = existing_folder(where)
    try:
        free, st = free_bytes(where), os.statvfs(where)
    except OSError:
        return None
    if free >= min_free:
        return None
    total = _size(st.f_blocks * st.f_frsize)
    return (f"the disk of {where} is nearly full ({_size(free)} free of {total}): jobs writing there fail "
            "with 'No space left on device' and their logs there may be empty. Free space (or set `results_dir` "
            "to a larger disk), then rerun the same command: outputs of failed jobs were not kept")


def write_parquet(df, path: str | Path) -> None:
    """Write a DataFrame to parquet atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
