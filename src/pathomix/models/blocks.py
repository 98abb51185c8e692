"""Reusable model blocks: gated attention pooling, SNN blocks, heads, cross-attention, gene
tokens, marker self-attention.

Every MIL model in the registry is assembled from these, never from copies of them
(STYLE.md "small composable model blocks"). Tensors carry a leading batch dimension ``B``;
bags are ``(B, N, D)`` with ``N`` tiles, mIF bags ``(B, N, C, D)`` with ``C`` marker channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pathomix.errors import PathomixInputError


class PatchEncoder(nn.Sequential):
    """Per-tile embedding ``Linear(D → hidden) + ReLU + Dropout`` (CLAM's ``fc`` stem)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))


class GatedAttention(nn.Module):
    """Gated attention pooling (the idea of CLAM's ``Attn_Net_Gated``, Ilse et al. 2018).

    logit_i = w · (tanh(V h_i) ⊙ sigmoid(U h_i)); weights = softmax over the tiles of a bag.
    ``forward`` returns ``(pooled (B, D), weights (B, N))``. Permutation-equivariant in the
    weights and permutation-invariant in the pooled vector.
    """

    def __init__(self, dim: int, attn_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        attn_dim = attn_dim or dim
        self.tanh_branch = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.sigmoid_branch = nn.Sequential(nn.Linear(dim, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(attn_dim, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.score(self.tanh_branch(h) * self.sigmoid_branch(h)).squeeze(-1)  # (B, N)
        weights = torch.softmax(logits, dim=-1)
        pooled = torch.einsum("bn,bnd->bd", weights, h)
        return pooled, weights


class SNNBlock(nn.Sequential):
    """Self-normalising block: ``Linear + SELU + AlphaDropout`` (Klambauer et al. 2017)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__(nn.Linear(in_dim, out_dim), nn.SELU(), nn.AlphaDropout(dropout))
        # LeCun-normal init keeps activations self-normalising
        nn.init.normal_(self[0].weight, std=1.0 / math.sqrt(in_dim))
        nn.init.zeros_(self[0].bias)


class SNNEncoder(nn.Sequential):
    """A stack of :class:`SNNBlock` (``n_blocks`` of width ``hidden``): genes → token."""

    def __init__(self, in_dim: int, hidden: int, dropout: float, n_blocks: int = 2) -> None:
        dims = [in_dim] + [hidden] * n_blocks
        super().__init__(*(SNNBlock(a, b, dropout) for a, b in zip(dims[:-1], dims[1:], strict=True)))


class ProjectionHead(nn.Sequential):
    """``Linear(in → hidden) + ReLU + Dropout + Linear(hidden → out)``; ``hidden=0`` is linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.0) -> None:
        if hidden:
            super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(hidden, out_dim))
        else:
            super().__init__(nn.Linear(in_dim, out_dim))


class CrossAttention(nn.Module):
    """Multi-head cross-attention from query tokens ``(B, Q, H)`` to patch tokens ``(B, N, H)``.

    Returns ``(out (B, Q, H), weights (B, Q, N))``; weights are softmax over the patches,
    averaged over heads (for heatmaps). ``out`` is the attention-weighted patch content only
    (no residual to the query, no LayerNorm): the query decides *which* patches, the output
    says *what* they contain, so a WSI-only student can reproduce a gene-queried teacher's
    output from the patches alone (and unnormalised outputs keep survival logits calibrated).
    """

    def __init__(self, dim: int, n_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {n_heads} attention heads")
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, h, n, d/h)

    def forward(self, query: torch.Tensor, patches: torch.Tensor, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``bias`` (B, Q, N), optional, is added to the attention logits (e.g. log-masks)."""
        q, k, v = self._split(self.q(query)), self._split(self.k(patches)), self._split(self.v(patches))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, Q, N)
        if bias is not None:
            scores = scores + bias[:, None]
        weights = torch.softmax(scores, dim=-1)
        ctx = (self.drop(weights) @ v).transpose(1, 2).reshape(query.shape)  # (B, Q, H)
        return self.out(ctx), weights.mean(dim=1)


class GeneTokens(nn.Module):
    """One :class:`SNNEncoder` per gene input (``{name: input key}``), each giving a token ``(B, H)``,
    with modality dropout: on a ``modality_dropout`` share of training steps every token is zero
    (a histology-only step), so a multimodal model cannot lean on the genes alone.

    ``forward`` returns ``(tokens {name: (B, H)}, genes_seen)``. An input without genes is a
    :class:`PathomixInputError` that names ``owner`` and the fix.
    """

    def __init__(self, dims: dict, inputs: dict[str, str], hidden: int, dropout: float,
                 modality_dropout: float, owner: str = "model") -> None:
        super().__init__()
        empty = [name for name, key in inputs.items() if not int(dims.get(key, 0))]
        if empty:
            raise PathomixInputError(f"{owner}: gene subspace(s) {empty} have no HVG genes; check "
                                     "genes/fold{k}/subspaces.parquet and the gene sets (genes_params.gene_sets)")
        self.inputs = dict(inputs)
        self.encoders = nn.ModuleDict({name: SNNEncoder(int(dims[key]), hidden, dropout)
                                       for name, key in self.inputs.items()})
        self.modality_dropout = modality_dropout

    def forward(self, inputs) -> tuple[dict[str, torch.Tensor], bool]:
        tokens = {name: self.encoders[name](inputs[key]) for name, key in self.inputs.items()}
        seen = not (self.training and self.modality_dropout and torch.rand(()) < self.modality_dropout)
        if not seen:
            tokens = {name: torch.zeros_like(t) for name, t in tokens.items()}
        return tokens, seen


class MarkerAttention(nn.Module):
    """Channel fusion of the Fluoroformer (arXiv 2411.08975): within each tile, single-head scaled
    dot-product self-attention across its ``C`` marker embeddings, then the mean over markers.

    ``(B, N, C, D)`` → ``Linear(D → hidden) + GELU`` per marker → SDPA across the markers (one
    ``C × C`` matrix per tile) + residual, LayerNorm → ``Linear(hidden → D) + GELU`` + residual to
    the input, LayerNorm → mean over markers: one ``D``-token per tile.

    ``forward`` returns ``(tokens (B, N, D), marker_weights (B, N, C))`` where ``marker_weights``
    is the attention each marker *receives*, averaged over the querying markers: a distribution
    over the markers of each tile, and exactly the weight of each marker's value in the attention
    part of the tile token (the token is the mean over queries of ``Σ_j a_ij v_j``). Equivariant
    to permutations of the tiles; invariant to permutations of the markers (tokens) and
    equivariant (weights).
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.drop = nn.Dropout(dropout)
        self.norm_mid = nn.LayerNorm(hidden)
        self.up = nn.Sequential(nn.Linear(hidden, dim), nn.GELU())
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.down(x)  # (B, N, C, h)
        q, k, v = self.qkv(z).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, N, C, C)
        z = self.norm_mid(z + self.drop(attn @ v))
        y = self.norm_out(x + self.up(z))  # (B, N, C, D)
        return y.mean(dim=-2), attn.mean(dim=-2)
