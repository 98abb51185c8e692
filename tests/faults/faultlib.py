"""Helpers of the fault-injection tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml
from snake import snakemake_cmd, workflow_env

from pathomix.io.convert import convert, read_table, write

ROOT = Path(__file__).resolve().parents[2]


def fill(where: Path, leave: int) -> Path:
    """Fill the filesystem of ``where`` up to ``leave`` bytes free with one file; delete it to free the space."""
    st = os.statvfs(where)
    free = st.f_frsize * st.f_bfree
    filler = where / "filler.bin"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler


def genes_only_config(work: Path, shared_data: Path, results: Path) -> Path:
    """A small genes-only cohort (40 TCGA LUAD patients, snn on survival, 2 folds) with its config.yaml in
    ``work``: a whole Snakemake run to the report in about 30 s on 2 cores."""
    luad = read_table(shared_data / "genomics" / "tcga_luad_all_clean.csv.zip")
    cases = luad.case_id.drop_duplicates().iloc[:40]
    clinical, genes = write(convert(luad[luad.case_id.isin(cases)], "luad"), work / "cohort")
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg.update(slides=None, clinical=str(clinical), genes=str(genes), mif_channels=None,
               results_dir=str(results), demo={"enabled": False})
    cfg["train"].update(models=["snn"], tasks=["survival"], epochs=2, variants={}, select={})
    cfg["splits"].update(n_folds=2)
    cfg["evaluate"].update(bootstrap=0)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return work


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "2",
                           "--keep-going", *args], cwd=work, env=workflow_env(PYTHONPATH=str(ROOT / "src")),
                          capture_output=True, text=True, timeout=600)


def outputs(results: Path) -> dict[str, pd.DataFrame]:
    return {str(p.relative_to(results)): pd.read_parquet(p) for p in sorted(results.rglob("*.parquet"))}


def assert_same_outputs(want_dir: Path, got_dir: Path) -> None:
    """Every parquet table of two results folders equal (timings aside): the rerun matches an undisturbed run."""
    want, got = outputs(want_dir), outputs(got_dir)
    assert set(want) == set(got), set(want) ^ set(got)
    for name in want:  # file hashes differ with the folder (stores are stamped with their inputs' paths)
        cols = [c for c in want[name].columns if c not in ("seconds", "time_s", "wall_s", "sha256")]
        if "/batches/" in name:  # a batch job's marker is its run's log (paths, status, times): which slides
            cols = ["slide_id", "mag"]
        pd.testing.assert_frame_equal(want[name][cols], got[name][cols], obj=name)
    stores = sorted(p.relative_to(want_dir) for p in want_dir.rglob("*.h5"))
    assert stores == sorted(p.relative_to(got_dir) for p in got_dir.rglob("*.h5"))
    for rel in stores:
        with h5py.File(want_dir / rel, "r") as a, h5py.File(got_dir / rel, "r") as b:
            for name in ("coords", "features"):
                if name in a:
                    np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=str(rel))


def mini_demo_config(work: Path, results: Path | None = None) -> Path:
    """The embedded demo cut down to 6 patients without mIF (tiling, extraction at 20x, abmil and snn on the
    diagnosis, 2 folds): slides through every stage to the report in about a minute on 2 cores."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["demo"].update(dir=str(work / "demo_data"), n_patients=6, n_mif=0)
    cfg.update(slides=str(work / "demo_data" / "slides.tsv"), clinical=str(work / "demo_data" / "clinical.tsv"),
               genes=str(work / "demo_data" / "genes.parquet"), mif_channels=None,
               results_dir=str(results or work / "results"))
    cfg["tiling"].update(magnifications={"20x": 0.5})
    cfg["features"].update(num_workers=0)
    cfg["train"].update(models=["abmil", "snn"], tasks=["diagnosis"], epochs=3, variants={}, select={})
    cfg["splits"].update(n_folds=2)
    cfg["evaluate"].update(bootstrap=0)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return work
