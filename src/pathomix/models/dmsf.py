"""DMSF teacher and student (Disentangled Multi-modal Selective Fusion, arXiv 2508.16479).

Teacher (WSI + genes): the genes of each subspace (tumour, TME) are encoded by their own
SNN into a subspace token; at each magnification a query (a learned base per subspace plus
the gated gene token) cross-attends to the patch tokens, i.e. selects the patches that its
gene subspace explains (the DMSF module). The gene gates start at zero and
``modality_dropout`` hides the genes on a share of training steps: on a small cohort the
teacher otherwise memorises patients through their genes. The per-magnification tumour and
TME representations are averaged over the magnifications present and laid out as
``features = [tumour, tme]`` (B, 2·hidden). The classifier has one half per subspace, each
reading ``[subspace feature, gated gene token]``; ``logits`` is their mean (so calibrated
halves give calibrated logits) and ``branch_logits`` the halves, on which the loop applies CGC
(:mod:`pathomix.train.cgc`) to the gradients of the parameters both halves share
(:meth:`DMSFTeacher.shared_parameters`: the patch encoders and cross-attention). IGC
(``aux_losses: {igc: w}``, :func:`pathomix.models.auxiliary.igc_gram`) aligns the
per-magnification representations.

Student (WSI only): per magnification and subspace, the patch tokens are merged into
``ita_tokens`` cluster tokens by ITA (DPC-kNN, :mod:`pathomix.models.ita`); a learned tumour
and TME query cross-attends to its subspace's cluster tokens. Its ``features`` have the
teacher's layout and are distilled from it (:mod:`pathomix.train.distill`); a cluster's
attention is spread evenly over its patches for the heatmaps.

Where this differs from the reference code (helenypzhang/Disentangled-Multimodal-Learning):
IGC is bounded (Gram gap + cross-Gram diagonal, weight 0.1) instead of the variance of the
cross-Gram diagonal at weight 1e4; CGC confidence for survival is the likelihood of the
observed outcome; gene tokens are gated (zero at start) and dropped on a share of steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pathomix.constants import SUBSPACES
from pathomix.models.auxiliary import aux_losses
from pathomix.models.blocks import CrossAttention, GeneTokens, PatchEncoder, ProjectionHead
from pathomix.models.ita import TokenAggregator
from pathomix.models.spec import ModelParams, wsi_key
from pathomix.tasks import Task

PerSubspace = dict[str, dict[str, torch.Tensor]]  # subspace → mag → tensor
MAGS = ("20x", "10x")  # the first is required, the second used when present


def _module_key(*parts: str) -> str:
    return "_".join(parts).replace(".", "p")  # ModuleDict keys may not contain dots


class SubspaceSelector(nn.Module):
    """Per magnification a patch encoder and a cross-attention in which the subspace query
    tokens (tumour, TME) attend to that magnification's patch tokens.

    The subspace queries share one attention module per magnification (MCAT's co-attention,
    where every genomic token queries the same patch keys): each query still selects its own
    patches, and one batched call is half the cost of one module per (subspace, mag).
    """

    def __init__(self, in_dim: int, mags: Sequence[str], params: ModelParams) -> None:
        super().__init__()
        self.mags = tuple(mags)
        self.patch = nn.ModuleDict({_module_key(m): PatchEncoder(in_dim, params.hidden, params.dropout)
                                    for m in self.mags})
        self.attend = nn.ModuleDict({_module_key(m): CrossAttention(params.hidden, params.attn_heads,
                                                                     params.dropout) for m in self.mags})

    def forward(self, queries: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, PerSubspace, PerSubspace]:
        """``queries``: subspace → (B, H). Returns (features (B, 2H), reps, attention) where
        reps[subspace][mag] is (B, H) and attention[subspace][mag] is (B, N)."""
        reps: PerSubspace = {s: {} for s in SUBSPACES}
        attention: PerSubspace = {s: {} for s in SUBSPACES}
        tokens = torch.stack([queries[s] for s in SUBSPACES], dim=1)  # (B, S, H)
        for mag in self.mags:
            bag = inputs.get(wsi_key(mag))
            if bag is None or bag.shape[1] == 0:
                continue
            out, weights = self.attend[_module_key(mag)](tokens, self.patch[_module_key(mag)](bag))
            for i, s in enumerate(SUBSPACES):
                reps[s][mag] = out[:, i]
                attention[s][mag] = weights[:, i]
        return _features(reps, self.mags), reps, attention


def _features(reps: PerSubspace, mags: Sequence[str]) -> torch.Tensor:
    """``[tumour, tme]`` (B, 2H): each subspace averaged over the magnifications present."""
    if not reps[SUBSPACES[0]]:
        raise ValueError(f"no H&E tiles at any of {tuple(mags)} in this bag")
    return torch.cat([torch.stack(list(reps[s].values())).mean(dim=0) for s in SUBSPACES], dim=-1)


class ClusteredSelector(nn.Module):
    """The student's selector: per magnification a patch encoder; per subspace a projection and
    ITA (DPC-kNN) merging the patches into a few tokens, which the subspace query attends to
    (one cross-attention per magnification, shared by the subspaces).

    Attention over clusters is mapped back to patches as weight / cluster size.
    """

    def __init__(self, in_dim: int, mags: Sequence[str], params: ModelParams) -> None:
        super().__init__()
        h = params.hidden
        self.mags = tuple(mags)
        self.patch = nn.ModuleDict({_module_key(m): PatchEncoder(in_dim, h, params.dropout) for m in self.mags})
        self.project = nn.ModuleDict({s: nn.Linear(h, h) for s in SUBSPACES})
        self.aggregate = nn.ModuleDict({s: TokenAggregator(h, params.ita_tokens, params.ita_knn)
                                        for s in SUBSPACES})
        self.attend = nn.ModuleDict({_module_key(m): CrossAttention(h, params.attn_heads, params.dropout)
                                     for m in self.mags})

    def _one(self, query: torch.Tensor, tokens: torch.Tensor, subspace: str, attend: nn.Module
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One bag (N, H) → (rep (H,), per-patch attention (N,))."""
        merged, assign, sizes = self.aggregate[subspace](self.project[subspace](tokens))
        out, weights = attend(query[None, None], merged[None])
        return out[0, 0], weights[0, 0][assign] / sizes[assign]

    def forward(self, queries: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, PerSubspace, PerSubspace]:
        reps: PerSubspace = {s: {} for s in SUBSPACES}
        attention: PerSubspace = {s: {} for s in SUBSPACES}
        for mag in self.mags:
            bag = inputs.get(wsi_key(mag))
            if bag is None or bag.shape[1] == 0:
                continue
            tokens = self.patch[_module_key(mag)](bag)  # (B, N, H)
            for s in SUBSPACES:
                pairs = [self._one(queries[s][b], tokens[b], s, self.attend[_module_key(mag)])
                         for b in range(len(tokens))]
                reps[s][mag] = torch.stack([r for r, _ in pairs])
                attention[s][mag] = torch.stack([a for _, a in pairs])
        return _features(reps, self.mags), reps, attention


