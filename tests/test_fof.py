"""FoF mechanisms (pathomix.models.fof): Grad-CAM views, InfoNCE/FRL, EMA teacher, MCA."""

from __future__ import annotations

import math

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
