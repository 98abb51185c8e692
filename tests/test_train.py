"""Training stage end to end on a small synthetic cohort with planted signals.

Real stores (``write_features``), manifest, HVG/subspaces, folds and clinical sheet are
written to a temporary folder; ``pathomix.train.main`` is run for every model and task.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score

from pathomix.io.h5store import COORD_ATTRS, write_features
from pathomix.tasks import DIAGNOSES
from pathomix.train import TrainParams, main
from pathomix.train.objectives import harrell_c
from pathomix.train.optim import Adam

ROOT = Path(__file__).resolve().parents[1]
D = 32
N_PER_CLASS = 12
GENOTYPE = {"astrocytoma": ("mut", "non-codel"), "oligodendroglioma": ("mut", "codel"),
            "glioblastoma": ("wt", "non-codel")}
MEDIAN_MONTHS = {"astrocytoma": 50.0, "oligodendroglioma": 110.0, "glioblastoma": 14.0}
AGE = {"astrocytoma": 45, "oligodendroglioma": 33, "glioblastoma": 62}  # planted: older = shorter survival
PARAMS = {"epochs": 25, "patience": 25, "hidden": 32, "lr": 0.001, "max_tiles": 24, "seed": 0}
# patience = epochs: with ~5 validation patients an early stop at epoch 1-3 is noise, not what these tests check
# planted input problems (fold 0's test patients are P00, P03, P06, ...; P01 trains)
NO_HE, EMPTY_HE, NO_GENES, MULTI_SLIDE = "P00", "P03", ("P06", "P01"), ("P09", "P12", "P15")
MARKERS = ("CD8", "Ki67", "SOX2")  # the synthetic mIF panel (the stores' `channels`)
NO_MIF = {"P03", "P15", "P19"}  # patients without an mIF image (P03, P15: fold 0 test; P19 trains)
JOBS = [("abmil", "diagnosis"), ("snn", "diagnosis"), ("dmsf_teacher", "diagnosis"), ("dmsf_student", "diagnosis"),
        ("abmil", "survival"), ("snn", "survival"), ("dmsf_teacher", "survival"), ("dmsf_student", "survival")]


def _coord_attrs(slide_id: str, mag: str) -> dict:
    attrs = {a: 0 for a in COORD_ATTRS}
    attrs.update(patch_size=256, patch_size_level0=256 * (2 if mag == "10x" else 1), level0_magnification=20,
                 target_magnification=int(mag[:-1]), name=slide_id, slide_id=slide_id, patch_level=0,
                 downsample=1.0, target_mpp=0.5, level0_mpp=0.5, level0_width=4096, level0_height=4096)
    return attrs


def _store(root: Path, rng: np.random.Generator, slide: str, mag: str, cls: int, n: int, mif: bool = False) -> dict:
    feats = rng.normal(0, 1, (n, len(MARKERS), D) if mif else (n, D)).astype(np.float16)
    tumour = rng.random(n) < 0.4  # a minority of tiles carries the class signal
    if mif:  # in the embedding of one marker channel (which one is the class: like a marker-positive cell)
        feats[tumour, cls, cls * 4:(cls + 1) * 4] += 2.5
    else:
        feats[tumour, cls * 4:(cls + 1) * 4] += 2.5
    path = root / "features" / mag / f"{slide}.h5"
    coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1).astype(np.int64)
    write_features(path, coords, _coord_attrs(slide, mag), feats,
                   {"encoder": "synthetic", "encoder_weights_sha256": "random-init", "precision": "fp16",
                    **({"channels": list(MARKERS)} if mif else {})})
    return {"slide_id": slide, "modality": "mif" if mif else "he", "mag": mag, "n_tiles": n, "dim": D,
            "encoder": "synthetic", "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(7)
    mif_rng = np.random.default_rng(11)  # its own stream: the H&E and gene data stay as they were
    diag = [d for d in DIAGNOSES for _ in range(N_PER_CLASS)]
    pids = [f"P{i:02d}" for i in range(len(diag))]
    rng.shuffle(diag)
    clinical, manifest, genes = [], [], []
    for pid, dx in zip(pids, diag, strict=True):
        cls = DIAGNOSES.index(dx)
        idh, codel = GENOTYPE[dx]
        event = int(rng.random() < 0.8)
        months = float(MEDIAN_MONTHS[dx] * np.exp(rng.normal(0, 0.35)) * (1.0 if event else 0.8))
        clinical.append({"patient_id": pid, "idh": idh, "codel_1p19q": codel, "cdkn2a": "wt", "grade": 2,
                         "survival_months": round(months, 2), "event": event,
                         "age": AGE[dx] + 3 * (len(clinical) % 5)})  # no rng draw: the other data stay as they were
        if pid not in NO_GENES:
            expr = rng.normal(5.0, 1.0, 40)
            expr[cls * 5:(cls + 1) * 5] += 2.0  # tumour-subspace program
            expr[15 + cls * 5:15 + (cls + 1) * 5] += 1.5  # TME-subspace program
            genes.append({"patient_id": pid, **{f"G{j:02d}": float(v) for j, v in enumerate(expr)}})
        if pid not in NO_MIF and pid != "P18":
            n = int(mif_rng.integers(12, 25))
            manifest.append({"patient_id": pid, **_store(root, mif_rng, f"{pid}_mif", "20x", cls, n, mif=True)})
        if pid == NO_HE:
            continue
        n_slides = 2 if pid in MULTI_SLIDE else 1
        for s in range(n_slides):
            slide = f"{pid}_S{s}"
            empty = pid == EMPTY_HE or (pid == MULTI_SLIDE[0] and s == 1)
            for mag, n in (("20x", int(rng.integers(20, 41))), ("10x", int(rng.integers(4, 9)))):
                manifest.append({"patient_id": pid, **_store(root, rng, slide, mag, cls, 0 if empty else n)})
        if pid == "P18":
            manifest.append({"patient_id": pid, **_store(root, rng, f"{pid}_mif", "20x", cls, 10, mif=True)})
    pd.DataFrame(clinical).to_csv(root / "clinical.tsv", sep="\t", index=False)
    pd.DataFrame(manifest).to_parquet(root / "manifest.parquet")
    pd.DataFrame(genes).to_parquet(root / "hvg.parquet")
    sub = ["tumour"] * 15 + ["tme"] * 15 + ["other"] * 10
    pd.DataFrame({"gene": [f"G{j:02d}" for j in range(40)], "subspace": sub}).to_parquet(root / "subspaces.parquet")
    folds = []
    for k in range(3):
        for i, pid in enumerate(pids):
            split = "test" if i % 3 == k else ("val" if i % 4 == 1 else "train")
            folds.append({"patient_id": pid, "fold": k, "split": split})
    pd.DataFrame(folds).to_parquet(root / "folds.parquet")
    return {"root": root, "clinical": root / "clinical.tsv", "manifest": root / "manifest.parquet",
            "hvg": root / "hvg.parquet", "subspaces": root / "subspaces.parquet", "folds": root / "folds.parquet"}


def _argv(cohort: dict[str, Path], model: str, task: str, out: Path, fold: int = 0, params: dict | None = None,
          teacher: Path | None = None) -> list[str]:
    argv = ["--model", model, "--task", task, "--fold", str(fold), "--clinical", str(cohort["clinical"]),
            "--folds", str(cohort["folds"]), "--manifest", str(cohort["manifest"]), "--hvg", str(cohort["hvg"]),
            "--subspaces", str(cohort["subspaces"]), "--params", json.dumps(params or PARAMS), "--out", str(out)]
    return argv + (["--teacher-checkpoint", str(teacher)] if teacher else [])


@pytest.fixture(scope="session")
def trained(cohort: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("models")
    outs: dict[tuple[str, str], Path] = {}
    for model, task in JOBS:
        out = root / model / task / "fold0"
        teacher = outs[("dmsf_teacher", task)] / "checkpoint.pt" if model == "dmsf_student" else None
        t0 = time.perf_counter()
        assert main(_argv(cohort, model, task, out, teacher=teacher)) == 0
        logging.getLogger(__name__).info("%s/%s trained in %.2f s", model, task, time.perf_counter() - t0)
        outs[(model, task)] = out
    return outs


def test_params_defaults_equal_config_yaml() -> None:
    train = yaml.safe_load((ROOT / "config.yaml").read_text())["train"]
    assert TrainParams.from_mapping(train) == TrainParams()
    assert TrainParams.from_mapping(TrainParams().to_dict()) == TrainParams()


@pytest.mark.slow  # the `trained` fixture trains every job of JOBS (~25 s on 2 cores)
@pytest.mark.parametrize("model,task", JOBS)
def test_outputs_and_columns(trained: dict, model: str, task: str) -> None:
    out = trained[(model, task)]
    hist = pd.read_parquet(out / "history.parquet")
    assert list(hist.columns)[:6] == ["epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds"]
    assert ("cgc_conflicts" in hist.columns) == (model == "dmsf_teacher")  # CGC: share of conflicting steps
    assert (out / "gene_importance.parquet").exists() == (model in ("snn", "dmsf_teacher"))
    pred = pd.read_parquet(out / "predictions.parquet")
    base = ["patient_id", "fold", "split", "model", "encoder", "task"]
    extra = (["y_true", "y_pred", *(f"prob_{c}" for c in DIAGNOSES)] if task == "diagnosis"
             else ["time", "event", "risk", "bin"])
    assert list(pred.columns) == base + extra
    assert set(pred.split) == {"val", "test"} and (pred.model == model).all() and (pred.fold == 0).all()
    assert (pred.encoder == ("" if model == "snn" else "synthetic")).all()  # snn reads no patch features
    assert pred.patient_id.is_unique
    if task == "diagnosis":
        probs = pred[[f"prob_{c}" for c in DIAGNOSES]].to_numpy()
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
    else:
        assert pred.bin.between(0, 3).all()
    wsi = model != "snn"
    assert (out / "attention.parquet").exists() == wsi
    used = set(pred.patient_id)
    assert (NO_HE in used) == (EMPTY_HE in used) == (not wsi)
    assert (NO_GENES[0] in used) == (model in ("abmil", "dmsf_student"))
    assert MULTI_SLIDE[0] in used


@pytest.mark.slow  # the `trained` fixture trains every job of JOBS (~25 s on 2 cores)
@pytest.mark.parametrize("model", ["abmil", "dmsf_teacher", "dmsf_student"])
def test_attention_table(trained: dict, cohort: dict, model: str) -> None:
    att = pd.read_parquet(trained[(model, "diagnosis")] / "attention.parquet")
    assert list(att.columns) == ["patient_id", "slide_id", "mag", "tile_index", "weight", "head"]
    pred = pd.read_parquet(trained[(model, "diagnosis")] / "predictions.parquet")
    assert set(att.patient_id) == set(pred.patient_id[pred.split == "test"])
    heads = {"abmil"} if model == "abmil" else {"tumour", "tme"}
    assert set(att["head"]) == heads
    assert np.allclose(att.groupby(["patient_id", "head", "mag"]).weight.sum(), 1.0, atol=1e-4)
    n_tiles = pd.read_parquet(cohort["manifest"]).set_index(["slide_id", "mag"]).n_tiles
    assert (att.tile_index < [n_tiles[(s, m)] for s, m in zip(att.slide_id, att.mag, strict=True)]).all()
    assert (att.slide_id.str.split("_").str[0] == att.patient_id).all()


@pytest.mark.slow  # the `trained` fixture trains every job of JOBS (~25 s on 2 cores)
@pytest.mark.parametrize("model", ["abmil", "snn", "dmsf_teacher", "dmsf_student"])
def test_diagnosis_beats_chance(trained: dict, model: str) -> None:
    pred = pd.read_parquet(trained[(model, "diagnosis")] / "predictions.parquet")
    test = pred[pred.split == "test"]
    acc = (test.y_true == test.y_pred).mean()
    auc = roc_auc_score(test.y_true, test[[f"prob_{c}" for c in DIAGNOSES]].to_numpy(), multi_class="ovr")
    assert acc >= 0.7, f"{model} test accuracy {acc:.2f}"
    assert auc >= 0.85, f"{model} test AUC {auc:.2f}"


@pytest.mark.slow  # the `trained` fixture trains every job of JOBS (~25 s on 2 cores)
@pytest.mark.parametrize("model", ["abmil", "snn", "dmsf_teacher", "dmsf_student"])
def test_survival_beats_chance(trained: dict, model: str) -> None:
    pred = pd.read_parquet(trained[(model, "survival")] / "predictions.parquet")
    # lifelines wants a score that is high for long survival: the negated risk
    cindex = concordance_index(pred.time, -pred.risk, pred.event)
    assert cindex > 0.6, f"{model} C-index {cindex:.2f}"


@pytest.mark.slow  # the `trained` fixture trains every job of JOBS (~25 s on 2 cores)
def test_checkpoint_loads_with_weights_only(trained: dict) -> None:
    for (model, task), out in trained.items():
        ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        assert (ckpt["model"], ckpt["task"], ckpt["fold"]) == (model, task, 0)
        assert ckpt["classes"] == (list(DIAGNOSES) if task == "diagnosis" else ["risk"])
        assert (ckpt["bin_edges"] is None) == (task == "diagnosis")
        assert (ckpt["gene_stats"] is None) == (model == "abmil")
        assert TrainParams.from_mapping(ckpt["params"]).model.hidden == PARAMS["hidden"]


@pytest.mark.slow  # the `trained` fixture trains every job of JOBS (~25 s on 2 cores)
def test_deterministic(cohort: dict, trained: dict, tmp_path: Path) -> None:
    for model, task in (("abmil", "diagnosis"), ("dmsf_student", "survival")):
        teacher = trained[("dmsf_teacher", task)] / "checkpoint.pt" if model == "dmsf_student" else None
        assert main(_argv(cohort, model, task, tmp_path / model, teacher=teacher)) == 0
        again = pd.read_parquet(tmp_path / model / "predictions.parquet")
        pd.testing.assert_frame_equal(again, pd.read_parquet(trained[(model, task)] / "predictions.parquet"))


def test_skipped_patients_are_logged(cohort: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = {**PARAMS, "epochs": 1}
    with caplog.at_level(logging.WARNING):
        assert main(_argv(cohort, "dmsf_teacher", "diagnosis", tmp_path, params=params)) == 0
    text = caplog.text
    assert "have no H&E features at 20x" in text and "0 tiles" in text and "gene expression" in text


def test_empty_bags_policy_error_names_patient(cohort: dict, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """train.empty_bags: error refuses a patient whose slides all have 0 tiles, naming it."""
    params = {**PARAMS, "epochs": 1, "empty_bags": "error"}
    with caplog.at_level(logging.ERROR):
        assert main(_argv(cohort, "abmil", "diagnosis", tmp_path, params=params)) == 1
    assert EMPTY_HE in caplog.text and "0 tiles" in caplog.text and "empty_bags: skip" in caplog.text
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.slow  # the `trained` fixture trains every job of JOBS (~25 s on 2 cores)
def test_student_needs_a_matching_teacher(cohort: dict, trained: dict, tmp_path: Path) -> None:
    assert main(_argv(cohort, "dmsf_student", "diagnosis", tmp_path)) == 1
    wrong_fold = trained[("dmsf_teacher", "diagnosis")] / "checkpoint.pt"
    assert main(_argv(cohort, "dmsf_student", "diagnosis", tmp_path, fold=1, teacher=wrong_fold)) == 1
    wrong_task = trained[("dmsf_teacher", "survival")] / "checkpoint.pt"
    assert main(_argv(cohort, "dmsf_student", "diagnosis", tmp_path, teacher=wrong_task)) == 1
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_survival_student_uses_its_teachers_bins(cohort: dict, trained: dict, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The student trains on patients without genes too (P01), so its own bin edges would differ from
    the teacher's: it takes the teacher's, stored in the checkpoint, and refuses a checkpoint without them."""
    ckpt = torch.load(trained[("dmsf_teacher", "survival")] / "checkpoint.pt", weights_only=True)
    edges = [float("-inf"), 1.0, 2.0, 3.0, float("inf")]  # no training set would give these
    torch.save({**ckpt, "bin_edges": edges}, tmp_path / "teacher.pt")
    params = {**PARAMS, "epochs": 1}
    out = tmp_path / "student"
    assert main(_argv(cohort, "dmsf_student", "survival", out, params=params, teacher=tmp_path / "teacher.pt")) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["bin_edges"] == edges
    pred = pd.read_parquet(out / "predictions.parquet")
    assert (pred.bin == np.clip(np.searchsorted(edges, pred.time, side="right") - 1, 0, 3)).all()
    torch.save({**ckpt, "bin_edges": None}, tmp_path / "old_teacher.pt")
    with caplog.at_level(logging.ERROR):
        assert main(_argv(cohort, "dmsf_student", "survival", tmp_path / "refused", params=params,
                          teacher=tmp_path / "old_teacher.pt")) == 1  # an input error: exit 1
    assert "bin edges" in caplog.text


