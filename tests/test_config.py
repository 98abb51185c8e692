"""Config validation at load time: a wrong key or value fails at once and names it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from snake import snakemake_cmd, workflow_env

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*config: str) -> subprocess.CompletedProcess:
    env = workflow_env()
    return subprocess.run([*snakemake_cmd(), "-n", "--quiet", "--cores", "1",
                           "--directory", str(ROOT), "--config", *config],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("override", "needle"), [
    ("tiling={tile_pxx: 128}", "tile_pxx"),
    ("features={encoder: resnet99}", "resnet99"),
    ("train={models: [abmil, cnn]}", "cnn"),
])
def test_bad_config_names_the_key(override, needle):
    proc = dry_run(override)
    assert proc.returncode != 0
    assert needle in proc.stderr + proc.stdout


def test_default_config_is_valid_against_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.validate(yaml.safe_load((ROOT / "config.yaml").read_text()), schema)


def test_nested_command_line_values_are_coerced():
    from pathomix.config import coerce_to_schema

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    got = coerce_to_schema({"tiling": {"tile_px": "128", "min_tissue_fraction": "0.25"},
                            "features": {"weights": "null", "encoder": "vit_small"},
                            "train": {"aux_losses": {"igc": "0"}, "tasks": ["survival"]},
                            "demo": {"enabled": "false"}}, schema)
    assert got["tiling"] == {"tile_px": 128, "min_tissue_fraction": 0.25}
    assert got["features"] == {"weights": None, "encoder": "vit_small"}
    assert got["train"] == {"aux_losses": {"igc": 0.0}, "tasks": ["survival"]}
    assert got["demo"] == {"enabled": False}


def test_nested_override_passes_validation():
    assert dry_run("tiling={tile_px: 128}").returncode == 0


def test_wsi_model_without_slides_fails_at_load_with_the_fix():
    proc = dry_run("slides=null", "train={models: [snn, abmil], tasks: [survival]}")
    assert proc.returncode != 0
    assert ("model abmil needs H&E slides but `slides` is null; remove it from train.models or add a slides sheet"
            in proc.stderr + proc.stdout)


def test_missing_cohort_inputs_names_each_model():
    from pathomix.catalog import missing_cohort_inputs

    genes_only = {"slides": None, "genes": "genes.parquet"}
    assert missing_cohort_inputs(["snn"], genes_only) == []
    assert [m.split()[1] for m in missing_cohort_inputs(["abmil", "snn", "dmsf_student"], genes_only)] == \
        ["abmil", "dmsf_student"]
    assert missing_cohort_inputs(["snn"], {"slides": "s.tsv", "genes": None}) == [
        "model snn needs a gene table but `genes` is null; remove it from train.models or add a gene table"]


def test_mif_model_needs_mif_images():
    from pathomix.catalog import missing_cohort_inputs

    cohort = {"slides": "s.tsv", "genes": "g.parquet"}
    assert missing_cohort_inputs(["fluoroformer", "abmil"], cohort, {"he", "mif"}) == []
    assert missing_cohort_inputs(["fluoroformer"], cohort) == []  # sheet not known yet: the jobs check
    assert missing_cohort_inputs(["abmil", "fluoroformer"], cohort, {"he"}) == [
        "model fluoroformer needs mIF images but the slides sheet s.tsv has no row with modality `mif`; remove it "
        "from train.models or add mIF images (one row per image, modality mif; channel names in `mif_channels`) "
        "to the sheet"]
    assert [m.split()[1] for m in missing_cohort_inputs(["abmil", "fluoroformer"], cohort, {"mif"})] == ["abmil"]
    assert missing_cohort_inputs(["fluoroformer"], {"slides": None, "genes": "g.parquet"}) == [
        "model fluoroformer needs mIF images but `slides` is null; remove it from train.models or add a slides "
        "sheet with mIF rows (modality mif)"]


def test_fluoroformer_plans_on_the_demo_and_fails_without_mif():
    assert dry_run("train={models: [abmil, fluoroformer], tasks: [survival]}").returncode == 0
    proc = dry_run("demo={n_mif: 0}", "train={models: [fluoroformer], tasks: [survival]}")
    assert proc.returncode != 0
    assert "model fluoroformer needs mIF images" in proc.stderr + proc.stdout


def test_sheet_validation_names_the_column_value_and_row():
    import pandas as pd

    from pathomix.config import validate_table

    schema = yaml.safe_load((ROOT / "workflow/schemas/slides.schema.yaml").read_text())
    good = pd.DataFrame({"slide_id": ["S1", "S2"], "patient_id": ["P1", "P1"], "path": ["a.svs", "b.svs"],
                         "modality": ["he", "mif"], "mpp": [0.25, None]}).set_index("slide_id", drop=False)
    validate_table(good, schema, "slides.tsv")
    with pytest.raises(ValueError, match=r"slides.tsv, row S2: column 'mpp' has -1.0: -1.0 is less than or equal"):
        validate_table(good.assign(mpp=[0.25, -1.0]), schema, "slides.tsv")
    with pytest.raises(ValueError, match=r"row S1: column 'modality' has 'HE'"):
        validate_table(good.assign(modality=["HE", "mif"]), schema, "slides.tsv")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['path'\]"):
        validate_table(good.drop(columns="path"), schema, "slides.tsv")


def test_nested_command_line_values_are_coerced_through_one_of() -> None:
    """`--config slide_batches={size: 0}` arrives as the string '0': `size` is `auto` or an integer."""
    import yaml

    from pathomix.config import coerce_to_schema

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    cfg = coerce_to_schema({"slide_batches": {"size": "0", "overlap": "true"}, "gpus": "2",
                            "features": {"batch_size": "32"}}, schema)
    assert cfg == {"slide_batches": {"size": 0, "overlap": True}, "gpus": 2, "features": {"batch_size": 32}}
    assert coerce_to_schema({"slide_batches": {"size": "auto"}}, schema) == {"slide_batches": {"size": "auto"}}
