"""Informative token aggregation (ITA): DPC-kNN clustering of patch tokens into a few tokens.

Density-peaks clustering with k nearest neighbours (Rodriguez & Laio 2014; the kNN density
of Du et al. 2016, as used for token merging in TCFormer):

1. local density   ρ_i = exp(−r_i / r̄),  r_i = mean_{j ∈ kNN(i)} ‖x_i − x_j‖²,  r̄ = mean_i r_i
2. peak distance   δ_i = min_{j denser than i} ‖x_i − x_j‖   (the densest token: max_j ‖x_i − x_j‖)
3. the ``n_clusters`` tokens with the largest ρ_i·δ_i are the centres (dense *and* far from
   anything denser), ordered by that score; every token joins its nearest centre;
4. a cluster's token is the importance-weighted mean of its members (weights from a learned
   score, softmax within the cluster).

The squared distances are scaled by their mean over the bag (r̄), so the clustering does not
depend on the scale of the tokens; the unscaled exp(−r_i) of TCFormer underflows to exactly 0
once the token norms grow (then every density ties). ρ and ρ·δ are compared in log space.
Ties (equal density, equal score: symmetric or duplicated tokens) are broken by a key computed
from the token's values (its projection on a fixed direction, :func:`tie_key`), never by its
position in the bag: "denser" is the order (ρ, key), and the centres are ordered by (ρ·δ, key).
Among exact duplicates the first is denser: one of them can be a centre and the others join it, so
the clusters, as sets of token values, do not depend on the order.

Clustering runs without gradients (it only decides *which* tokens merge); the merge is
differentiable. The result depends on the set of tokens, not their order, so ITA is
permutation-invariant. Distances are computed in row blocks, so memory is O(block · N), not O(N²).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BLOCK = 2048  # rows of the distance matrix held at once


@dataclass(frozen=True)
class Clusters:
    """``centres`` (M,) token indices ordered by score; ``assign`` (N,) cluster of each token;
    ``density`` (N,) the scaled kNN density ρ of each token, in (0, 1]."""

    centres: torch.Tensor
    assign: torch.Tensor
    density: torch.Tensor


def _blocks(x: torch.Tensor):
    for start in range(0, len(x), BLOCK):
        yield start, torch.cdist(x[start:start + BLOCK], x)


def tie_key(x: torch.Tensor) -> torch.Tensor:
    """(N,) a tie-breaking key of each row of ``x`` from its values alone: the projection on a fixed
    pseudo-random direction (seed 0), equal for two rows only when they are equal (almost surely)."""
    direction = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x.double() @ direction.to(x.device)


def _descending(primary: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Indices ordering the rows by ``primary`` then ``key``, both descending."""
    by_key = key.argsort(descending=True, stable=True)
    return by_key[primary[by_key].argsort(descending=True, stable=True)]


@torch.no_grad()
def dpc_knn(x: torch.Tensor, n_clusters: int, k: int = 5) -> Clusters:
    """Cluster the rows of ``x`` (N, H) into ``min(n_clusters, N)`` clusters with DPC-kNN."""
    n = len(x)
    m = min(n_clusters, n)
    x = x.float()
    k_eff = max(1, min(k, n - 1))
    knn_sq = torch.empty(n, device=x.device)
    for start, d in _blocks(x):
        knn = d.topk(k_eff + 1, dim=1, largest=False).values[:, 1:] if n > 1 else d
        knn_sq[start:start + len(d)] = (knn ** 2).mean(dim=1)
    log_density = -knn_sq / knn_sq.mean().clamp_min(torch.finfo(knn_sq.dtype).tiny)
    key, index = tie_key(x), torch.arange(n, device=x.device)
    delta = torch.empty(n, device=x.device)
    for start, d in _blocks(x):
        rows = slice(start, start + len(d))
        same = log_density[None, :] == log_density[rows, None]
        # exact duplicates (same density and key): the first is the denser, so one of them can be a
        # centre and all join it (which one does not matter: they have the same values)
        first = index[None, :] < index[rows, None]
        denser = (log_density[None, :] > log_density[rows, None]) | (
            same & ((key[None, :] > key[rows, None]) | ((key[None, :] == key[rows, None]) & first)))
        far = d.max(dim=1).values
        masked = torch.where(denser, d, torch.full_like(d, float("inf"))).min(dim=1).values
        delta[rows] = torch.where(denser.any(dim=1), masked, far)
    log_score = log_density + torch.log(delta)  # log(ρ·δ); −inf for a duplicate of a denser token
    centres = _descending(log_score, key)[:m]
    assign = torch.cdist(x, x[centres]).argmin(dim=1)
    assign[centres] = torch.arange(m, device=x.device)  # a centre always belongs to its own cluster
    return Clusters(centres, assign, torch.exp(log_density))


class TokenAggregator(nn.Module):
    """Merge a bag of tokens (N, H) into ``n_tokens`` cluster tokens with DPC-kNN.

    ``forward`` returns ``(tokens (M, H), assign (N,), sizes (M,))``; ``sizes`` counts the
    members of each cluster (used to spread a cluster's attention back over its patches).
    """

    def __init__(self, dim: int, n_tokens: int, k: int = 5) -> None:
        super().__init__()
        self.n_tokens, self.k = n_tokens, k
        self.importance = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clusters = dpc_knn(x.detach(), self.n_tokens, self.k)
        m = len(clusters.centres)
        score = self.importance(x).squeeze(-1)  # (N,)
        # softmax within each cluster: subtract the cluster max for stability
        cmax = torch.full((m,), -torch.inf, device=x.device, dtype=score.dtype)
        cmax = cmax.scatter_reduce(0, clusters.assign, score.detach(), reduce="amax")
        w = torch.exp(score - cmax[clusters.assign])
        norm = torch.zeros(m, device=x.device, dtype=w.dtype).index_add(0, clusters.assign, w)
        w = w / norm[clusters.assign]
        tokens = torch.zeros(m, x.shape[-1], device=x.device, dtype=x.dtype)
        tokens = tokens.index_add(0, clusters.assign, w[:, None] * x)
        sizes = torch.bincount(clusters.assign, minlength=m)
        return tokens, clusters.assign, sizes
