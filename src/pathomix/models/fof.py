"""FoF mechanisms (seed 000, "Focus on Focus", arXiv 2408.08527) on tile images.

FoF learns from tile images (not from pre-extracted features), so it does not fit the bag models'
``build(dims, task, params)`` contract; this module holds its mechanisms, each tested on its own:

- :class:`TileViT`: ViT-Tiny (timm, random init unless weights are loaded) → class token, patch
  tokens and logits over the task's classes plus one **dummy class** for negative views.
- :func:`grad_cam`: contribution of each patch token to a class score (Grad-CAM on the last
  block's tokens: gradient-averaged channel weights, ReLU, min–max per image to [0, 1]).
- :func:`focus_views`: split each image at ``threshold`` (paper 0.5) of its contribution map into a
  positive view (pixels that support the prediction) and a negative view (the rest); each pixel
  lands in exactly one view. A tile whose map is flat (all zeros: blank positive view, the whole
  tile negative; :func:`focused`) sits out the view terms (positive task, dummy, FRL, MCA views).
- FRL consistency (:func:`frl_loss`): InfoNCE (τ = 0.07) that pulls the student's positive-view
  feature towards the EMA teacher's global feature and pushes it from the teacher's negative-view
  features of the batch; negative views are classified into the dummy class (:func:`dummy_targets`).
  :class:`EMATeacher` keeps the teacher (momentum 0.99).
- MCA (:class:`BiomarkerProjectors`, :func:`supervised_contrastive`, :func:`gram_mse`): one projector
  per biomarker (IDH, 1p/19q, CDKN2A, and any other binary marker of the cohort); in each subspace the
  global/positive views of tiles with the same biomarker status attract (supervised InfoNCE), and the
  views' Gram matrices are kept alike (MSE). Inference uses histology only (the classifier head).

:class:`FoF` puts them together (``build(dims, task, params)`` as every registered model, but it reads
tile images, not feature bags) and :meth:`FoF.training_loss` is one step's loss. The training stage
(:mod:`pathomix.train.fof`) reads the tiles through the coords stores and averages the tiles'
logits per patient.

Where this differs from the paper: the dummy class and the Gram MSE follow the issue's reading of
the method; the contribution map is computed on the ViT's last-block patch tokens (the paper's
pixel-wise gradients are not specified for ViTs) and upsampled with nearest neighbours; the paper
trains on labelled 224 px ROIs, here every tile of a patient carries the patient's label and the
demo reads them at 64 px (``train.fof_image_px``); the ViT starts from random weights (no download);
the MCA weight (``train.fof_mca`` = 1) is not given in the paper summary; the negative views take
part in MCA as the summary lists them (global, positive, negative); a patient's prediction is the
mean of its tiles' logits. The hyperparameters are the ``train.fof_*`` keys (config.yaml).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FOCUS_THRESHOLD = 0.5
TAU = 0.07
EMA_MOMENTUM = 0.99
FRL_WEIGHT = 0.2
BIOMARKERS = ("idh", "codel", "cdkn2a")
MAGS = ("20x",)


class TileViT(nn.Module):
    """ViT-Tiny over tile images → ``cls`` (B, D), ``tokens`` (B, P, D) entering the last block, ``logits`` (B, C + 1).

    The last logit is the dummy class that negative views are trained towards."""

    def __init__(self, n_classes: int, img_size: int = 224, arch: str = "vit_tiny_patch16_224") -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size)
        self.grid = tuple(self.backbone.patch_embed.grid_size)
        self.n_prefix = self.backbone.num_prefix_tokens
        self.head = nn.Linear(self.backbone.num_features, n_classes + 1)
        self.n_classes = n_classes

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``tokens`` are the patch tokens entering the last block: the class token is computed from
        them there, so Grad-CAM can weigh them (the last block's own patch outputs do not feed it)."""
        b = self.backbone
        x = b.norm_pre(b.patch_drop(b._pos_embed(b.patch_embed(images))))
        for block in b.blocks[:-1]:
            x = block(x)
        prefix, tokens = x[:, :self.n_prefix], x[:, self.n_prefix:]
        cls = b.norm(b.blocks[-1](torch.cat([prefix, tokens], dim=1)))[:, 0]   # tokens in the graph by name
        return {"cls": cls, "tokens": tokens, "logits": self.head(cls)}


