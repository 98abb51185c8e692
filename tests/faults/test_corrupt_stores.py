"""Corrupt stores from outside (issue 20, item 4): a truncated h5 or a parquet with a bad footer makes the stage
that reads it fail with a message naming the file and the fix, and ``python -m pathomix.verify`` finds and
removes them so that the same snakemake command recomputes them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from faultlib import assert_same_outputs, genes_only_config, snakemake

from pathomix.errors import PathomixInputError
from pathomix.io.atomic import write_parquet
from pathomix.io.corrupt import CorruptStoreError, read_parquet, scan
from pathomix.io.h5store import COORD_ATTRS, read_coords, read_features, write_features


def _truncate(path: Path, keep: float = 0.6) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


@pytest.fixture
def stores(tmp_path):
    store = tmp_path / "features" / "S1.h5"
    write_features(store, np.zeros((500, 2), np.int64), {a: 1 for a in COORD_ATTRS},
                   np.ones((500, 64), np.float32), {"encoder": "e", "encoder_weights_sha256": "x", "precision": "fp32"})
    table = tmp_path / "eval" / "metrics.parquet"
    write_parquet(pd.DataFrame({"value": np.arange(1000.0)}), table)
    return store, table


def test_a_truncated_store_names_the_file_and_the_fix(stores):
    store, table = stores
    _truncate(store)
    _truncate(table)
    for read, path in ((read_features, store), (read_coords, store), (read_parquet, table)):
        with pytest.raises(CorruptStoreError) as err:
            read(path)
        assert str(path) in str(err.value) and "corrupt or truncated" in str(err.value)
        assert "delete it and rerun" in str(err.value)


def test_a_missing_store_is_not_called_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_parquet(tmp_path / "nothing.parquet")


def test_verify_lists_then_removes_corrupt_stores(stores, tmp_path):
    store, table = stores
    assert scan(tmp_path) == []
    _truncate(store)
    table.write_bytes(b"not a parquet file")
    cmd = [sys.executable, "-m", "pathomix.verify", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1 and str(store) in proc.stderr and str(table) in proc.stderr, proc.stderr
    assert store.exists() and table.exists()  # listing only
    proc = subprocess.run([*cmd, "--remove"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not store.exists() and not table.exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_run_with_a_corrupt_table_fails_clearly_and_verify_then_rerun_restores_it(shared_data, tmp_path):
    ref = genes_only_config(tmp_path / "ref", shared_data, tmp_path / "ref" / "results")
    assert snakemake(ref).returncode == 0
    work = genes_only_config(tmp_path / "run", shared_data, tmp_path / "run" / "results")
    assert snakemake(work).returncode == 0
    results = work / "results"
    damaged = next(results.glob("models/snn/survival/fold1/predictions.parquet"))
    _truncate(damaged)  # a copy that stopped: newer than the metrics, so evaluation reruns and reads it
    proc = snakemake(work)
    assert proc.returncode != 0
    log = "\n".join(p.read_text() for p in (results / "logs").rglob("*.log"))
    assert f"{damaged} is corrupt or truncated" in log and "pathomix.verify" in log
    assert "Traceback" not in log.split(str(damaged))[0][-500:]
    fix = subprocess.run([sys.executable, "-m", "pathomix.verify", str(results), "--remove"],
                         capture_output=True, text=True)
    assert fix.returncode == 0 and str(damaged) in fix.stderr and not damaged.exists()
    proc = snakemake(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_outputs(tmp_path / "ref" / "results", results)


def test_a_store_changed_after_extraction_is_refused_before_training(stores, tmp_path):
    """A copy of a results folder whose store was cut short (``cp -a`` keeps the times, so Snakemake sees nothing
    to redo): training compares each store with the size the manifest recorded and names the changed one."""
    from pathomix.features.manifest import manifest_row
    from pathomix.train.bags import read_manifest

    store, _ = stores  # tmp_path/features/S1.h5 → laid out as results/features/{encoder}/{mag}/
    results = tmp_path / "results"
    target = results / "features" / "enc" / "20x" / "S1.h5"
    target.parent.mkdir(parents=True)
    store.replace(target)
    slide = pd.Series({"slide_id": "S1", "patient_id": "P1", "modality": "he", "cohort": "main"})
    manifest = results / "features" / "enc" / "manifest.parquet"
    write_parquet(pd.DataFrame([manifest_row(target, slide, "20x", results)]), manifest)
    assert len(read_manifest(manifest, ["20x"])) == 1
    stat = target.stat()
    _truncate(target, keep=0.9)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(PathomixInputError, match=r"changed after extraction.*S1\.h5"):
        read_manifest(manifest, ["20x"])