def test_adam_matches_torch_optim() -> None:
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ours = copy.deepcopy(ref)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=1e-3)
    opt_ours = Adam(ours.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(30):
        x = torch.randn(3, 5)
        for model, opt in ((ref, opt_ref), (ours, opt_ours)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(ref.parameters(), ours.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_harrell_c_matches_lifelines() -> None:
    rng = np.random.default_rng(0)
    time_ = np.round(rng.exponential(10, 60))  # rounded: tied times
    event = rng.random(60) < 0.6
    risk = np.round(rng.normal(size=60), 1)  # tied risks
    expected = concordance_index(time_, -risk, event)
    assert harrell_c(time_, risk, event) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(harrell_c(time_[:3], risk[:3], np.zeros(3, bool)))


def test_external_cohort_is_predicted_zero_shot(cohort: dict, tmp_path: Path) -> None:
    """Patients of an external cohort (split `external` in folds.parquet) are never trained on and are
    predicted by the fold's model, with their cohort in the predictions."""
    folds = pd.read_parquet(cohort["folds"])
    external = ["P02", "P05", "P08"]
    folds["split"] = folds.split.where(~folds.patient_id.isin(external), "external")
    folds["cohort"] = np.where(folds.patient_id.isin(external), "site-B", "site-A")
    folds.to_parquet(tmp_path / "folds.parquet")
    out = tmp_path / "abmil"
    argv = _argv({**cohort, "folds": tmp_path / "folds.parquet"}, "abmil", "diagnosis", out,
                 params={**PARAMS, "epochs": 3})
    assert main(argv) == 0
    pred = pd.read_parquet(out / "predictions.parquet")
    ext = pred[pred.split == "external"]
    assert sorted(ext.patient_id) == external and set(ext.cohort) == {"site-B"}
    assert set(pred.cohort[pred.split != "external"]) == {"site-A"}


@pytest.mark.slow  # the `trained` fixture trains every job of JOBS (~25 s on 2 cores)
def test_variant_trains_under_its_own_name(cohort: dict, trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    argv = _argv(cohort, "dmsf_student", "diagnosis", out, params={**PARAMS, "epochs": 2})
    assert main([*argv, "--name", "dmsf_student-scratch", "--scratch"]) == 0
    pred = pd.read_parquet(out / "predictions.parquet")
    assert set(pred.model) == {"dmsf_student-scratch"}
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ckpt["model"], ckpt["base_model"], ckpt["teacher"]) == ("dmsf_student-scratch", "dmsf_student", None)
    # a scratch student does not read genes: the patient without genes is used
    assert NO_GENES[0] in set(pred.patient_id)
    teacher = trained[("dmsf_teacher", "diagnosis")] / "checkpoint.pt"
    assert main([*_argv(cohort, "dmsf_student", "diagnosis", tmp_path / "x", teacher=teacher), "--scratch"]) == 1


@pytest.fixture(scope="session")
def trained_mif(cohort: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mif_models")
    outs = {}
    for task in ("diagnosis", "survival"):
        outs[task] = root / task
        assert main(_argv(cohort, "fluoroformer", task, outs[task])) == 0
    return outs


@pytest.mark.parametrize("task", ["diagnosis", "survival"])
def test_fluoroformer_trains_on_the_mif_patients(trained_mif: dict, cohort: dict, task: str) -> None:
    out = trained_mif[task]
    pred = pd.read_parquet(out / "predictions.parquet")
    assert not set(pred.patient_id) & NO_MIF and NO_HE in set(pred.patient_id)  # mIF only: no H&E needed
    test_ids = set(pred.patient_id[pred.split == "test"])
    att = pd.read_parquet(out / "attention.parquet")
    assert set(att["head"]) == {"fluoroformer"} and set(att.mag) == {"20x"}
    assert set(att.patient_id) == test_ids and att.slide_id.str.endswith("_mif").all()
    assert np.allclose(att.groupby("patient_id").weight.sum(), 1.0, atol=1e-4)
    markers = pd.read_parquet(out / "marker_attention.parquet")
    assert list(markers.columns) == ["patient_id", "slide_id", "mag", "marker", "weight"]
    assert set(markers.patient_id) == test_ids and set(markers.slide_id) == set(att.slide_id)
    assert (markers.groupby("slide_id").marker.apply(tuple) == MARKERS).all()  # the stores' channel names
    assert np.allclose(markers.groupby("slide_id").weight.sum(), 1.0, atol=1e-4)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["markers"] == list(MARKERS) and ckpt["dims"]["markers"] == len(MARKERS)


def test_fluoroformer_beats_chance(trained_mif: dict) -> None:
    pred = pd.read_parquet(trained_mif["diagnosis"] / "predictions.parquet")
    test = pred[pred.split == "test"]
    auc = roc_auc_score(test.y_true, test[[f"prob_{c}" for c in DIAGNOSES]].to_numpy(), multi_class="ovr")
    assert auc >= 0.8, f"fluoroformer test AUC {auc:.2f}"
    surv = pd.read_parquet(trained_mif["survival"] / "predictions.parquet")
    assert concordance_index(surv.time, -surv.risk, surv.event) > 0.6


def test_patients_without_mif_are_skipped_and_a_cohort_without_mif_fails(
        cohort: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = {**PARAMS, "epochs": 1}
    with caplog.at_level(logging.WARNING):
        assert main(_argv(cohort, "fluoroformer", "diagnosis", tmp_path / "a", params=params)) == 0
    assert "have no mIF features at 20x" in caplog.text
    manifest = pd.read_parquet(cohort["manifest"])
    manifest[manifest.modality == "he"].to_parquet(tmp_path / "he_only.parquet")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        argv = _argv({**cohort, "manifest": tmp_path / "he_only.parquet"}, "fluoroformer", "diagnosis", tmp_path / "b",
                     params=params)
        assert main(argv) == 1
    assert "no mIF feature store" in caplog.text and "modality mif" in caplog.text
    assert not (tmp_path / "b" / "checkpoint.pt").exists()


# ---- tile-grid positions (pos_{mag}) ----------------------------------------------------------------
def test_tile_positions_are_in_tile_units() -> None:
    from pathomix.train.bags import tile_positions

    coords = np.array([[512, 256], [768, 256], [512, 768]])
    pos = tile_positions(coords, {"patch_size_level0": 256, "patch_size": 256, "overlap": 0})
    assert pos.tolist() == [[0, 0], [1, 0], [0, 2]]
    # 10x tiles read at level 0 of a 20x slide: 512 level-0 px per tile; overlap in px at target
    assert tile_positions(coords * 2, {"patch_size_level0": 512, "patch_size": 256}).tolist() == pos.tolist()
    assert tile_positions(coords, {"patch_size_level0": 256, "patch_size": 256, "overlap": 128})[1].tolist() == [2, 0]
    assert tile_positions(coords, {}).tolist() == pos.tolist()  # a store without attributes: inferred spacing


def test_bags_carry_positions_and_subsample_them_with_their_tiles(cohort: dict) -> None:
    from pathomix.tasks import get_task
    from pathomix.train.data import Needs, Sources, load_cohort
    from pathomix.train.loop import batch_inputs

    src = Sources(cohort["clinical"], cohort["folds"], cohort["manifest"])
    patients = load_cohort(src, get_task("diagnosis"), 0, Needs(mags=("20x",), load_wsi=True, require_wsi=True))
    p = next(q for q in patients.patients if q.patient_id == MULTI_SLIDE[1])  # two slides side by side
    pos, bag = p.inputs["pos_20x"], p.bags["wsi_20x"]
    assert pos.shape == (len(bag), 2) and pos[:, 1].eq(0).all()
    first = torch.from_numpy(bag.slide_ids == bag.slide_ids[0])
    assert pos[first, 0].tolist() == list(range(int(first.sum())))  # the synthetic stores are one row of tiles
    assert pos[~first, 0].min() == pos[first, 0].max() + 2  # the second slide starts one empty column later
    g = torch.Generator().manual_seed(0)
    batch = batch_inputs(p, torch.device("cpu"), max_tiles=5, generator=g)
    assert batch["wsi_20x"].shape == (1, 5, D) and batch["pos_20x"].shape == (1, 5, 2)
    rows = [int((pos == xy).all(dim=1).nonzero()) for xy in batch["pos_20x"][0]]  # positions are unique
    assert torch.equal(batch["wsi_20x"][0], p.inputs["wsi_20x"][rows].float())


def test_mif_bags_sit_next_to_the_h_and_e_bags_and_are_subsampled_on_their_own(cohort: dict) -> None:
    from pathomix.tasks import get_task
    from pathomix.train.data import Needs, Sources, load_cohort
    from pathomix.train.loop import batch_inputs

    src = Sources(cohort["clinical"], cohort["folds"], cohort["manifest"])
    needs = Needs(mags=("20x",), load_wsi=True, load_mif=True, require_mif=True)
    loaded = load_cohort(src, get_task("diagnosis"), 0, needs)
    assert loaded.markers == MARKERS and loaded.dims["markers"] == len(MARKERS)
    p = next(q for q in loaded.patients if q.patient_id == MULTI_SLIDE[1])
    assert set(p.inputs) == {"wsi_20x", "pos_20x", "mif_20x"}  # positions only for the H&E tiles
    assert set(p.bags) == {"wsi_20x", "mif_20x"} and len(p.bags["mif_20x"]) != len(p.bags["wsi_20x"])
    batch = batch_inputs(p, torch.device("cpu"), max_tiles=5, generator=torch.Generator().manual_seed(0))
    assert batch["mif_20x"].shape == (1, 5, len(MARKERS), D) and batch["pos_20x"].shape == (1, 5, 2)
    mif = p.inputs["mif_20x"].float()
    assert all((mif == tile).flatten(1).all(dim=1).any() for tile in batch["mif_20x"][0])  # tiles of the bag


# ---- seed models (KS-Fusion, UMEML) on diagnosis -----------------------------------------------------
SEED_MODELS = ["ksfusion", "umeml"]


@pytest.fixture(scope="session")
def seed_trained(cohort: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seed_models")
    for model in SEED_MODELS:
        assert main(_argv(cohort, model, "diagnosis", root / model)) == 0
    return {m: root / m for m in SEED_MODELS}


@pytest.mark.slow  # the `seed_trained` fixture trains SEED_MODELS (~30 s on 2 cores)
@pytest.mark.parametrize("model", SEED_MODELS)
def test_seed_model_diagnosis_beats_chance(seed_trained: dict, cohort: dict, model: str) -> None:
    out = seed_trained[model]
    pred = pd.read_parquet(out / "predictions.parquet")
    test = pred[pred.split == "test"]
    auc = roc_auc_score(test.y_true, test[[f"prob_{c}" for c in DIAGNOSES]].to_numpy(), multi_class="ovr")
    assert auc >= 0.85 and (test.y_true == test.y_pred).mean() >= 0.7, f"{model} test AUC {auc:.2f}"
    used = set(pred.patient_id)
    assert NO_GENES[0] not in used and EMPTY_HE not in used and MULTI_SLIDE[0] in used  # WSI + genes
    hist = pd.read_parquet(out / "history.parquet")
    assert ("cgc_conflicts" in hist.columns) == (model == "ksfusion")  # CGC on the tumour/TME halves
    att = pd.read_parquet(out / "attention.parquet")
    assert set(att.patient_id) == set(test.patient_id) and (att.mag == "20x").all()
    assert np.allclose(att.groupby(["patient_id", "head"]).weight.sum(), 1.0, atol=1e-4)
    assert (out / "gene_importance.parquet").exists()


# ---- joint multi-task training (UMEML: one decoder for every task) ----------------------------------
def test_umeml_trains_diagnosis_and_survival_in_one_job(cohort: dict, tmp_path: Path) -> None:
    outs = [tmp_path / "diagnosis", tmp_path / "survival"]
    argv = _argv(cohort, "umeml", "diagnosis", outs[0])
    argv[argv.index("--task") + 1:argv.index("--task") + 2] = ["diagnosis", "survival"]
    argv[argv.index("--out") + 1:] = [str(o) for o in outs]
    assert main(argv) == 0
    diag, surv = (pd.read_parquet(o / "predictions.parquet") for o in outs)
    assert set(diag.task) == {"diagnosis"} and "y_true" in diag and set(surv.task) == {"survival"} and "risk" in surv
    test = diag[diag.split == "test"]
    auc = roc_auc_score(test.y_true, test[[f"prob_{c}" for c in DIAGNOSES]].to_numpy(), multi_class="ovr")
    st = surv[surv.split == "test"]
    c = harrell_c(st.time.to_numpy(), st.risk.to_numpy(), st.event.to_numpy(bool))
    assert auc >= 0.8 and c > 0.6, (auc, c)
    ckpts = [torch.load(o / "checkpoint.pt", weights_only=True) for o in outs]
    assert [k["task"] for k in ckpts] == ["diagnosis", "survival"]
    assert all(k["joint_tasks"] == ["diagnosis", "survival"] for k in ckpts)
    heads = {k.split(".")[1] for k in ckpts[0]["model_state"] if k.startswith("heads.")}
    assert heads == {"diagnosis", "survival"}  # one model with both heads, saved with each task
    assert ckpts[0]["bin_edges"] is None and len(ckpts[1]["bin_edges"]) == 5
    hist = [pd.read_parquet(o / "history.parquet") for o in outs]
    pd.testing.assert_frame_equal(hist[0], hist[1])  # one training run


def test_joint_objective_sums_the_tasks_a_patient_has() -> None:
    from pathomix.tasks import get_task
    from pathomix.train.objectives import joint_objective

    tasks = [get_task("diagnosis"), get_task("survival")]
    full = {"diagnosis": {"y": 1}, "survival": {"time": 10.0, "event": 1, "bin": 2}}
    only_diag = {"diagnosis": {"y": 0}}
    joint, views = joint_objective(tasks, [full, only_diag], torch.device("cpu"))
    logits = {"diagnosis": torch.tensor([[0.2, 1.0, -0.5]]), "survival": torch.tensor([[0.1, 0.3, -0.2, 0.0]])}
    both = views["diagnosis"].loss(logits, full) + views["survival"].loss(logits, full)
    assert torch.isclose(joint.loss(logits, full), both)
    assert torch.isclose(joint.loss(logits, only_diag), views["diagnosis"].loss(logits, only_diag))
    row = joint.rows(logits, only_diag)
    assert set(row) == {f"diagnosis:{c}" for c in views["diagnosis"].columns}


def test_a_single_task_model_refuses_several_tasks(cohort: dict, tmp_path: Path, caplog) -> None:
    argv = _argv(cohort, "abmil", "diagnosis", tmp_path / "a")
    argv[argv.index("--task") + 1:argv.index("--task") + 2] = ["diagnosis", "survival"]
    argv[argv.index("--out") + 1:] = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(argv) == 1
    assert "abmil trains one task at a time" in caplog.text


def test_manifest_paths_are_relative_to_the_results_folder(cohort: dict, tmp_path: Path) -> None:
    """The manifest stage writes store paths relative to results/ (DESIGN §4), so a results folder can be moved;
    training resolves them against the manifest's own results folder (absolute paths, e.g. imported stores, stay)."""
    import shutil

    from pathomix import paths as P
    from pathomix.features.manifest import main as manifest_main
    from pathomix.train.bags import read_manifest

    res = tmp_path / "results"
    src = pd.read_parquet(cohort["manifest"])
    stores = []
    for row in src[src.modality == "he"].head(4).itertuples():
        dst = P.features(res, "synthetic", row.mag, row.slide_id)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(row.path, dst)
        stores.append(str(dst))
    sheet = tmp_path / "slides.tsv"
    patients = dict(zip(src.slide_id, src.patient_id, strict=True))
    ids = sorted({Path(s).stem for s in stores})
    pd.DataFrame({"slide_id": ids, "patient_id": [patients[i] for i in ids], "path": "x.svs",
                  "modality": "he"}).to_csv(sheet, sep="\t", index=False)
    out = P.manifest(res, "synthetic")
    assert manifest_main(["--slides", str(sheet), "--stores", *stores, "--out", str(out)]) == 0
    written = pd.read_parquet(out)
    assert not any(Path(p).is_absolute() for p in written.path)
    assert written.path.iloc[0].startswith("features/synthetic/")
    moved = tmp_path / "elsewhere"
    shutil.move(res, moved)
    rows = read_manifest(P.manifest(moved, "synthetic"), sorted(set(written.mag)))
    assert all(Path(p).is_file() and Path(p).is_relative_to(moved) for p in rows.path)



@pytest.mark.parametrize("task", ["survival", "diagnosis"])
def test_cox_clinical_baseline_on_age(cohort: dict, tmp_path: Path, task: str) -> None:
    """cox_clinical on train.covariates [age] (planted: glioblastoma patients are older and die sooner): fitted
    in closed form on the training patients, it ranks/classifies the test patients better than chance."""
    out = tmp_path / "cox"
    assert main(_argv(cohort, "cox_clinical", task, out, params={**PARAMS, "covariates": ["age"]})) == 0
    pred = pd.read_parquet(out / "predictions.parquet")
    test = pred[pred.split == "test"]
    assert set(pred.split) == {"val", "test"} and (pred.encoder == "").all()
    if task == "survival":
        assert harrell_c(test.time.to_numpy(), test.risk.to_numpy(), test.event.to_numpy(bool)) > 0.6
    else:
        probs = test[[f"prob_{c}" for c in DIAGNOSES]].to_numpy()
        assert np.allclose(probs.sum(1), 1) and (test.y_pred == test.y_true).mean() > 0.5
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["covariate_stats"]["names"] == ("age",) or list(ckpt["covariate_stats"]["names"]) == ["age"]


def test_cox_clinical_without_covariates_names_the_fix(cohort: dict, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    assert main(_argv(cohort, "cox_clinical", "survival", tmp_path / "c")) == 1
    assert "train.covariates is empty" in caplog.text


def test_covariates_enter_a_model_by_late_fusion(cohort: dict, tmp_path: Path) -> None:
    """abmil with train.covariates [age]: the covariate transform travels in the checkpoint, the fusion weights
    moved away from their zero start, and the model reloads from the checkpoint."""
    out = tmp_path / "abmil"
    params = {**PARAMS, "epochs": 4, "patience": 4, "covariates": ["age"]}
    assert main(_argv(cohort, "abmil", "diagnosis", out, params=params)) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["dims"]["covariates"] == 1 and ckpt["covariate_stats"]["numeric"]["age"]
    fusion = ckpt["model_state"]["heads._.weight"]
    assert fusion.shape == (len(DIAGNOSES), 1) and fusion.abs().sum() > 0


def test_cohort_check_asks_for_covariates() -> None:
    from pathomix.catalog import missing_cohort_inputs

    cfg = {"slides": None, "genes": None, "train": {"models": ["cox_clinical"], "covariates": []}}
    assert any("train.covariates is empty" in m for m in missing_cohort_inputs(["cox_clinical"], cfg))
    cfg["train"]["covariates"] = ["age"]
    assert missing_cohort_inputs(["cox_clinical"], cfg) == []
    cfg["clinical"] = "c.tsv"  # at parse time the Snakefile passes the clinical sheet's header
    assert missing_cohort_inputs(["cox_clinical"], cfg, clinical_columns={"patient_id", "age"}) == []
    msg = missing_cohort_inputs(["cox_clinical"], cfg, clinical_columns={"patient_id"})
    assert len(msg) == 1 and "['age']" in msg[0] and "c.tsv" in msg[0]


def test_several_folds_in_one_process_equal_one_process_per_fold(cohort: dict[str, Path], tmp_path: Path) -> None:
    """`--fold 0 1` (rule train_folds) trains each fold as its own job would: the same predictions and weights;
    per-fold inputs and --out folders are matched by position, and a count mismatch is a clear error."""
    params = {**PARAMS, "epochs": 4, "patience": 4}
    teacher = {}
    for k in (0, 1):  # the students' teachers, one per fold
        teacher[k] = tmp_path / "teacher" / f"fold{k}"
        assert main(_argv(cohort, "dmsf_teacher", "diagnosis", teacher[k], fold=k, params=params)) == 0
    for k in (0, 1):
        assert main(_argv(cohort, "dmsf_student", "diagnosis", tmp_path / "one" / f"fold{k}", fold=k, params=params,
                          teacher=teacher[k] / "checkpoint.pt")) == 0
    argv = _argv(cohort, "dmsf_student", "diagnosis", tmp_path / "both" / "fold0", params=params)
    both = [tmp_path / "both" / f"fold{k}" for k in (0, 1)]
    argv[argv.index("--fold") + 1:argv.index("--fold") + 2] = ["0", "1"]
    argv[argv.index("--hvg") + 1:argv.index("--hvg") + 2] = [str(cohort["hvg"])] * 2
    argv[argv.index("--subspaces") + 1:argv.index("--subspaces") + 2] = [str(cohort["subspaces"])] * 2
    argv[argv.index("--out") + 1:] = [str(p) for p in both]
    assert main([*argv, "--teacher-checkpoint", *(str(teacher[k] / "checkpoint.pt") for k in (0, 1))]) == 0
    for k in (0, 1):
        runs = (tmp_path / "one" / f"fold{k}", tmp_path / "both" / f"fold{k}")
        pd.testing.assert_frame_equal(*(pd.read_parquet(d / "predictions.parquet") for d in runs))
        a, b = (torch.load(d / "checkpoint.pt", weights_only=True)["model_state"] for d in runs)
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert main([*argv, "--teacher-checkpoint", str(teacher[0] / "checkpoint.pt")]) == 1  # one checkpoint, two folds
