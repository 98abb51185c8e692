"""Auxiliary training terms, by name (``ModelParams.aux_losses`` maps name → weight).

A term takes the per-subspace, per-magnification representations a DMSF-style model
computed, ``{subspace: {mag: (B, H)}}``, and returns an unweighted scalar, or None when it
does not apply to this bag (e.g. only one magnification present). The model multiplies
by the weight and reports it under ``outputs["aux"][name]``.

Only the simple IGC is here; the paper's Gram-based IGC and the confidence-guided gradient
coordination (CGC, which needs per-subspace gradients rather than a loss term) plug in
beside it.
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


AUX_TERMS: dict[str, AuxTerm] = {"igc": igc_mse}


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
