"""``umeml``: Unified Modeling Enhanced Multimodal Learning (arXiv 2406.07078).

Pathology encoder: ``umeml_prototypes`` learned prototype queries cross-attend to the 20x patch
tokens (two blocks, ``c ← c + LayerNorm(CrossAttention(c, patches))``), then a class token and
the prototypes go through a self-attention block. Genomic encoder: one SNN token per gene
subspace (tumour, TME) and one for all HVG genes, with a class token, through two
self-attention blocks and a decoder block. The unified decoder reads
``[pathology tokens, umeml_registers register tokens, genomic tokens]`` through two
self-attention blocks; the two class tokens are fused (concat + MLP) into ``features`` and
each task has a linear head on them. The modularity loss (weight ``umeml_modularity``,
:mod:`pathomix.models.modularity`) is −Q of the prototypes' soft assignment of the patches
(temperature ``umeml_temperature``) on the patch-similarity graph, averaged with the same term
for the genomic tokens as prototypes; it is computed on training steps only (it needs the
N × N patch graph). Attention head ``prototypes``: the last block's prototype attention,
averaged over the prototypes.

One decoder, several tasks (the paper's unified modelling): :func:`build_joint` gives the decoder a
head per task and ``forward`` then returns ``logits`` as ``{task: logits}`` from one shared pass.
The workflow trains ``umeml`` jointly on every task in ``train.tasks`` in one job per fold (the loss
is the sum of the task losses a patient has labels for) and writes each task's outputs to
``models/umeml/{task}/fold{k}``; :func:`build` (one head) remains for training one task alone.

Where this differs from the paper and its code (helenypzhang/Interpretable-Multimodal-Prototyping):
the task losses are summed with weight 1 and early stopping watches their sum on the validation
patients; the genomic groups are our tumour/TME subspaces plus all HVG genes
(the code: fixed-size chunks of 1 000 genes plus all genes) encoded by SNN blocks instead of
Linear+ReLU; the two class tokens are fused by concatenation + MLP (the code's ``concat``
option) instead of bilinear fusion; self-attention is exact softmax attention
(:class:`~pathomix.models.blocks.CrossAttention` on the tokens themselves; the code uses Nyström
attention); Q is Newman's modularity of the soft assignment, in [−½, 1], averaged over the two
prototype sets (the code scales −trace by 100, sums the two terms, and builds the assignment
from a clamped cosine with a tanh-sharpened co-assignment); ``modality_dropout`` (shared with DMSF) hides the
genes on a share of training steps, which the paper does not do; the width is ``hidden``
(paper 256; shared default 128).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pathomix.models.blocks import CrossAttention, GeneTokens, PatchEncoder, ProjectionHead
from pathomix.models.modularity import modularity_loss
from pathomix.models.spec import ModelParams, wsi_key
from pathomix.tasks import Task

MAGS = ("20x",)
GENE_GROUPS = {"tumour": "genes_tumour", "tme": "genes_tme", "all": "genes"}


class SelfAttentionBlock(nn.Module):
    """Pre-norm residual self-attention ``x ← x + Attention(LN(x), LN(x))`` (the code's TransLayer)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, n_heads, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return x + self.attn(y, y)[0]


class PrototypeBlock(nn.Module):
    """Prototypes attend to the patches: ``c ← c + LN(CrossAttention(c, patches))``; also returns
    the attention (B, P, N)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, n_heads, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, prototypes: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, weights = self.attn(prototypes, patches)
        return prototypes + self.norm(out), weights


def _stack(n: int, dim: int, params: ModelParams) -> nn.Sequential:
    return nn.Sequential(*(SelfAttentionBlock(dim, params.attn_heads, params.dropout) for _ in range(n)))


class UMEML(nn.Module):
    """Prototype pathology encoder + genomic encoder + register tokens + one decoder for ``heads``
    (task name → outputs); ``forward`` returns the ``primary`` task's logits (the model contract), or
    with ``joint`` the logits of every head as ``{task: logits}``."""

    def __init__(self, dims: Mapping[str, Any], heads: Mapping[str, int], params: ModelParams,
                 primary: str | None = None, mag: str = MAGS[0], joint: bool = False) -> None:
        super().__init__()
        h = params.hidden
        self.mag, self.primary, self.joint = mag, primary or next(iter(heads)), joint
        self.groups = {g: key for g, key in GENE_GROUPS.items() if int(dims.get(key, 0))}
        self.patch = PatchEncoder(int(dims["wsi"]), h, params.dropout)
        self.prototypes = nn.Parameter(torch.empty(params.umeml_prototypes, h).uniform_(
            -1.0 / params.umeml_prototypes, 1.0 / params.umeml_prototypes))
        self.prototype_blocks = nn.ModuleList(PrototypeBlock(h, params.attn_heads, params.dropout) for _ in range(2))
        self.path_token, self.gene_token = nn.Parameter(torch.rand(1, h)), nn.Parameter(torch.rand(1, h))
        self.path_decoder = _stack(1, h, params)
        self.genes = GeneTokens(dims, self.groups, h, params.dropout, params.modality_dropout)
        self.gene_encoder, self.gene_decoder = _stack(2, h, params), _stack(1, h, params)
        self.path_norm, self.gene_norm = nn.LayerNorm(h), nn.LayerNorm(h)
        self.registers = nn.Parameter(torch.rand(params.umeml_registers, h))
        self.decoder = _stack(2, h, params)
        self.fuse = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.heads = nn.ModuleDict({task: ProjectionHead(h, n) for task, n in heads.items()})
        self.modularity_weight, self.temperature = params.umeml_modularity, params.umeml_temperature

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The shared part: ``features`` (B, H), ``attention`` and ``aux`` (modularity, training only)."""
        patches = self.patch(inputs[wsi_key(self.mag)])
        b = patches.shape[0]
        protos = self.prototypes.expand(b, -1, -1)
        for block in self.prototype_blocks:
            protos, weights = block(protos, patches)
        path = self.path_norm(self.path_decoder(torch.cat([self.path_token.expand(b, 1, -1), protos], dim=1)))
        tokens, genes_seen = self.genes(inputs)  # zero tokens on a histology-only step
        genes = torch.stack(list(tokens.values()), dim=1)
        genes = self.gene_encoder(torch.cat([self.gene_token.expand(b, 1, -1), genes], dim=1))
        gene_tokens = genes[:, 1:]
        genes = self.gene_norm(self.gene_decoder(genes))
        n_path, n_reg = path.shape[1], self.registers.shape[0]
        tokens = self.decoder(torch.cat([path, self.registers.expand(b, -1, -1), genes], dim=1))
        features = self.fuse(torch.cat([tokens[:, 0], tokens[:, n_path + n_reg]], dim=-1))
        aux = {}
        if self.training and self.modularity_weight:
            terms = [modularity_loss(patches, protos, self.temperature)]
            if genes_seen:
                terms.append(modularity_loss(patches, gene_tokens, self.temperature))
            aux["modularity"] = self.modularity_weight * torch.stack(terms).mean()
        return {"features": features, "attention": {"prototypes": {self.mag: weights.mean(dim=1)}}, "aux": aux}

    def predict_tasks(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits of every task head from one pass of the shared decoder."""
        features = self.encode(inputs)["features"]
        return {task: head(features) for task, head in self.heads.items()}

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        out = self.encode(inputs)
        if self.joint:
            return {"logits": {task: head(out["features"]) for task, head in self.heads.items()}, **out}
        return {"logits": self.heads[self.primary](out["features"]), **out}


def build(dims: Mapping[str, Any], task: Task, params: ModelParams) -> nn.Module:
    return UMEML(dims, {task.name: task.n_outputs}, params, task.name, (params.mags or MAGS)[0])


def build_joint(dims: Mapping[str, Any], tasks: Sequence[Task], params: ModelParams) -> nn.Module:
    """One shared decoder with a head per task; ``logits`` is ``{task: logits}``."""
    return UMEML(dims, {t.name: t.n_outputs for t in tasks}, params, None, (params.mags or MAGS)[0], joint=True)