class DMSFTeacher(nn.Module):
    """Multimodal teacher: SNN subspace tokens select patches at each magnification."""

    def __init__(self, dims: Mapping[str, Any], n_outputs: int, params: ModelParams,
                 mags: Sequence[str] = MAGS) -> None:
        super().__init__()
        h = params.hidden
        self.genes = GeneTokens(dims, {s: f"genes_{s}" for s in SUBSPACES}, h, params.dropout,
                                params.modality_dropout, "DMSF teacher")
        # a learned base per subspace, shifted by the patient's gene token: patch selection stays
        # sensible when a subspace's genes are noisy, and follows them where they are informative
        self.query_base = nn.Parameter(torch.randn(len(SUBSPACES), h))
        # zero-initialised gates (LayerScale): training starts from a histology-only model and
        # lets the genes in as far as they help, instead of memorising a small cohort through them
        self.gene_gate = nn.Parameter(torch.zeros(2))
        self.selector = SubspaceSelector(int(dims["wsi"]), params.mags or mags, params)
        self.heads = nn.ModuleDict({s: ProjectionHead(2 * h, n_outputs) for s in SUBSPACES})
        self.aux_weights = dict(params.aux_losses)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters both subspace branches depend on (CGC coordinates their gradients)."""
        return list(self.selector.parameters())

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        tokens, _ = self.genes(inputs)
        queries = {s: self.query_base[i] + self.gene_gate[0] * tokens[s] for i, s in enumerate(SUBSPACES)}
        features, reps, attention = self.selector(queries, inputs)
        h = features.shape[-1] // len(SUBSPACES)
        branch = {s: self.heads[s](torch.cat([features[:, i * h:(i + 1) * h], self.gene_gate[1] * tokens[s]],
                                             dim=-1))
                  for i, s in enumerate(SUBSPACES)}
        return {"logits": torch.stack(list(branch.values())).mean(dim=0), "branch_logits": branch, "features": features,
                "attention": attention, "aux": aux_losses(reps, self.aux_weights)}


class DMSFStudent(nn.Module):
    """WSI-only student: ITA cluster tokens per subspace, learned subspace queries, teacher layout."""

    def __init__(self, dims: Mapping[str, Any], n_outputs: int, params: ModelParams,
                 mags: Sequence[str] = MAGS) -> None:
        super().__init__()
        h = params.hidden
        self.queries = nn.Parameter(torch.randn(len(SUBSPACES), h))
        self.selector = ClusteredSelector(int(dims["wsi"]), params.mags or mags, params)
        self.head = ProjectionHead(2 * h, n_outputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        batch = next(v.shape[0] for k, v in inputs.items() if k.startswith("wsi_"))
        queries = {s: self.queries[i].expand(batch, -1) for i, s in enumerate(SUBSPACES)}
        features, _, attention = self.selector(queries, inputs)
        return {"logits": self.head(features), "features": features, "attention": attention, "aux": {}}


def build_teacher(dims: Mapping[str, Any], task: Task, params: ModelParams) -> nn.Module:
    return DMSFTeacher(dims, task.n_outputs, params)


def build_student(dims: Mapping[str, Any], task: Task, params: ModelParams) -> nn.Module:
    return DMSFStudent(dims, task.n_outputs, params)
