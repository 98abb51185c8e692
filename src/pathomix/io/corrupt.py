"""Stores damaged from outside (a copy that stopped, a failing disk): readers that name the file, and a scan.

h5py and pyarrow report a truncated file without its name ("Unable to synchronously open file (truncated
file: eof = …)", "Parquet magic bytes not found in footer"). :func:`open_h5` and :func:`read_parquet` turn
those into a :class:`CorruptStoreError` that names the file and the fix; :func:`scan` checks every store
under a results folder (``python -m pathomix.verify``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import h5py
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pathomix.errors import PathomixInputError

log = logging.getLogger(__name__)

STORE_SUFFIXES = (".h5", ".parquet")


class CorruptStoreError(PathomixInputError):
    """A store that exists but cannot be read: truncated, overwritten or not the format its name says."""


def corrupt_message(path: str | Path, err: BaseException) -> str:
    return (f"{path} is corrupt or truncated and cannot be read ({type(err).__name__}: {err}); delete it and rerun "
            "the same command, which recomputes it (`python -m pathomix.verify RESULTS_DIR --remove` finds and "
            "deletes every such file under a results folder)")


@contextlib.contextmanager
def open_h5(path: str | Path) -> Iterator[h5py.File]:
    """``h5py.File(path, "r")``; a file that cannot be opened or read raises :class:`CorruptStoreError`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        h = h5py.File(path, "r")
    except OSError as err:
        raise CorruptStoreError(corrupt_message(path, err)) from err
    with h:
        try:
            yield h
        except (OSError, KeyError, RuntimeError) as err:  # h5py's read errors of a damaged dataset
            if isinstance(err, KeyError) and "object" not in str(err).lower():
                raise  # a plain missing key is the caller's to report
            raise CorruptStoreError(corrupt_message(path, err)) from err


def read_parquet(path: str | Path, **kwargs) -> pd.DataFrame:
    """``pd.read_parquet``; a file that is not whole raises :class:`CorruptStoreError` naming it."""
    path = Path(path)
    try:
        return pd.read_parquet(path, **kwargs)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as err:
        raise CorruptStoreError(corrupt_message(path, err)) from err


def _check_h5(path: Path) -> None:
    with open_h5(path) as h:
        def visit(_name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and obj.shape != ():
                obj[-1:]  # reads the last chunk: where a truncation or a hole shows
        h.visititems(visit)


def _check_parquet(path: Path) -> None:
    try:
        pq.ParquetFile(path).read()
    except (pa.ArrowException, OSError) as err:
        raise CorruptStoreError(corrupt_message(path, err)) from err


CHECKS = {".h5": _check_h5, ".parquet": _check_parquet}


def check_store(path: str | Path) -> str | None:
    """None when ``path`` (an .h5 or .parquet store) reads whole; else what is wrong."""
    path = Path(path)
    try:
        CHECKS[path.suffix](path)
    except CorruptStoreError as err:
        return str(err)
    return None


def scan(results: str | Path) -> list[tuple[Path, str]]:
    """(path, problem) for every store under ``results`` that does not read whole (temporary files skipped)."""
    stores = [p for p in sorted(Path(results).rglob("*")) if p.suffix in CHECKS and p.is_file()
              and not p.name.startswith(".tmp-")]
    bad = [(p, problem) for p in stores if (problem := check_store(p))]
    log.info("checked %d stores under %s: %d corrupt", len(stores), results, len(bad))
    return bad
