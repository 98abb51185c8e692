"""Bad slides in a real Snakemake run: clear errors, no partial outputs, others finish (--keep-going).

A small cohort of the real files in ../shared/data: a good H&E slide (also under a path
with spaces and shell metacharacters), a slide smaller than one tile, a file that is not a
slide, one that does not open, and one with an implausible MPP. Tiling and extraction only,
at a low magnification so that it runs in under a minute on 2 CPU cores.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml
from snake import snakemake_cmd, workflow_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # runs Snakemake for real (tiling + extraction of a small cohort)


@pytest.fixture(scope="module")
def bad_cohort(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("bad-cohort")
    odd = work / "my slides; echo pwned $(touch HACKED)"
    odd.mkdir()
    shutil.copy(shared_data / "wsi" / "CMU-1-Small-Region.svs", odd / "a b&c.svs")
    shutil.copy(shared_data / "openslide-fixtures" / "boxes.tiff", work / "boxes-copy.tiff")  # one file, one id
    rows = [
        ("good", "P1", str(shared_data / "wsi" / "CMU-1-Small-Region.svs"), ""),
        ("odd path", "P2", str(odd / "a b&c.svs"), ""),
        ("tiny", "P3", str(shared_data / "openslide-fixtures" / "small.svs"), ""),
        ("boxes-ok", "P4", str(shared_data / "openslide-fixtures" / "boxes.tiff"), "2.0"),
        ("not-a-slide", "P5", str(shared_data / "wsi" / "broken.svs"), ""),
        ("unopenable", "P6", str(shared_data / "openslide-fixtures" / "unopenable.tiff"), ""),
        ("no-mpp", "P7", str(work / "boxes-copy.tiff"), ""),
    ]
    pd.DataFrame(rows, columns=["slide_id", "patient_id", "path", "mpp"]).assign(modality="he") \
        .to_csv(work / "slides.tsv", sep="\t", index=False)
    pd.DataFrame({"patient_id": [f"P{i}" for i in range(1, 8)], "idh": "wt"}) \
        .to_csv(work / "clinical.tsv", sep="\t", index=False)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())  # a user's own config.yaml in the work dir
    cfg.update(slides=str(work / "slides.tsv"), clinical=str(work / "clinical.tsv"), genes=None, mif_channels=None,
               results_dir=str(work / "results"), demo={"enabled": False})
    cfg["tiling"].update(magnifications={"5x": 2.0}, tile_px=64)
    cfg["features"].update(encoder="resnet18_trunc", num_workers=0)
    cfg["slide_batches"] = {"size": 0}  # one job per slide (tests/test_batch.py: a bad slide in a batch job)
    # histology only (this cohort has no gene table), at the one magnification tiled here
    cfg["train"].update(models=["abmil"], variants={"abmil": {"mags": ["5x"]}})
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = workflow_env()
    target = str(work / "results" / "features" / "resnet18_trunc" / "manifest.parquet")
    proc = subprocess.run([*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "-d", str(work),
                           target, "--cores", "2", "--keep-going"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900)
    return work, proc


def _feature(work: Path, slide: str) -> Path:
    return work / "results" / "features" / "resnet18_trunc" / "5x" / f"{slide}.h5"


def test_good_slides_finish_despite_bad_ones(bad_cohort):
    work, proc = bad_cohort
    assert proc.returncode != 0  # the bad slides fail the run ...
    for slide in ("good", "odd path", "boxes-ok"):  # ... but every good slide is done
        with h5py.File(_feature(work, slide)) as h:
            assert h["features"].shape[0] > 0, slide
    with h5py.File(_feature(work, "tiny")) as h:  # smaller than one tile: a valid empty store
        assert h["features"].shape[0] == 0
    assert not (work / "HACKED").exists() and not (work / "my slides; echo pwned $(touch HACKED)" / "HACKED").exists()


@pytest.mark.parametrize(("slide", "message"), [
    ("not-a-slide", "not a whole-slide image"),
    ("unopenable", "could not be opened"),
    ("no-mpp", "add an `mpp` column"),
])
def test_bad_slides_fail_clearly_and_leave_nothing(bad_cohort, slide, message):
    work, _ = bad_cohort
    tiles = work / "results" / "tiles" / "5x"
    assert not (tiles / f"{slide}.h5").exists()
    assert not list(tiles.glob(f".tmp-{slide}.h5*"))
    assert not _feature(work, slide).exists()
    log = (work / "results" / "logs" / "tile" / f"{slide}.log").read_text()
    assert message in log and f"slide {slide}" in log
