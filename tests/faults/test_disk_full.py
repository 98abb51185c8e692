"""Disk full (issue 20, item 1), on a real small tmpfs: a feature store, a checkpoint, a parquet table and a
whole Snakemake run. Each failed write says the disk is full and where, leaves nothing under its final name and
no temporary file, and a rerun after space is freed gives the outputs of an undisturbed run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from faultlib import assert_same_outputs, fill, genes_only_config, snakemake

from pathomix.errors import DiskFullError
from pathomix.io.atomic import write_parquet
from pathomix.io.h5store import COORD_ATTRS, write_features
from pathomix.train.outputs import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


EXTRACT = {"encoder": "resnet18_trunc", "num_workers": 0, "allow_random_init": True}


def _feature_store(path: Path) -> None:
    coords = np.arange(4000, dtype=np.int64).reshape(-1, 2)
    write_features(path, coords, {a: 1 for a in COORD_ATTRS}, np.ones((2000, 256), np.float32),
                   {"encoder": "e", "encoder_weights_sha256": "random-init", "precision": "fp32"})


WRITERS = {
    "feature store": ("S1.h5", _feature_store),
    "checkpoint": ("checkpoint.pt", lambda p: save_checkpoint(p, {"model_state": {"w": torch.ones(300_000)}})),
    "parquet table": ("predictions.parquet", lambda p: write_parquet(pd.DataFrame({"x": np.arange(300_000.0)}), p)),
}


@pytest.mark.parametrize("what", list(WRITERS))
def test_a_write_on_a_full_disk_says_so_and_leaves_nothing(tmpfs, what):
    name, writer = WRITERS[what]
    disk = tmpfs("disk", "2m")
    filler = fill(disk, leave=64 << 10)
    target = disk / "out" / name
    with pytest.raises(DiskFullError) as err:
        writer(target)
    msg = str(err.value)
    assert "disk full" in msg and str(target.parent) in msg and name in msg and "rerun" in msg, msg
    assert sorted(p.name for p in (disk / "out").iterdir()) == []  # no final file, no .tmp-* sibling
    filler.unlink()
    writer(target)  # space freed: the same write completes
    assert target.exists()


def test_extraction_on_a_full_disk_exits_cleanly_not_with_a_segfault(tmpfs, shared_data, tmp_path):
    """h5py failing to close a file on a full disk used to end the process with SIGSEGV at interpreter teardown."""
    slide = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    tiles = tmp_path / "tiles.h5"
    py = [sys.executable, "-m"]
    subprocess.run([*py, "pathomix.tiling", "--slide-id", "S1", "--path", str(slide), "--modality", "he",
                    "--mag", "20x", "--target-mpp", "0.5", "--out", str(tiles), "--qc", str(tmp_path / "qc.png")],
                   check=True, capture_output=True)
    disk = tmpfs("results", "1m")
    fill(disk, leave=8 << 10)
    out = disk / "features" / "S1.h5"
    proc = subprocess.run([*py, "pathomix.features", "--slide-id", "S1", "--path", str(slide), "--tiles", str(tiles),
                           "--out", str(out), "--params", json.dumps(EXTRACT)],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "disk full" in proc.stderr and str(out.parent) in proc.stderr
    assert not any((disk / "features").iterdir())


@pytest.mark.slow
def test_a_run_that_fills_its_disk_says_so_and_the_rerun_matches_an_undisturbed_run(tmpfs, shared_data, tmp_path):
    ref = genes_only_config(tmp_path / "ref", shared_data, tmp_path / "ref" / "results")
    assert snakemake(ref).returncode == 0
    disk = tmpfs("disk", "8m")
    work = genes_only_config(tmp_path / "full", shared_data, disk / "results")
    filler = fill(disk, leave=400 << 10)  # room for the splits and genes tables, not for every checkpoint
    proc = snakemake(work)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "pathomix: the disk of" in out and "nearly full" in out, out[-4000:]
    left = [p for p in (disk / "results").rglob("*") if p.name.startswith(".tmp-")]
    assert not left, left
    filler.unlink()
    proc = snakemake(work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_outputs(tmp_path / "ref" / "results", disk / "results")
