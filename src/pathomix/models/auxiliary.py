"""Auxiliary training terms, by name (``ModelParams.aux_losses`` maps name → weight).

A term takes the per-subspace, per-magnification representations a DMSF-style model
computed, ``{subspace: {mag: (B, H)}}``, and returns an unweighted scalar, or None when it
does not apply to this bag (e.g. only one magnification present). The model multiplies
by the weight and reports it under ``outputs["aux"][name]``.

``igc`` is the inter-magnification gene-expression consistency of DMSF in a Gram form (see
:func:`igc_gram`); ``igc_mse`` is a simpler per-subspace alternative. The confidence-guided
gradient coordination (CGC) acts on gradients, not on the loss: :mod:`pathomix.train.cgc`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import combinations

import torch
import torch.nn.functional as F

SubspaceReps = Mapping[str, Mapping[str, torch.Tensor]]
AuxTerm = Callable[[SubspaceReps], "torch.Tensor | None"]


def igc_mse(reps: SubspaceReps) -> torch.Tensor | None:
    """Inter-magnification consistency: MSE between L2-normalised representations of the
    same subspace at each pair of magnifications, averaged over subspaces and pairs."""
    terms = [
        F.mse_loss(F.normalize(by_mag[a], dim=-1), F.normalize(by_mag[b], dim=-1))
        for by_mag in reps.values()
        for a, b in combinations(sorted(by_mag), 2)
    ]
    return torch.stack(terms).mean() if terms else None


def _subspace_matrix(reps: SubspaceReps, mag: str) -> torch.Tensor:
    """(B, S, H): the L2-normalised subspace representations at ``mag``, subspaces in sorted order."""
    return F.normalize(torch.stack([reps[s][mag] for s in sorted(reps)], dim=1), dim=-1)


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
    mags = sorted(set.intersection(*(set(by_mag) for by_mag in reps.values()))) if reps else []
    terms = []
    for a, b in combinations(mags, 2):
        za, zb = _subspace_matrix(reps, a), _subspace_matrix(reps, b)
        gram_gap = (za @ za.transpose(1, 2) - zb @ zb.transpose(1, 2)).pow(2).mean()
        cross_diag = torch.diagonal(za @ zb.transpose(1, 2), dim1=1, dim2=2)
        terms.append(gram_gap + (1.0 - cross_diag).mean())
    return torch.stack(terms).mean() if terms else None


AUX_TERMS: dict[str, AuxTerm] = {"igc": igc_gram, "igc_mse": igc_mse}


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
