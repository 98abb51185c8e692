"""Several encoders in one run (``features.encoders``) and imported stores (``features.import``) through Snakemake.

The plans are checked with dry runs (seconds): per-encoder extraction and manifests, a model that reads features
trained once per encoder (``{model}`` for the first, ``{model}@{encoder}`` for the others) and the others once,
the first encoder's jobs unchanged when an encoder is added, no tiling or extraction for imported stores and their
planning-time errors. Two slow tests run the workflow for real on a small demo cohort.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from snake import snakemake_cmd, workflow_env

from pathomix.catalog import model_instances, resolve, selection_instances, split_instance
from pathomix.io.sheets import read_slides

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = ["resnet18_trunc", "vit_tiny"]


# ---- the catalogue's model instances (no Snakemake) ------------------------------------------------------
def test_feature_models_get_one_instance_per_further_encoder():
    got = model_instances(["abmil", "snn", "fof", "cox_clinical", "dmsf_student"], None, ENCODERS)
    assert got == ["abmil", "abmil@vit_tiny", "snn", "fof", "cox_clinical", "dmsf_student", "dmsf_student@vit_tiny"]
    assert model_instances(["abmil"], None, ["resnet18_trunc"]) == ["abmil"]  # one encoder: today's names
    assert split_instance("abmil@vit_tiny") == ("abmil", "vit_tiny") and split_instance("abmil") == ("abmil", None)


def test_an_instance_resolves_like_its_model_with_the_teacher_of_its_encoder():
    variants = {"st-scratch": {"model": "dmsf_student", "teacher": None}}
    v = resolve("dmsf_student@vit_tiny", variants)
    assert (v.model, v.teacher) == ("dmsf_student", "dmsf_teacher@vit_tiny")
    assert resolve("st-scratch@vit_tiny", variants).teacher is None
    with pytest.raises(KeyError, match="reads no patch features"):
        resolve("snn@vit_tiny")


def test_selections_choose_across_encoders_unless_a_candidate_names_one():
    assert selection_instances(["abmil", "snn"], None, ENCODERS) == ("abmil", "abmil@vit_tiny", "snn")
    assert selection_instances(["abmil@vit_tiny", "dmsf_teacher"], None, ["resnet18_trunc"]) == (
        "abmil@vit_tiny", "dmsf_teacher")


# ---- dry runs on a small demo cohort ---------------------------------------------------------------------
def snakemake(work: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = workflow_env(PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "2", *args],
                          cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A 12-patient demo cohort without mIF (generated once, a few seconds)."""
    out = tmp_path_factory.mktemp("demo")
    subprocess.run([str(Path(snakemake_cmd()[0])), "-m", "pathomix.demo", "--out", str(out), "--seed", "0",
                    "--n-patients", "12", "--n-mif", "0"], check=True, capture_output=True,
                   env=workflow_env(PYTHONPATH=str(ROOT / "src")), timeout=300)
    return out