def grad_cam(score: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B,) class scores and the (B, P, D) tokens they were computed from → (B, h, w) maps in [0, 1].

    Channel weights are the token-averaged gradients of the score; the map is ReLU(Σ_d w_d · t_pd),
    min–max normalised per image (a flat map becomes all zeros)."""
    grads = torch.autograd.grad(score.sum(), tokens, retain_graph=True)[0]
    cam = F.relu((grads.mean(dim=1, keepdim=True) * tokens).sum(dim=-1)).detach()
    low, high = cam.amin(dim=1, keepdim=True), cam.amax(dim=1, keepdim=True)
    cam = (cam - low) / (high - low).clamp_min(1e-12)
    return cam.reshape(len(cam), *grid)


def focus_views(images: torch.Tensor, cam: torch.Tensor,
                threshold: float = FOCUS_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split (B, 3, H, W) images by their (B, h, w) contribution maps → (positive, negative, mask).

    A pixel whose (nearest-upsampled) contribution is ≥ ``threshold`` is in the positive view, every
    other pixel in the negative view; the pixels left out of a view are 0 (the normalised mean)."""
    mask = F.interpolate(cam[:, None].float(), size=images.shape[-2:], mode="nearest") >= threshold
    return images * mask, images * ~mask, mask[:, 0]


def dummy_targets(n: int, n_classes: int, device: torch.device | None = None) -> torch.Tensor:
    """Targets of negative views: the dummy class (index ``n_classes``)."""
    return torch.full((n,), n_classes, dtype=torch.long, device=device)


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Mean InfoNCE of (B, D) anchors against their (B, D) positives and the shared (M, D) negatives
    (cosine similarities over ``tau``)."""
    a, p, n = (F.normalize(x, dim=-1) for x in (anchor, positive, negatives))
    logits = torch.cat([(a * p).sum(-1, keepdim=True), a @ n.T], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(a), dtype=torch.long, device=a.device))


def frl_loss(student_positive: torch.Tensor, teacher_global: torch.Tensor, teacher_negative: torch.Tensor,
             tau: float = TAU) -> torch.Tensor:
    """FRL consistency: the student's positive-view features towards the EMA teacher's global features,
    away from the teacher's negative-view features of the whole batch."""
    return info_nce(student_positive, teacher_global.detach(), teacher_negative.detach(), tau)


class EMATeacher:
    """A frozen copy of the student, updated as ``θ_t ← m θ_t + (1 − m) θ_s`` after each step."""

    def __init__(self, student: nn.Module, momentum: float = EMA_MOMENTUM) -> None:
        self.model = copy.deepcopy(student).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.momentum = momentum

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        for t, s in zip(self.model.parameters(), student.parameters(), strict=True):
            t.mul_(self.momentum).add_(s.detach(), alpha=1 - self.momentum)


class BiomarkerProjectors(nn.Module):
    """One projector (Linear–ReLU–Linear) per biomarker: features (B, D) → {marker: (B, P)}."""

    def __init__(self, markers: Sequence[str], dim: int, hidden: int = 128, out: int = 64) -> None:
        super().__init__()
        self.projectors = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))
                                         for m in markers})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {m: proj(features) for m, proj in self.projectors.items()}


