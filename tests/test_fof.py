"""FoF mechanisms (pathomix.models.fof): Grad-CAM views, InfoNCE/FRL, EMA teacher, MCA."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pathomix.models.fof import (
    BiomarkerProjectors,
    EMATeacher,
    TileViT,
    dummy_targets,
    focus_views,
    frl_loss,
    grad_cam,
    gram_mse,
    info_nce,
    mca_loss,
    supervised_contrastive,
)
from pathomix.models.spec import ModelParams


def test_focus_views_split_the_image_at_the_threshold():
    images = torch.rand(2, 3, 8, 8) + 0.1            # no zero pixel, so "left out" is visible
    cam = torch.tensor([[[0.9, 0.2], [0.5, 0.49]], [[0.0, 0.0], [0.0, 1.0]]])   # (B, 2, 2) → 4x4-pixel cells
    positive, negative, mask = focus_views(images, cam, threshold=0.5)
    want = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 1]]], dtype=torch.bool)   # ≥ 0.5 is positive
    assert torch.equal(mask, want.repeat_interleave(4, 1).repeat_interleave(4, 2))
    assert torch.equal(positive + negative, images)                    # every pixel in exactly one view
    assert torch.all(positive[:, :, :4, :4][0] > 0) and torch.all(positive[0, :, :4, 4:] == 0)
    assert torch.all(negative[0, :, :4, 4:] > 0) and torch.all(negative[0, :, :4, :4] == 0)


def test_grad_cam_marks_the_tokens_that_carry_the_scored_direction():
    torch.manual_seed(0)
    w = torch.randn(8)
    base = 0.05 * torch.randn(3, 16, 8)
    base[:, 5] += 3 * w            # token 5 carries the direction the class score reads
    base[:, 9] -= 3 * w            # token 9 carries the opposite: no positive contribution
    tokens = base.clone().requires_grad_(True)
    score = (tokens @ w).mean(dim=1)
    cam = grad_cam(score, tokens, (4, 4))
    flat = cam.reshape(3, -1)
    assert cam.shape == (3, 4, 4) and flat.min() >= 0 and flat.max() <= 1
    assert torch.all(flat.argmax(dim=1) == 5) and torch.all(flat[:, 5] == 1) and torch.all(flat[:, 9] == 0)


def test_info_nce_prefers_the_true_positive():
    torch.manual_seed(0)
    a = torch.randn(6, 16)
    negatives = torch.randn(10, 16)
    matched = info_nce(a, a.clone(), negatives)
    unmatched = info_nce(a, torch.randn(6, 16), negatives)
    assert matched < unmatched
    # with the positive among identical negatives the loss is log(1 + n): nothing to tell apart
    assert math.isclose(float(info_nce(a[:1], a[:1], a[:1].repeat(10, 1))), math.log(11), rel_tol=1e-5)


def test_frl_pulls_positive_towards_teacher_global_and_is_detached_from_the_teacher():
    g = torch.randn(4, 8, requires_grad=True)
    neg = torch.randn(4, 8, requires_grad=True)
    pos = torch.randn(4, 8, requires_grad=True)
    frl_loss(pos, g, neg).backward()
    assert pos.grad is not None and g.grad is None and neg.grad is None


def test_ema_teacher_moves_by_one_minus_momentum():
    student = torch.nn.Linear(3, 2)
    teacher = EMATeacher(student, momentum=0.9)
    before = teacher.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student)
    torch.testing.assert_close(teacher.model.weight, 0.9 * before + 0.1 * student.weight)
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_supervised_contrastive_is_lower_when_statuses_cluster():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, -1])
    clustered = torch.cat([torch.tensor([[1.0, 0.0]]).repeat(3, 1), torch.tensor([[0.0, 1.0]]).repeat(3, 1),
                           torch.randn(1, 2)]) + 0.01 * torch.randn(7, 2)
    mixed = clustered[[0, 3, 1, 4, 2, 5, 6]]
    assert supervised_contrastive(clustered, labels) < supervised_contrastive(mixed, labels)
    assert supervised_contrastive(torch.randn(3, 2), torch.tensor([0, 1, -1])) == 0   # no same-label pair


def test_gram_mse_is_zero_for_agreeing_views_only():
    a = torch.randn(5, 4)
    assert gram_mse(a, 3 * a) < 1e-10
    assert gram_mse(a, torch.randn(5, 4)) > 0


@pytest.mark.parametrize("markers", [("idh", "codel", "cdkn2a")])
def test_one_fof_step_trains_every_part(markers):
    """Global view → Grad-CAM on the true class → views → classification (negatives to the dummy class)
    + FRL against the EMA teacher + MCA; every part gets gradients, the teacher moves."""
    torch.manual_seed(0)
    model = TileViT(n_classes=3, img_size=32)
    teacher = EMATeacher(model, momentum=0.5)
    projectors = BiomarkerProjectors(markers, model.backbone.num_features, hidden=16, out=8)
    images, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    labels = {m: torch.tensor([0, 1, 1, -1]) for m in markers}
    out = model(images)
    cam = grad_cam(out["logits"].gather(1, y[:, None])[:, 0], out["tokens"], model.grid)
    positive, negative, _ = focus_views(images, cam)
    pos_out, neg_out = model(positive), model(negative)
    with torch.no_grad():
        t_global, t_neg = teacher.model(images)["cls"], teacher.model(negative)["cls"]
    loss = (F.cross_entropy(out["logits"], y) + F.cross_entropy(pos_out["logits"], y)
            + F.cross_entropy(neg_out["logits"], dummy_targets(4, 3))
            + 0.2 * frl_loss(pos_out["cls"], t_global, t_neg)
            + mca_loss({"global": out["cls"], "positive": pos_out["cls"]}, projectors, labels))
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in projectors.parameters())
    before = next(teacher.model.parameters()).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    teacher.update(model)
    assert not torch.equal(before, next(teacher.model.parameters()))
    assert out["logits"].shape == (4, 4)   # 3 classes + the dummy class


def test_a_tile_without_focus_sits_out_the_view_terms(monkeypatch):
    """An all-zero Grad-CAM map (flat contribution) leaves a blank positive view and the whole tile as the
    negative view: that tile is not classified blank, not sent to the dummy class, not used in FRL."""
    import pathomix.models.fof as fof

    torch.manual_seed(0)
    model = fof.FoF(3, ModelParams(hidden=16, fof_image_px=32, fof_biomarkers=("idh",)))
    teacher = EMATeacher(model)
    images, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    cams = torch.tensor([[1.0, 0.0], [0.7, 0.2]]).repeat(4, 1, 1)  # the 2 × 2 token grid of a 32 px ViT
    cams[1] = 0.0                                                   # tile 1: flat map, no focus
    monkeypatch.setattr(fof, "grad_cam", lambda score, tokens, grid: cams)
    seen = {}
    real_frl = fof.frl_loss
    monkeypatch.setattr(fof, "frl_loss", lambda a, g, n, tau: seen.update(a=a, g=g, n=n) or real_frl(a, g, n, tau))
    rows_seen = []

    def task_loss(logits, rows=None):
        rows_seen.append(rows)
        return F.cross_entropy(logits, y if rows is None else y[rows])

    terms = model.training_loss(images, y, task_loss, {"idh": torch.tensor([0, 1, 0, 1])}, teacher)
    keep = torch.tensor([True, False, True, True])
    assert len(seen["a"]) == 3 and len(seen["n"]) == 3
    with torch.no_grad():
        assert torch.allclose(seen["g"], teacher.model(images)["cls"][keep])
        negative = focus_views(images, cams)[1][keep]
        expected = F.cross_entropy(torch.cat([model(images)["logits"], model(negative)["logits"]]),
                                   torch.cat([y, dummy_targets(3, 3)]))
    assert torch.isclose(terms["dummy"], expected, atol=1e-5)
    assert [r.tolist() for r in rows_seen if r is not None] == [keep.tolist()]  # the positive views' task term
    cams.zero_()  # no tile has a focus: only the global view trains
    seen.clear()
    terms = model.training_loss(images, y, task_loss, {"idh": torch.tensor([0, 1, 0, 1])}, teacher)
    assert not seen and float(terms["frl"]) == 0.0
    with torch.no_grad():
        assert torch.isclose(terms["dummy"], F.cross_entropy(model(images)["logits"], y), atol=1e-5)
    sum(terms.values()).backward()
    assert model.vit.head.weight.grad.abs().sum() > 0
    cams[0, 0, 0] = 1.0
    assert fof.focused(focus_views(images, cams)[2]).tolist() == [True, False, False, False]


# ---- the training stage on real tiled TIFF slides ------------------------------------------------------
CLASS_RGB = {0: (40, 60, 200), 1: (30, 170, 60), 2: (90, 20, 90)}  # the planted colour of each diagnosis
TILE, SIDE = 256, 512  # four tiles per slide


def _slide(path, rng, cls: int) -> None:
    import tifffile

    img = rng.integers(200, 240, (SIDE, SIDE, 3), dtype=np.uint8)  # pale background
    img[..., 1] -= 40  # pinkish
    yy, xx = np.mgrid[:TILE, :TILE]
    for ty in range(0, SIDE, TILE):
        for tx in range(0, SIDE, TILE):  # one disc of the class colour per tile, somewhere in it
            cy, cx = rng.integers(64, TILE - 64, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 50 ** 2
            img[ty:ty + TILE, tx:tx + TILE][disc] = CLASS_RGB[cls]
    tifffile.imwrite(path, img, tile=(TILE, TILE), photometric="rgb")


@pytest.fixture(scope="module")
def image_cohort(tmp_path_factory):
    from pathomix.io.h5store import COORD_ATTRS, write_coords
    from pathomix.tasks import DIAGNOSES

    root = tmp_path_factory.mktemp("fof_cohort")
    rng = np.random.default_rng(3)
    genotype = {0: ("mut", "non-codel"), 1: ("mut", "codel"), 2: ("wt", "non-codel")}
    slides, clinical, folds, stores = [], [], [], []
    for i in range(24):
        pid, cls = f"P{i:02d}", i % 3
        _slide(root / f"{pid}.tiff", rng, cls)
        slides.append({"slide_id": f"{pid}-A", "patient_id": pid, "path": f"{pid}.tiff", "modality": "he", "mpp": 0.5})
        attrs = {a: 0 for a in COORD_ATTRS} | {
            "patch_size": TILE, "patch_size_level0": TILE, "level0_magnification": 20, "target_magnification": 20,
            "name": f"{pid}-A", "slide_id": f"{pid}-A", "downsample": 1.0, "target_mpp": 0.5, "level0_mpp": 0.5,
            "level0_width": SIDE, "level0_height": SIDE}
        coords = np.array([(x, y) for y in range(0, SIDE, TILE) for x in range(0, SIDE, TILE)], np.int64)
        stores.append(root / "tiles" / "20x" / f"{pid}-A.h5")
        write_coords(stores[-1], coords, attrs)
        idh, codel = genotype[cls]
        clinical.append({"patient_id": pid, "idh": idh, "codel_1p19q": codel, "cdkn2a": "wt", "grade": 2,
                         "survival_months": 10.0 + i, "event": 1})
        split = "test" if i % 3 == i // 8 % 3 else ("val" if i % 5 == 1 else "train")  # fold 0: 8 test patients
        folds.append({"patient_id": pid, "fold": 0, "split": split})
    assert {DIAGNOSES[c] for c in range(3)} == set(DIAGNOSES)
    pd.DataFrame(slides).to_csv(root / "slides.tsv", sep="\t", index=False)
    pd.DataFrame(clinical).to_csv(root / "clinical.tsv", sep="\t", index=False)
    pd.DataFrame(folds).to_parquet(root / "folds.parquet")
    return {"root": root, "stores": stores}


def _fof_argv(c, out, task="diagnosis", **params):
    p = {"epochs": 6, "patience": 6, "hidden": 32, "lr": 0.0005, "fof_image_px": 32, "fof_tiles": 4,
         "fof_batch": 16, "seed": 0, **params}
    return ["--model", "fof", "--task", task, "--fold", "0", "--clinical", str(c["root"] / "clinical.tsv"),
            "--folds", str(c["root"] / "folds.parquet"), "--slides", str(c["root"] / "slides.tsv"),
            "--tiles", *map(str, c["stores"]), "--params", json.dumps(p), "--out", str(out)]


@pytest.fixture(scope="module")
def fof_trained(image_cohort, tmp_path_factory):
    from pathomix.train import main

    out = tmp_path_factory.mktemp("fof_model")
    assert main(_fof_argv(image_cohort, out)) == 0
    return out


def test_fof_trains_from_tile_images_and_beats_chance(fof_trained):
    from sklearn.metrics import roc_auc_score

    pred = pd.read_parquet(fof_trained / "predictions.parquet")
    test = pred[pred.split == "test"]
    assert len(test) == 8 and set(pred.split) == {"val", "test"}
    auc = roc_auc_score(test.y_true, test[[c for c in test.columns if c.startswith("prob_")]].to_numpy(),
                        multi_class="ovr")
    assert auc >= 0.8, f"FoF test AUC {auc:.2f}"
    hist = pd.read_parquet(fof_trained / "history.parquet")
    assert {"loss_task", "loss_dummy", "loss_frl", "loss_mca"} <= set(hist.columns)  # every FoF term trains
    assert (hist[["loss_frl", "loss_mca"]] > 0).all().all()
    ckpt = torch.load(fof_trained / "checkpoint.pt", weights_only=True)
    assert ckpt["base_model"] == "fof" and ckpt["biomarkers"] == ["idh", "codel_1p19q", "cdkn2a"]
    assert any(k.startswith("projectors.") for k in ckpt["model_state"])


def test_fof_attention_points_at_the_tiles_of_each_test_slide(fof_trained):
    att = pd.read_parquet(fof_trained / "attention.parquet")
    pred = pd.read_parquet(fof_trained / "predictions.parquet")
    assert set(att.patient_id) == set(pred.patient_id[pred.split == "test"])
    assert set(att["head"]) == {"fof"} and set(att.mag) == {"20x"} and set(att.tile_index) == {0, 1, 2, 3}
    assert np.allclose(att.groupby("patient_id").weight.sum(), 1.0, atol=1e-5)


def test_fof_reads_biomarkers_of_training_patients_only(image_cohort):
    from pathomix.train.fof import biomarker_status

    status = biomarker_status(image_cohort["root"] / "clinical.tsv", ["idh", "codel_1p19q", "cdkn2a", "mgmt"],
                              ["P01", "P02", "P04"])
    assert set(status) == {"idh", "codel_1p19q", "cdkn2a"}  # mgmt: not in the sheet, its projector idles
    assert status["idh"] == {"P01": 0, "P02": 1, "P04": 0} and set(status["codel_1p19q"]) == {"P01", "P02", "P04"}


def test_fof_refuses_survival_and_missing_slides(image_cohort, tmp_path, caplog):
    from pathomix.train import main

    assert main(_fof_argv(image_cohort, tmp_path / "s", task="survival")) == 1
    assert "fof trains classification tasks only" in caplog.text
    argv = _fof_argv(image_cohort, tmp_path / "n")
    i = argv.index("--slides")
    assert main(argv[:i] + argv[i + 2:]) == 1
    assert "learns from tile images; pass --slides" in caplog.text
    assert not (tmp_path / "s").exists() and not (tmp_path / "n").exists()
