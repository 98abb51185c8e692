"""Auxiliary training terms, by name (``ModelParams.aux_losses`` maps name → weight).

A term takes the per-subspace, per-magnification representations a DMSF-style model
computed, ``{subspace: {mag: (B, H)}}``, and returns an unweighted scalar, or None when it
does not apply to this bag (e.g. only one magnification present). The model multiplies
by the weight and reports it under ``outputs["aux"][name]``.

``igc`` is the inter-magnification gene-expression consistency of DMSF in a Gram form (see
:func:`igc_gram`); ``igc_mse`` is a simpler per-subspace alternative. ``ggc`` is KS-Fusion's
gene-guided consistency (:func:`ggc_gram`): the same Gram form between the gene tokens, passed
as the view :data:`GENE_VIEW` next to the magnifications, and the histology representations.
A term whose views are absent returns None (``igc`` ignores the gene view). The
confidence-guided gradient coordination (CGC) acts on gradients, not on the loss:
:mod:`pathomix.train.cgc`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import combinations

import torch
import torch.nn.functional as F

SubspaceReps = Mapping[str, Mapping[str, torch.Tensor]]
AuxTerm = Callable[[SubspaceReps], "torch.Tensor | None"]
GENE_VIEW = "genes"  # the view of the subspace gene tokens in SubspaceReps (not a magnification)


def igc_mse(reps: SubspaceReps) -> torch.Tensor | None:
    """Inter-magnification consistency: MSE between L2-normalised representations of the
    same subspace at each pair of magnifications, averaged over subspaces and pairs."""
    terms = [
        F.mse_loss(F.normalize(by_mag[a], dim=-1), F.normalize(by_mag[b], dim=-1))
        for by_mag in reps.values()
        for a, b in combinations(sorted(set(by_mag) - {GENE_VIEW}), 2)
    ]
    return torch.stack(terms).mean() if terms else None


def _subspace_matrix(reps: SubspaceReps, mag: str) -> torch.Tensor:
    """(B, S, H): the L2-normalised subspace representations at ``mag``, subspaces in sorted order."""
    return F.normalize(torch.stack([reps[s][mag] for s in sorted(reps)], dim=1), dim=-1)


def _gram_consistency(reps: SubspaceReps, a: str, b: str) -> torch.Tensor:
    """mean((Z_a Z_aᵀ − Z_b Z_bᵀ)²) + mean(1 − diag(Z_a Z_bᵀ)) between two views of the subspaces."""
    za, zb = _subspace_matrix(reps, a), _subspace_matrix(reps, b)
    gram_gap = (za @ za.transpose(1, 2) - zb @ zb.transpose(1, 2)).pow(2).mean()
    cross_diag = torch.diagonal(za @ zb.transpose(1, 2), dim1=1, dim2=2)
    return gram_gap + (1.0 - cross_diag).mean()


def _common_views(reps: SubspaceReps) -> set[str]:
    return set.intersection(*(set(by_view) for by_view in reps.values())) if reps else set()


def igc_gram(reps: SubspaceReps) -> torch.Tensor | None:
    """Inter-magnification gene-expression consistency (IGC) through gene-guided Gram matrices.

    At each magnification ``m`` the gene-guided subspace representations form Z_m (S × H,
    rows L2-normalised; S = tumour, TME). For each pair of magnifications (a, b):

        IGC = mean((Z_a Z_aᵀ − Z_b Z_bᵀ)²)  +  mean(1 − diag(Z_a Z_bᵀ))

    The first term asks the subspaces to relate to each other the same way at both scales
    (Gram matrices equal), the second aligns each subspace with itself across scales (the
    cross-Gram diagonal → 1). Both are bounded (≤ 4 and ≤ 2) and exactly zero for identical
    inputs, so a weight near 0.1 works without tuning. The reference implementation instead
    minimises the variance of the cross-Gram diagonal with weight 1e4: unbounded in scale
    (it depends on the feature norm) and zero for any constant diagonal, including −1.
    """
    terms = [_gram_consistency(reps, a, b) for a, b in combinations(sorted(_common_views(reps) - {GENE_VIEW}), 2)]
    return torch.stack(terms).mean() if terms else None


def ggc_gram(reps: SubspaceReps) -> torch.Tensor | None:
    """Gene-guided consistency (KS-Fusion): the Gram form of :func:`igc_gram` between the gene
    tokens (view :data:`GENE_VIEW`) and the histology representations at each magnification.

    The subspaces must relate to each other in the histology as they do in the genes (Gram
    matrices equal), and each subspace's histology representation must align with its gene token
    (cross-Gram diagonal → 1). None without a gene view (e.g. a step whose genes were dropped).
    The paper's batch loss compares, over the patients of a batch, the Gram matrix of the gene
    embeddings with that of the deformation grids; our loop trains one patient per step, so the
    Gram matrices here are over the subspaces of one patient.
    """
    views = _common_views(reps)
    if GENE_VIEW not in views:
        return None
    terms = [_gram_consistency(reps, GENE_VIEW, m) for m in sorted(views - {GENE_VIEW})]
    return torch.stack(terms).mean() if terms else None


AUX_TERMS: dict[str, AuxTerm] = {"igc": igc_gram, "igc_mse": igc_mse, "ggc": ggc_gram}


def aux_losses(reps: SubspaceReps, weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Weighted auxiliary terms named in ``weights`` (unknown names raise, zero weights skip)."""
    unknown = sorted(set(weights) - set(AUX_TERMS))
    if unknown:
        raise KeyError(f"unknown auxiliary loss(es) {unknown}; known: {sorted(AUX_TERMS)}")
    out: dict[str, torch.Tensor] = {}
    for name, weight in weights.items():
        if not weight:
            continue
        value = AUX_TERMS[name](reps)
        if value is not None:
            out[name] = weight * value
    return out
