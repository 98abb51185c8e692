"""Read-only inputs and hostile strings (issue 20, items 7 and 8), in one small demo run through every rule:
slide ids, patient ids and paths with spaces, quotes, ``$()``, backticks, ``;``, ``&``, ``|``, unicode and
leading dashes, with the inputs on a read-only mount. The run completes, nothing is executed that a name
spells out, and nothing is written next to the inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from faultlib import ROOT, snakemake
from faults_mount import read_only_bind

pytestmark = pytest.mark.slow

# one per slide: every shell metacharacter a sheet can bring, and names that look like options
PREFIXES = ["-x 'a' $(touch pwned) ", 'DEMO;"b" `touch pwned` ', "ü ñ & | > ", "--help ", "* ? [a] ~ ", "#c ! ",
            "-- "]


def _hostile_cohort(src: Path, dst: Path) -> dict[str, str]:
    """Copy the demo cohort ``src`` to ``dst`` with hostile slide ids, patient ids and file names."""
    slides = pd.read_csv(src / "slides.tsv", sep="\t", dtype=str)
    patients = {p: f"{PREFIXES[i % len(PREFIXES)]}{p}" for i, p in enumerate(slides.patient_id.unique())}
    ids = {s: f"{PREFIXES[-1 - i % len(PREFIXES)]}{s}" for i, s in enumerate(slides.slide_id)}
    (dst / "slides $(touch pwned)").mkdir(parents=True)
    rows = []
    for r in slides.itertuples():
        name = f"slides $(touch pwned)/{ids[r.slide_id]}.tiff"
        shutil.copyfile(src / r.path, dst / name)
        rows.append({"slide_id": ids[r.slide_id], "patient_id": patients[r.patient_id], "path": name,
                     "modality": r.modality})
    pd.DataFrame(rows).to_csv(dst / "slides.tsv", sep="\t", index=False)
    clinical = pd.read_csv(src / "clinical.tsv", sep="\t", dtype={"patient_id": str})
    clinical.assign(patient_id=clinical.patient_id.map(patients)).to_csv(dst / "clinical.tsv", sep="\t", index=False)
    genes = pd.read_parquet(src / "genes.parquet")
    genes.assign(patient_id=genes.patient_id.map(patients)).to_parquet(dst / "genes.parquet", index=False)
    return ids


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def test_hostile_names_on_read_only_inputs_go_through_every_rule(tmp_path):
    demo = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "pathomix.demo", "--out", str(demo), "--n-patients", "6", "--n-mif", "0"],
                   check=True, capture_output=True)
    staging = tmp_path / "staging"
    ids = _hostile_cohort(demo, staging)
    inputs = tmp_path / "in puts; 'q' \"d\" $(touch pwned) é"
    before = _listing(staging)
    with read_only_bind(staging, inputs) as mounted:
        work = tmp_path / "work; $(touch pwned)"
        work.mkdir()
        cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
        cfg.update(slides=str(mounted / "slides.tsv"), clinical=str(mounted / "clinical.tsv"),
                   genes=str(mounted / "genes.parquet"), mif_channels=None, demo={"enabled": False},
                   results_dir=str(work / "res ults `touch pwned`"))
        cfg["tiling"].update(magnifications={"20x": 0.5})
        cfg["features"].update(num_workers=0)
        cfg["train"].update(models=["abmil", "snn"], tasks=["diagnosis"], epochs=2, variants={}, select={})
        cfg["splits"].update(n_folds=2)
        cfg["evaluate"].update(bootstrap=0)
        (work / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
        proc = snakemake(work)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert _listing(mounted) == before  # nothing written next to the inputs
    results = work / "res ults `touch pwned`"
    manifest = pd.read_parquet(next(results.glob("features/*/manifest.parquet")))
    assert set(manifest.slide_id) == set(ids.values())
    metrics = pd.read_parquet(results / "eval" / "metrics.parquet")
    assert {"abmil", "snn"} <= set(metrics.model)
    assert (results / "eval" / "heatmaps").exists()
    assert not [p for p in tmp_path.rglob("pwned")] and not Path("pwned").exists()