def supervised_contrastive(z: torch.Tensor, labels: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Supervised InfoNCE (Khosla et al.) over (N, P) projections: each row attracts the other rows of
    its label and repels the rest. Rows with a missing label (< 0) and rows without a same-label
    partner are left out; 0 when none is left."""
    keep = labels >= 0
    z, labels = F.normalize(z[keep], dim=-1), labels[keep]
    if len(z) < 2:
        return z.sum() * 0
    sim = z @ z.T / tau
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = sim.masked_fill(eye, float("-inf")).log_softmax(dim=1)
    same = (labels[:, None] == labels[None, :]) & ~eye
    has = same.any(dim=1)
    if not has.any():
        return z.sum() * 0
    per_row = -(log_prob.masked_fill(~same, 0).sum(1)[has] / same.sum(1)[has])
    return per_row.mean()


def gram_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MSE between the Gram matrices of two views' L2-normalised (N, P) projections (0 when they agree)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return F.mse_loss(a @ a.T, b @ b.T)


def mca_loss(views: Mapping[str, torch.Tensor], projectors: BiomarkerProjectors,
             labels: Mapping[str, torch.Tensor], tau: float = TAU,
             rows: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """MCA over the views (e.g. ``global``, ``positive``): per biomarker, supervised contrast of all
    views' projections by biomarker status, plus the Gram MSE between each view and the global one.
    ``rows`` {view: (B,) bool}: the tiles of the batch a (non-global) view holds, when not all of them."""
    rows = rows or {}
    projected = {name: projectors(f) for name, f in views.items()}
    total = next(iter(views.values())).sum() * 0
    for marker in projectors.projectors:
        z = torch.cat([projected[v][marker] for v in views])
        y = torch.cat([labels[marker][rows[v]] if v in rows else labels[marker] for v in views])
        total = total + supervised_contrastive(z, y, tau)
        for name in views:
            if name != "global" and len(projected[name][marker]):
                glob = projected["global"][marker]
                total = total + gram_mse(projected[name][marker], glob[rows[name]] if name in rows else glob)
    return total / max(1, len(projectors.projectors))


def focused(mask: torch.Tensor) -> torch.Tensor:
    """(B,) whether each image's (B, H, W) focus mask splits it: a flat contribution map (all zeros after
    min–max, e.g. a blank tile) gives a blank positive view and the whole tile as the negative view."""
    flat = mask.flatten(1)
    return flat.any(dim=1) & ~flat.all(dim=1)


class FoF(nn.Module):
    """The FoF network: :class:`TileViT` (task outputs + the dummy class) and one projector per biomarker.

    ``forward(images)`` gives the ViT's outputs; inference reads ``logits[:, :n_outputs]`` only, so it
    needs histology alone. The projectors serve the MCA term in training."""

    def __init__(self, n_outputs: int, params: Any) -> None:
        super().__init__()
        self.vit = TileViT(n_outputs, img_size=params.fof_image_px, arch=params.fof_arch)
        self.projectors = BiomarkerProjectors(params.fof_biomarkers, self.vit.backbone.num_features,
                                              hidden=params.hidden)
        self.n_outputs = n_outputs
        self.params = params

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.vit(images)

    def training_loss(self, images: torch.Tensor, cam_index: torch.Tensor,
                      task_loss: Callable[..., torch.Tensor], biomarkers: Mapping[str, torch.Tensor],
                      teacher: EMATeacher) -> dict[str, torch.Tensor]:
        """One step on (B, 3, H, W) images → the weighted terms (their sum is the loss).

        ``cam_index`` (B,): the output whose score Grad-CAM explains (the true class; for survival the
        observed bin); ``task_loss(logits, rows=None)`` maps (B, n_outputs) logits, or those of the tiles
        ``rows`` ((B,) bool) selects, to the task's mean loss over them; ``biomarkers`` {name: (B,) status
        index, −1 = unknown}. A tile without focus (:func:`focused`) takes part in the global-view terms only."""
        p, n = self.params, self.n_outputs
        out = self(images)
        cam = grad_cam(out["logits"].gather(1, cam_index[:, None])[:, 0], out["tokens"], self.vit.grid)
        positive, negative, mask = focus_views(images, cam, p.fof_threshold)
        # tiles whose map has no focus sit out the view terms: no blank positive view is classified or
        # pulled towards the teacher, no whole tile is sent to the dummy class or used as an FRL negative
        keep = focused(mask)
        positive, negative = positive[keep], negative[keep]
        zero = out["logits"].sum() * 0
        pos, neg = (self(positive), self(negative)) if len(positive) else (None, None)
        with torch.no_grad():
            t_global = teacher.model(images)["cls"][keep]
            t_negative = teacher.model(negative)["cls"] if len(negative) else None
        # real images keep their class against the dummy; negative views belong to it
        views = F.cross_entropy(torch.cat([out["logits"], *([neg["logits"]] if neg is not None else [])]),
                                torch.cat([cam_index, dummy_targets(len(negative), n, images.device)]))
        if pos is None:  # no tile of the batch has a focus
            mca_views, task_pos, frl = {"global": out["cls"]}, zero, zero
        else:
            mca_views = {"global": out["cls"], "positive": pos["cls"], "negative": neg["cls"]}
            task_pos = task_loss(pos["logits"][:, :n], keep)
            frl = p.fof_frl * frl_loss(pos["cls"], t_global, t_negative, p.fof_tau)
        return {
            "task": task_loss(out["logits"][:, :n]) + task_pos,
            "dummy": views,
            "frl": frl,
            "mca": p.fof_mca * mca_loss(mca_views, self.projectors, biomarkers, p.fof_tau,
                                        rows={"positive": keep, "negative": keep}),
        }


def build(dims: Mapping[str, Any], task: Any, params: Any) -> FoF:
    """``dims`` is unused (FoF reads images); ``task.n_outputs`` outputs plus the dummy class."""
    return FoF(task.n_outputs, params)
