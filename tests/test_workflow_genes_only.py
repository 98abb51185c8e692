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
    cfg["train"].update(models=["snn"], tasks=["survival"], epochs=3)
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
    assert ran == {"hvg", "splits", "train", "evaluate", "gene_view", "provenance"}
    folds = pd.read_parquet(res / "splits" / "folds.parquet")
    assert folds.patient_id.nunique() == 60
    assert "stratifying on event instead" in (res / "logs" / "splits.log").read_text()


def test_genes_only_report_has_no_broken_links(genes_only_run):
    work, _ = genes_only_run
    proc = snakemake(work, "--report", str(work / "results" / "report.html"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR/" not in proc.stderr and "WARNING/" not in proc.stderr  # docutils messages of workflow.rst
    assert "genes-only cohort" in (work / "results" / "report.html").read_text(errors="ignore")