def work_dir(tmp_path: Path, demo: Path, features: dict, models=("abmil", "snn"), **train) -> Path:
    """A work folder whose config.yaml is the project's with the demo cohort, 20x only, and `features` merged."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg.update(slides=str(demo / "slides.tsv"), clinical=str(demo / "clinical.tsv"), genes=str(demo / "genes.parquet"),
               mif_channels=None, results_dir=str(tmp_path / "results"),
               demo={**cfg["demo"], "enabled": False, "dir": str(demo)})
    cfg["tiling"]["magnifications"] = {"20x": 0.5}
    cfg["features"].update(features)
    cfg["train"].update(models=list(models), tasks=["diagnosis"], variants={}, epochs=2, **train)
    cfg["splits"].update(n_folds=2)
    cfg["evaluate"].update(bootstrap=20)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path


def planned(work: Path) -> list[str]:
    """The shell commands of a dry run."""
    proc = snakemake(work, "-n", "-p")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return [line.split("Shell command: ", 1)[1] for line in proc.stdout.splitlines() if "Shell command: python" in line]


def stage(commands: list[str], name: str) -> list[str]:
    return [c for c in commands if c.startswith(f"python -m pathomix.{name} ")]


def test_two_encoders_extract_once_each_and_train_feature_models_per_encoder(tmp_path, demo):
    cmds = planned(work_dir(tmp_path, demo, {"encoders": ENCODERS}, models=("abmil", "snn", "dmsf_teacher",
                                                                              "dmsf_student")))
    # batch jobs (slide_batches.size: auto): the first encoder's tile and encode each batch, tiling once, and
    # the second encoder's read those tiles
    first = [c for c in stage(cmds, "batch") if c.startswith("python -m pathomix.batch tile-extract ")]
    second = [c for c in stage(cmds, "batch") if c.startswith("python -m pathomix.batch extract ")]
    assert first and len(first) == len(second) and not stage(cmds, "tiling") and not stage(cmds, "features")
    for enc, jobs in zip(ENCODERS, (first, second), strict=True):
        assert all(f'"encoder": "{enc}"' in c and f"--encoder {enc} " in c for c in jobs)
    manifests = stage(cmds, "features.manifest")
    assert sorted(re.search(r"features/([^/]+)/manifest", c).group(1) for c in manifests) == ENCODERS
    names = [re.search(r"--name (\S+)", c).group(1) for c in stage(cmds, "train")]
    assert sorted(set(names)) == ["abmil", "abmil@vit_tiny", "dmsf_student", "dmsf_student@vit_tiny", "dmsf_teacher",
                                  "dmsf_teacher@vit_tiny", "snn"]
    # on one machine a model × task trains every fold in one job (train.folds_per_job: auto)
    assert names.count("snn") == 1 and names.count("abmil@vit_tiny") == 1
    assert all(" --fold 0 1 " in c for c in stage(cmds, "train"))
    student = next(c for c in stage(cmds, "train") if "--name dmsf_student@vit_tiny" in c)
    assert "features/vit_tiny/manifest.parquet" in student and "models/dmsf_teacher@vit_tiny/diagnosis/" in student
    assert "--teacher-name dmsf_teacher@vit_tiny" in student
    abmil = next(c for c in stage(cmds, "train") if "--name abmil " in c)
    assert "features/resnet18_trunc/manifest.parquet" in abmil and "/models/abmil/diagnosis/fold" in abmil
    (evaluate,) = stage(cmds, "evaluate")
    assert "--encoders-csv" in evaluate and "models/abmil@vit_tiny/diagnosis/fold1/predictions.parquet" in evaluate


def test_adding_an_encoder_leaves_the_first_encoders_jobs_as_they_were(tmp_path, demo):
    """Same commands (so same params and code: no rerun trigger) for the first encoder's extraction, manifest and
    models, whether it is `features.encoder` alone or the first of two; only evaluation changes."""
    one = planned(work_dir(tmp_path / "one", demo, {"encoder": "resnet18_trunc", "encoders": None}))
    two = planned(work_dir(tmp_path / "two", demo, {"encoders": ENCODERS}))

    def first(cmds: list[str]) -> set[str]:
        keep = [c for c in cmds if "vit_tiny" not in c and not c.startswith("python -m pathomix.evaluate ")
                and not c.startswith("python -m pathomix.provenance")]
        return {c.replace(str(tmp_path / "one"), "W").replace(str(tmp_path / "two"), "W") for c in keep}

    assert first(one) == first(two)
    assert any("--name abmil@vit_tiny" in c for c in two) and not any("@" in c for c in stage(one, "train"))


def test_batched_cohorts_extract_each_encoder_in_batches(tmp_path, demo):
    work = work_dir(tmp_path, demo, {"encoders": ENCODERS})
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["slide_batches"] = {"size": 4, "above": 0}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmds = planned(work)
    # the first encoder's extraction shares its batch's job with tiling (pathomix.batch tile-extract)
    batches = [c for c in cmds if c.startswith(("python -m pathomix.batch extract ", "python -m pathomix.batch tile-"))]
    n_batches = len([c for c in cmds if c.startswith("python -m pathomix.batch tile-extract ")])
    assert 4 <= n_batches <= 9  # 36 demo slides in batches of about 4 (crc32 may leave one empty)
    for enc in ENCODERS:
        mine = [c for c in batches if f"--encoder {enc} " in c]
        assert len(mine) == n_batches and all(f'"encoder": "{enc}"' in c for c in mine)
    manifests = stage(cmds, "features.manifest")
    assert len(manifests) == 2 and all("--batches" in c for c in manifests)


def test_no_encoder_at_all_is_refused_for_feature_models(tmp_path, demo):
    proc = snakemake(work_dir(tmp_path, demo, {"encoders": []}), "-n")
    assert proc.returncode != 0
    assert "['abmil'] read patch features, but features.encoders is []" in proc.stdout + proc.stderr


def test_an_mif_model_needs_an_extracted_first_encoder(tmp_path, demo):
    folders = write_imports(tmp_path / "stores", demo)
    work = work_dir(tmp_path / "w", demo, import_config(folders), models=("abmil", "fluoroformer"))
    proc = snakemake(work, "-n")
    assert proc.returncode != 0
    assert "['fluoroformer'] read mIF feature stores, but the first encoder tri is imported" in (proc.stderr
                                                                                                   + proc.stdout)


def write_imports(root: Path, demo: Path, dim: int = 12) -> dict[str, Path]:
    """Stores of the demo's H&E slides in the three layouts (synthetic features with a class signal, tiles on
    the slides at 20x)."""
    from pathomix.io.slide import open_slide

    slides = read_slides(demo / "slides.tsv", check_files=False)
    clinical = pd.read_csv(demo / "truth.tsv", sep="\t") if (demo / "truth.tsv").exists() else None
    label = {}
    if clinical is not None and "patient_id" in clinical.columns:
        label = dict(zip(clinical.patient_id, pd.factorize(clinical.iloc[:, 1])[0], strict=False))
    rng = np.random.default_rng(0)
    out = {"tri": root / "trident" / "features_uni", "clamx": root / "clam", "st": root / "stamp" / "ctranspath"}
    (out["clamx"] / "h5_files").mkdir(parents=True)
    out["tri"].mkdir(parents=True)
    out["st"].mkdir(parents=True)
    for row in slides[slides.modality == "he"].itertuples():
        with open_slide(row.path, "he", None if pd.isna(row.mpp) else row.mpp) as slide:
            mpp, (w, h) = slide.mpp, slide.dimensions
        size0 = int(round(256 * 0.5 / mpp))
        xy = np.array([[x, y] for y in range(0, h - size0, size0) for x in range(0, w - size0, size0)][:20], np.int64)
        feats = rng.normal(size=(len(xy), dim)).astype(np.float32) + label.get(row.patient_id, 0)
        with h5py.File(out["tri"] / f"{row.slide_id}.h5", "w") as f:
            f["features"] = feats
            f["coords"] = xy
            f["coords"].attrs.update(patch_size=256, patch_size_level0=size0, level0_magnification=10 / mpp,
                                     target_magnification=20, overlap=0, name=row.slide_id)
        with h5py.File(out["clamx"] / "h5_files" / f"{row.slide_id}.h5", "w") as f:
            f["features"] = feats
            f["coords"] = xy
        with h5py.File(out["st"] / f"{row.slide_id}.h5", "w") as f:
            f["coords"] = (xy * mpp).astype(np.float32)
            f["feats"] = feats.astype(np.float16)
            f.attrs.update(extractor="ctranspath", unit="um", tile_size_um=128.0, tile_size_px=256)
    return out


def import_config(folders: dict[str, Path]) -> dict:
    return {"encoders": [], "import": {"tri": str(folders["tri"]), "clamx": {"path": str(folders["clamx"]),
                                                                           "mag": "20x"},
                                       "st": str(folders["st"])}}


def test_imported_stores_plan_no_tiling_or_extraction(tmp_path, demo):
    folders = write_imports(tmp_path / "stores", demo)
    cmds = planned(work_dir(tmp_path / "w", demo, import_config(folders)))
    assert not stage(cmds, "tiling") and not stage(cmds, "features") and not stage(cmds, "batch")
    n_he = int((read_slides(demo / "slides.tsv", check_files=False).modality == "he").sum())
    imports = stage(cmds, "io.imported")
    assert len(imports) == 3 * n_he
    assert {re.search(r"--format (\w+)", c).group(1) for c in imports} == {"trident", "clam", "stamp"}
    names = {re.search(r"--name (\S+)", c).group(1) for c in stage(cmds, "train")}
    assert names == {"abmil", "abmil@clamx", "abmil@st", "snn"}  # the first import is the primary encoder
    (heatmaps,) = stage(cmds, "evaluate.heatmaps")
    assert "/features/tri " in heatmaps and "/tiles" not in heatmaps  # placed by the imported coords (their folder)


def test_an_import_is_checked_before_any_job_runs(tmp_path, demo):
    folders = write_imports(tmp_path / "stores", demo)
    missing = sorted(folders["tri"].glob("*.h5"))[0]
    missing.unlink()
    proc = snakemake(work_dir(tmp_path / "w", demo, import_config(folders)), "-n")
    assert proc.returncode != 0
    msg = proc.stderr + proc.stdout
    assert "features.import.tri: 1 of" in msg and missing.name in msg and str(folders["tri"]) in msg
    cfg = import_config(folders)
    cfg["import"]["clamx"] = {"path": str(folders["clamx"])}  # CLAM stores do not say their magnification
    write_imports(tmp_path / "stores2", demo)
    proc = snakemake(work_dir(tmp_path / "w2", demo, {**cfg, "import": {"clamx": str(tmp_path / "stores2" / "clam")}}),
                     "-n")
    assert proc.returncode != 0 and "do not record their magnification" in proc.stderr + proc.stdout


def test_a_fallback_encoder_extracts_the_slides_an_import_lacks(tmp_path, demo):
    from pathomix.features.entries import ENCODERS as REGISTERED

    folders = write_imports(tmp_path / "stores", demo, dim=REGISTERED["resnet18_trunc"].dim)
    lacking = sorted(folders["tri"].glob("*.h5"))[0]
    lacking.unlink()
    cfg = {"encoders": [], "import": {"tri": {"path": str(folders["tri"]), "fallback": "resnet18_trunc"}}}
    cmds = planned(work_dir(tmp_path / "w", demo, cfg, models=("abmil",)))
    (tile,) = stage(cmds, "tiling")
    (extract,) = stage(cmds, "features")
    assert f"--slide-id={lacking.stem} " in tile and f"/features/tri/20x/{lacking.stem}.h5" in extract
    assert '"encoder": "resnet18_trunc"' in extract
    imports = stage(cmds, "io.imported")
    assert len(imports) == int((read_slides(demo / "slides.tsv", check_files=False).modality == "he").sum()) - 1
    (manifest,) = stage(cmds, "features.manifest")
    assert "--encoder tri --stores" in manifest and f"/features/tri/20x/{lacking.stem}.h5" in manifest
    cfg["import"]["tri"]["fallback"] = "vit_tiny"  # 192-d: not the encoder that made these stores
    proc = snakemake(work_dir(tmp_path / "w2", demo, cfg, models=("abmil",)), "-n")
    assert proc.returncode != 0 and "fallback vit_tiny gives 192-d features" in proc.stderr + proc.stdout


# ---- real runs (slow) ------------------------------------------------------------------------------------
def run(work: Path) -> None:
    proc = snakemake(work, timeout=1800)
    if proc.returncode:
        logs = "\n".join(p.read_text()[-1500:] for p in (work / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"run failed:\n{proc.stderr[-5000:]}\n{logs[-8000:]}")


@pytest.mark.slow
def test_a_run_with_two_encoders(tmp_path, demo):
    work = work_dir(tmp_path, demo, {"encoders": ENCODERS})
    run(work)
    res = work / "results"
    for enc in ENCODERS:
        stores = sorted((res / "features" / enc / "20x").glob("*.h5"))
        assert stores and pd.read_parquet(res / "features" / enc / "manifest.parquet").encoder.eq(enc).all()
        with h5py.File(stores[0]) as f:
            assert f["features"].attrs["encoder"] == enc
    m = pd.read_parquet(res / "eval" / "metrics.parquet")
    enc_of = m.groupby("model").encoder.unique().map(list).to_dict()
    assert enc_of == {"abmil": ["resnet18_trunc"], "abmil@vit_tiny": ["vit_tiny"], "snn": [""]}
    snn = m[(m.model == "snn") & (m.metric == "auc")]
    assert sorted(snn.fold) == ["0", "1", "all"]  # genes only: trained once, one row per fold and metric
    comparison = pd.read_csv(res / "eval" / "comparison.csv", keep_default_na=False).set_index("model")
    assert comparison.encoder.to_dict() == {"abmil": "resnet18_trunc", "abmil@vit_tiny": "vit_tiny", "snn": ""}
    by_encoder = pd.read_csv(res / "eval" / "encoders.csv")
    auc = by_encoder[(by_encoder.metric == "auc")].set_index("encoder")
    assert set(auc.index) == set(ENCODERS) and (auc.model_base == "abmil").all() and auc.ci_low.notna().all()
    assert auc.best.sum() == 1
    assert "Encoder × model × task" in (res / "eval" / "encoders.html").read_text()
    assert (res / "eval" / "figures" / "encoders.png").stat().st_size > 5000
    assert "Nothing to be done" in snakemake(work, "-n").stdout  # a finished run stays finished


@pytest.mark.slow
def test_a_run_on_imported_stores(tmp_path, demo):
    """Three imported layouts, one lacking a slide that its fallback encoder extracts (the only tiling)."""
    from pathomix.features.entries import ENCODERS as REGISTERED

    folders = write_imports(tmp_path / "stores", demo, dim=REGISTERED["resnet18_trunc"].dim)
    lacking = sorted(folders["tri"].glob("*.h5"))[-1]
    lacking.unlink()
    cfg = import_config(folders)
    cfg["import"]["tri"] = {"path": str(folders["tri"]), "fallback": "resnet18_trunc"}
    work = work_dir(tmp_path / "w", demo, cfg)
    run(work)
    res = work / "results"
    assert [p.stem for p in (res / "tiles" / "20x").glob("*.h5")] == [lacking.stem]
    for name, fmt in (("tri", "trident"), ("clamx", "clam"), ("st", "stamp")):
        man = pd.read_parquet(res / "features" / name / "manifest.parquet").set_index("slide_id")
        imported = man.drop(index=lacking.stem) if name == "tri" else man
        assert (imported.source_format == fmt).all() and imported.source.map(lambda p: Path(p).is_absolute()).all()
        assert man.path.str.startswith(f"features/{name}/20x/").all() and (man.encoder == name).all()
    tri = pd.read_parquet(res / "features" / "tri" / "manifest.parquet").set_index("slide_id")
    assert tri.source[lacking.stem] == "" and tri.encoder_weights_sha256[lacking.stem] != "imported:trident"
    m = pd.read_parquet(res / "eval" / "metrics.parquet")
    assert set(m.model) == {"abmil", "abmil@clamx", "abmil@st", "snn"}
    assert set(m[m.model.str.startswith("abmil")].encoder) == {"tri", "clamx", "st"}
    assert any((res / "eval" / "heatmaps").glob("*.png"))
    check = subprocess.run([snakemake_cmd()[0], str(ROOT.parent / "shared" / "tools" / "check_results.py"),
                            str(res)], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 or not (ROOT.parent / "shared").exists(), check.stdout[-3000:]


def test_the_encoder_table_compares_encoders_per_model_and_task(tmp_path):
    from pathomix.evaluate import encoders as E
    from pathomix.evaluate.metrics import summary_table

    rows = []
    for model, enc, auc in (("abmil", "r18", 0.7), ("abmil@vit", "vit", 0.8), ("snn", "", 0.6)):
        for fold, value in (("0", auc - 0.05), ("1", auc + 0.05)):
            rows.append((model, enc, "diagnosis", fold, "auc", value, np.nan, np.nan))
        rows.append((model, enc, "diagnosis", "all", "auc", auc, auc - 0.1, auc + 0.1))
    metrics = pd.DataFrame(rows, columns=["model", "encoder", "task", "fold", "metric", "value", "ci_low", "ci_high"])
    summary = summary_table(metrics)
    assert list(summary.columns[:4]) == ["model", "encoder", "task", "metric"]
    table = E.encoder_table(summary, ["auc"])
    assert set(table.model_base) == {"abmil"}  # snn reads no features: not compared
    assert table.set_index("encoder").best.to_dict() == {"r18": False, "vit": True}
    E.write_html(table, tmp_path / "encoders.html", 20)
    html = (tmp_path / "encoders.html").read_text()
    assert "<th>r18</th><th>vit</th>" in html and "<b>0.800 [0.700, 0.900]</b>" in html
    E.encoder_figure(table, tmp_path / "encoders.png")
    assert (tmp_path / "encoders.png").stat().st_size > 5000
