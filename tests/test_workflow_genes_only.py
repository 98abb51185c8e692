"""A genes-only cohort through Snakemake: 60 TCGA LUAD patients, no slides, snn on survival.

The cohort is made by ``pathomix.io.convert`` from the real PORPOISE table of ../shared/data;
``slides: null`` must plan no tiling or extraction, stratify the folds on the event, and end
in metrics, the eval summary and a report without broken section links (about 30 s on 2 cores).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snake import snakemake_cmd, workflow_env

from pathomix.io.convert import convert, read_table, write

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # runs Snakemake for real (genes-only cohort to the report)


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = workflow_env(PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "-d", str(work),
                           "--cores", "2", *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def genes_only_run(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("genes-only")
    luad = read_table(shared_data / "genomics" / "tcga_luad_all_clean.csv.zip")
    cases = luad.case_id.drop_duplicates().iloc[:60]
    clinical, genes = write(convert(luad[luad.case_id.isin(cases)], "luad"), work / "cohort")
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())  # a user's own config.yaml in the work dir
    cfg.update(slides=None, clinical=str(clinical), genes=str(genes), mif_channels=None,
               results_dir=str(work / "results"), demo={"enabled": False})
    # snn-wide and the selection between it and snn (train.select), and the clinical baseline on age
    cfg["train"].update(models=["snn", "snn-wide", "cox_clinical"], tasks=["survival"], epochs=3,
                        variants={"snn-wide": {"model": "snn", "hidden": 64}, "cox_clinical": {"covariates": ["age"]}},
                        select={"snn-best": {"candidates": ["snn", "snn-wide"]}})
    cfg["splits"].update(n_folds=2)
    cfg["evaluate"].update(bootstrap=0)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(work)
    if proc.returncode:
        logs = "\n".join(p.read_text()[-2000:] for p in (work / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"genes-only run failed:\n{proc.stderr[-5000:]}\n{logs}")
    return work, proc


def test_genes_only_runs_to_metrics_without_slide_stages(genes_only_run):
    work, _ = genes_only_run
    res = work / "results"
    m = pd.read_parquet(res / "eval" / "metrics.parquet")
    c = m[(m.model == "snn") & (m.task == "survival") & (m.metric == "c_index")]
    assert set(c.fold) == {"0", "1", "all"} and c.value.between(0, 1).all()
    assert (res / "eval" / "summary.csv").exists() and (res / "eval" / "provenance.html").exists()
    assert not (res / "tiles").exists() and not (res / "features").exists()
    ran = {p.stem if p.suffix else p.name for p in (res / "benchmarks").iterdir()}  # one per rule that ran
    # (train_folds jobs write their benchmark under train/ too)
    assert ran == {"hvg", "splits", "train", "select", "evaluate", "gene_view", "provenance"}
    assert (res / "genes" / "fold1" / "hvg.parquet").exists()  # gene selection per fold
    folds = pd.read_parquet(res / "splits" / "folds.parquet")
    assert folds.patient_id.nunique() == 60
    assert "stratifying on event instead" in (res / "logs" / "splits.log").read_text()


def test_selection_and_clinical_baseline_are_evaluated(genes_only_run):
    """train.select chooses per fold on validation patients and reports the chosen candidate's test numbers;
    cox_clinical on age sits in the comparison like any model."""
    work, _ = genes_only_run
    res = work / "results"
    chosen = pd.read_csv(res / "eval" / "selection.csv")
    assert list(chosen.fold) == [0, 1] and set(chosen.chosen) <= {"snn", "snn-wide"}
    assert {"val_c_index snn", "val_c_index snn-wide"} <= set(chosen.columns)
    m = pd.read_parquet(res / "eval" / "metrics.parquet")
    c = m[(m.metric == "c_index") & (m.fold != "all")].set_index(["model", "fold"]).value
    for row in chosen.itertuples():  # the selection's fold = its chosen candidate's fold
        assert c["snn-best", str(row.fold)] == c[row.chosen, str(row.fold)]
    assert c["cox_clinical"].between(0, 1).all()


def test_genes_only_report_has_no_broken_links(genes_only_run):
    work, _ = genes_only_run
    proc = snakemake(work, "--report", str(work / "results" / "report.html"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR/" not in proc.stderr and "WARNING/" not in proc.stderr  # docutils messages of workflow.rst
    assert "genes-only cohort" in (work / "results" / "report.html").read_text(errors="ignore")
