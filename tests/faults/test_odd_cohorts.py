"""Tiny and odd cohorts end to end (issue 20, item 6): each either completes with n/a metrics and the reason
in the log, or fails at planning with a clear message — never a crash in the middle of training or evaluation.

Genes-only (40 TCGA LUAD patients): every patient censored; events but no comparable pair; a constant and an
all-NaN gene column. Histology (the demo cut to 6 patients): one diagnosis class for all, so every fold's test
set has one class, and a patient whose only slide has no tissue. At planning: one file under two slide ids,
and a model reading a magnification that tiling does not make."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from faultlib import ROOT, genes_only_config, mini_demo_config, snakemake
from snake import snakemake_cmd, workflow_env

from pathomix.demo.he import write_pyramidal_tiff

pytestmark = pytest.mark.slow


def _edit(path: Path, fn) -> None:
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep="\t")
    df = fn(df)
    df.to_parquet(path, index=False) if path.suffix == ".parquet" else df.to_csv(path, sep="\t", index=False)


def _all_censored(c: pd.DataFrame) -> pd.DataFrame:
    return c.assign(event=0)


def _no_comparable_pair(c: pd.DataFrame) -> pd.DataFrame:
    """Events only at the longest times: no event precedes another patient's time."""
    c = c.assign(event=0)
    late = c.index[:3]
    c.loc[late, "survival_months"] = c.survival_months.max() + 1.0
    c.loc[late, "event"] = 1
    return c


def _odd_genes(g: pd.DataFrame) -> pd.DataFrame:
    genes = [c for c in g.columns if c != "patient_id"]
    return g.assign(**{genes[0]: 5.0, genes[1]: np.nan})  # a constant and an all-NaN gene


def _log_text(results: Path) -> str:
    return "\n".join(p.read_text() for p in (results / "logs").rglob("*.log"))


@pytest.mark.parametrize(("clinical", "reason"), [
    (_all_censored, "no observed event: all 20 patients censored"),
    (_no_comparable_pair, "no comparable pair"),
])
def test_genes_only_survival_without_a_usable_event_gives_na_with_the_reason(shared_data, tmp_path, clinical, reason):
    work = genes_only_config(tmp_path, shared_data, tmp_path / "results")
    _edit(work / "cohort" / "clinical.tsv", clinical)
    _edit(work / "cohort" / "genes.parquet", _odd_genes)
    proc = snakemake(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = pd.read_parquet(work / "results" / "eval" / "metrics.parquet")
    assert m[(m.metric == "c_index")].value.isna().all()
    assert reason in _log_text(work / "results")
    assert "n/a" in (work / "results" / "eval" / "summary.csv").read_text()


def test_one_class_and_a_patient_without_tissue_complete_with_na(tmp_path):
    work = mini_demo_config(tmp_path)
    demo = tmp_path / "demo_data"
    subprocess.run([sys.executable, "-m", "pathomix.demo", "--out", str(demo), "--n-patients", "6", "--n-mif", "0"],
                   check=True, capture_output=True)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["demo"]["enabled"] = False
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    _edit(demo / "clinical.tsv", lambda c: c.assign(idh="mut", codel_1p19q="codel"))  # all oligodendroglioma
    slides = pd.read_csv(demo / "slides.tsv", sep="\t")
    blank = slides[slides.patient_id == "DEMO-002"].path.iloc[0]
    write_pyramidal_tiff(demo / blank, np.full((1024, 1536, 3), 242, np.uint8))  # glass only
    proc = snakemake(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = pd.read_parquet(work / "results" / "eval" / "metrics.parquet")
    assert m[(m.model == "abmil") & (m.metric == "auc")].value.isna().all()
    logs = _log_text(work / "results")
    assert "one class only among" in logs
    assert "whose feature stores all have 0 tiles; skipped (e.g. ['DEMO-002'])" in logs


def _dry_run(work: Path) -> subprocess.CompletedProcess:
    """``snakemake -n``, its stdout and stderr together (Snakemake prints parse errors on stdout)."""
    return subprocess.run([*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "-d", str(work), "-n"], cwd=work,
                          env=workflow_env(PYTHONPATH=str(ROOT / "src")), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def test_one_file_under_two_slide_ids_fails_at_planning(shared_data, tmp_path):
    slide = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    pd.DataFrame([{"slide_id": "S1", "patient_id": "P1", "path": str(slide), "modality": "he"},
                  {"slide_id": "S1-again", "patient_id": "P2", "path": str(slide), "modality": "he"}]) \
        .to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    pd.DataFrame({"patient_id": ["P1", "P2"], "idh": "wt"}).to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg.update(slides="slides.tsv", clinical="clinical.tsv", genes=None, mif_channels=None, demo={"enabled": False})
    cfg["train"].update(models=["abmil"], variants={})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _dry_run(tmp_path)
    assert proc.returncode != 0
    assert "slides ['S1', 'S1-again'] (patients ['P1', 'P2']) all point at the same file" in proc.stdout, \
        proc.stdout[-2000:]


def test_a_magnification_no_tiling_makes_fails_at_planning(tmp_path):
    work = mini_demo_config(tmp_path)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["tiling"]["magnifications"] = {"10x": 1.0}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _dry_run(work)
    assert proc.returncode != 0
    want = "model abmil reads tiles at 20x (its first magnification), but tiling.magnifications has ['10x']"
    assert want in proc.stdout, proc.stdout[-2000:]
