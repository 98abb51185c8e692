"""``pathomix init`` and ``pathomix doctor`` (issue 22) on the real files of ../shared/data: a folder of slides
renamed TCGA-style with a broken slide and one without a usable MPP among them, and the PORPOISE LUAD table."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snake import snakemake_cmd, workflow_env

from pathomix.study.init import main as init_main
from pathomix.study.scan import guess_modality, patient_of, slide_files

ROOT = Path(__file__).resolve().parents[1]
CASES = ["TCGA-05-4249", "TCGA-05-4250", "TCGA-05-4382", "TCGA-05-4384", "TCGA-05-4390", "TCGA-05-4396"]


@pytest.fixture
def tcga_folder(tmp_path, shared_data) -> Path:
    folder = tmp_path / "slides"
    (folder / "batch2").mkdir(parents=True)
    for i, case in enumerate(CASES):  # the real H&E slide under six LUAD patients' barcodes, in two folders
        target = folder / ("batch2" if i % 2 else "") / f"{case}-01Z-00-DX1.{i:04d}.svs"
        shutil.copy(shared_data / "wsi" / "CMU-1-Small-Region.svs", target)
    shutil.copy(shared_data / "wsi" / "broken.svs", folder / "TCGA-05-4397-01Z-00-DX1.svs")
    shutil.copy(shared_data / "openslide-fixtures" / "boxes.tiff", folder / "TCGA-05-4398-01Z-00-DX1.tiff")
    (folder / "notes.txt").write_text("not a slide")
    return folder


def test_patients_from_tcga_barcodes_or_a_pattern():
    assert patient_of("TCGA-CR-7395-01A-01-TS1", None) == "TCGA-CR-7395"
    assert patient_of("lab_P017_block2", r"_(P\d+)_") == "P017"
    assert patient_of("S1", None) == "S1"  # no barcode, no pattern: one patient per slide


def test_modality_is_guessed_from_the_file(shared_data):
    assert guess_modality(shared_data / "wsi" / "CMU-1-Small-Region.svs") == "he"
    assert guess_modality(shared_data / "mif" / "qptiff" / "pathml_small_vectra.qptiff") == "mif"
    assert guess_modality(next((shared_data / "mif" / "ometiff").glob("*.ome.tiff"))) == "mif"
    assert guess_modality(next((shared_data / "mif" / "mibi").glob("fov8_Row*.tiff"))) == "mif"
    assert guess_modality(shared_data / "dicom" / "cmu1-small-region") == "he"
    assert slide_files(shared_data / "dicom") == sorted([shared_data / "dicom" / "cmu1-small-region",
                                                          *(shared_data / "dicom" / "wsi2dcm").glob("*.dicom")])


def test_init_writes_sheets_config_and_the_problem_table(tcga_folder, tmp_path, shared_data, caplog):
    caplog.set_level("INFO", logger="pathomix.init")
    out = tmp_path / "study"
    table = shared_data / "genomics" / "tcga_luad_all_clean.csv.zip"
    assert init_main([str(tcga_folder), "--out", str(out), "--clinical", str(table)]) == 0
    slides = pd.read_csv(out / "slides.tsv", sep="\t")
    assert sorted(slides.patient_id) == CASES and set(slides.modality) == {"he"}
    assert all((out / p).exists() for p in slides.path) and not any(Path(p).is_absolute() for p in slides.path)
    problems = pd.read_csv(out / "problems.tsv", sep="\t")
    text = "\n".join(problems.what + " " + problems.problem)
    assert "TCGA-05-4397-01Z-00-DX1 slide TCGA-05-4397-01Z-00-DX1" in text and "not a whole-slide image" in text
    assert "TCGA-05-4398-01Z-00-DX1" in text and "add an `mpp` column" in text
    assert "445 patient(s) in the clinical table without a slide" in text
    excluded = pd.read_csv(out / "excluded_slides.tsv", sep="\t")
    assert set(excluded.slide_id) == {"TCGA-05-4397-01Z-00-DX1", "TCGA-05-4398-01Z-00-DX1"}
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    defaults = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert (cfg["slides"], cfg["clinical"], cfg["genes"], cfg["mif_channels"]) == \
        ("slides.tsv", "clinical.tsv", "genes.parquet", None)
    assert cfg["demo"]["enabled"] is False and cfg["train"]["tasks"] == ["survival"]  # LUAD: no glioma labels
    assert "fluoroformer" not in cfg["train"]["models"] and "abmil" in cfg["train"]["models"]  # no mIF here
    assert cfg["tiling"] == defaults["tiling"] and cfg["evaluate"] == defaults["evaluate"]  # defaults, not a copy
    assert "next: cd" in caplog.text
    assert cfg["features"]["allow_random_init"] is False  # a study, not the demo
    assert "encoder resnet18_trunc" in set(problems.what)  # no weights found: said before the run, with the fix


def test_the_console_script_dispatches(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pathomix", "doctor", "--config", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("ok    python") for line in lines)
    assert any(line.startswith("ok    torch") for line in lines)
    assert any(line.startswith(("ok    gpu", "warn  gpu")) for line in lines)  # this machine: no GPU, says so
    assert any(line.startswith(("ok    slurm", "warn  slurm")) for line in lines)
    assert any(line.startswith(("ok    disk", "warn  disk")) for line in lines)
    assert any("encoder weights" in line for line in lines)
    bad = subprocess.run([sys.executable, "-m", "pathomix", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "pathomix init" in bad.stderr


@pytest.mark.slow
def test_init_then_the_printed_command_runs_the_study(tcga_folder, tmp_path, shared_data):
    """No hand-written sheet or config edit: init, then `cd STUDY && snakemake -s Snakefile --cores 2`."""
    luad = pd.read_csv(shared_data / "genomics" / "tcga_luad_all_clean.csv.zip", compression="zip", low_memory=False)
    keep = CASES + [c for c in luad.case_id.drop_duplicates() if c not in CASES][:34]
    table = tmp_path / "luad40.csv"  # a smaller cohort of the same table (40 patients), so this runs in minutes
    luad[luad.case_id.isin(keep)].to_csv(table, index=False)
    out = tmp_path / "study"
    # no weights can be had here: the run is a dry run of the pipeline with random features, asked for explicitly
    assert init_main([str(tcga_folder), "--out", str(out), "--clinical", str(table), "--allow-random-init"]) == 0
    proc = subprocess.run([*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "--cores", "2"], cwd=out,
                          env=workflow_env(PYTHONPATH=str(ROOT / "src")), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = pd.read_parquet(out / "results" / "eval" / "metrics.parquet")
    assert {"abmil", "snn"} <= set(metrics.model) and set(metrics.task) == {"survival"}
