"""Newman modularity of a soft prototype–patch assignment (UMEML's modularity loss).

The patches of a bag form a graph: edge weights ``A_ij = max(0, cos(x_i, x_j))``, no self-loops
(:func:`cosine_affinity`). Prototypes assign the patches softly, ``S = softmax(cos(x, c) / τ)``
over the prototypes (:func:`soft_assignment`). Newman's modularity of an assignment is

    Q = 1/(2m) · Σ_ij [A_ij − k_i k_j / (2m)] · (S Sᵀ)_ij = [tr(Sᵀ A S) − ‖Sᵀ k‖² / (2m)] / (2m),

with degrees ``k = A·1`` and ``2m = Σ_ij A_ij``; for a hard (one-hot) ``S`` this is the usual
Q = Σ_c [L_c / m − (d_c / 2m)²] (Newman 2006). Q ∈ [−½, 1]: high when the prototypes split the
patch graph into densely connected communities. The loss is −Q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_affinity(x: torch.Tensor) -> torch.Tensor:
    """(B, N, H) → (B, N, N): non-negative cosine similarities, zero diagonal."""
    z = F.normalize(x, dim=-1)
    a = (z @ z.transpose(1, 2)).clamp_min(0.0)
    return a * (1.0 - torch.eye(a.shape[-1], device=a.device, dtype=a.dtype))


def soft_assignment(x: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, N, H), (B, P, H) → (B, N, P): softmax over the prototypes of cosine similarity / τ."""
    cos = F.normalize(x, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
    return torch.softmax(cos / temperature, dim=-1)


def newman_modularity(adjacency: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Modularity Q (B,) of ``assign`` (B, N, P) on the weighted graph ``adjacency`` (B, N, N)
    (symmetric, non-negative); 0 for a graph without edges."""
    degree = adjacency.sum(dim=-1)  # (B, N)
    two_m = degree.sum(dim=-1)  # (B,)
    st = assign.transpose(1, 2)  # (B, P, N)
    within = ((st @ adjacency) * st).sum(dim=(1, 2))  # tr(Sᵀ A S), without an N × N × P intermediate
    expected = (st @ degree[..., None]).pow(2).sum(dim=(1, 2)) / two_m.clamp_min(1e-12)  # ‖Sᵀ k‖² / 2m
    return torch.where(two_m > 0, (within - expected) / two_m.clamp_min(1e-12), torch.zeros_like(two_m))


def modularity_loss(tokens: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """−Q (batch mean) of the prototypes' soft assignment of the patch ``tokens`` (B, N, H). The
    patch graph and the patch side of the assignment are detached (as in the reference code):
    the loss moves the prototypes, not the patches."""
    x = tokens.detach()
    return -newman_modularity(cosine_affinity(x), soft_assignment(x, prototypes, temperature)).mean()
