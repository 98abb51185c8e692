"""``ksfusion``: Knowledge-driven Subspace Fusion with gradient coordination (arXiv 2406.13979).

Genes of each subspace (tumour, TME) are encoded by their own SNN into a gene token. The 20x
patch tokens (one patch encoder, shared by both subspaces) are placed on the slide's 2-D tile
grid from their positions (``pos_20x``, tile units; :mod:`pathomix.models.deformable`). Each
subspace stream has a deformable cross-attention: its query (a learned base plus the gene token)
and the grid feature at each of up to ``ksf_points²`` reference points predict bounded offsets
(the multimodal guidance of the offsets), the grid is sampled bilinearly there and the query
attends to the samples. The classifier has one half per subspace reading
``[deformed histology representation, gene token]``; ``logits`` is their mean and
``branch_logits`` the halves, on which the loop applies CGC (:mod:`pathomix.train.cgc`) over
:meth:`KSFusion.shared_parameters` (the shared patch encoder). The gene-guided consistency
(``aux_losses: {ggc: w}``, :func:`pathomix.models.auxiliary.ggc_gram`) asks the histology
representations of the two subspaces to relate like their gene tokens and to align with them.
``features = [tumour, tme]`` (B, 2·hidden), as in DMSF.

Where this differs from the paper and its code (helenypzhang/Subspace-Multimodal-Learning):

- the grid is built from the tiles' real positions (one cell per tile up to ``ksf_grid`` cells
  per side, scaled down beyond); the code instead crops/pads every bag to 2500 tokens and reshapes
  them into 50 × 50 in storage order, which is not spatial;
- the query is one token per gene subspace attending to K ≤ 144 samples; the code's queries are
  all 2500 fused (patch ⊕ gene) tokens with offsets from a strided depthwise convolution, 8 heads
  and a relative-position bias (``attn_heads`` is shared with DMSF, default 1);
- ``grid_sample`` uses ``align_corners=True``, matching the [-1, 1] normalisation by (size − 1)
  (the code normalises that way but samples with ``align_corners=False``, a half-cell shift);
- the Gram consistency is over the two subspaces of one patient (our loop trains one bag per
  step) instead of over the patients of a batch between gene embeddings and offset grids
  (whose ``view(8, N, -1)`` also mixes batch and group axes in the code); it is bounded, weight 1;
- CGC projects the less confident branch's gradient on the shared patch encoder
  (:mod:`pathomix.train.cgc`); the code projects the rows of the classifier's weight halves
  and, for survival, compares per-batch C-indices;
- ``modality_dropout`` (shared with DMSF) hides the genes on a share of training steps; the paper
  has no such step. Set it to 0 in a variant for the paper's training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pathomix.constants import SUBSPACES
from pathomix.models.auxiliary import GENE_VIEW, aux_losses
from pathomix.models.blocks import GeneTokens, PatchEncoder, ProjectionHead
from pathomix.models.deformable import DeformableCrossAttention, raster_positions, scatter_to_grid, splat_to_tiles
from pathomix.models.spec import ModelParams, pos_key, wsi_key
from pathomix.tasks import Task

MAGS = ("20x",)


class KSFusion(nn.Module):
    """Two subspace streams (tumour, TME): SNN gene token → deformable cross-attention on the tile grid."""

    def __init__(self, dims: Mapping[str, Any], n_outputs: int, params: ModelParams, mag: str = MAGS[0]) -> None:
        super().__init__()
        h = params.hidden
        self.mag, self.grid_size = mag, params.ksf_grid
        self.genes = GeneTokens(dims, {s: f"genes_{s}" for s in SUBSPACES}, h, params.dropout,
                                params.modality_dropout, "ksfusion")
        self.patch = PatchEncoder(int(dims["wsi"]), h, params.dropout)
        self.query_base = nn.Parameter(torch.randn(len(SUBSPACES), h))
        self.deform = nn.ModuleDict({s: DeformableCrossAttention(h, params.ksf_points, params.ksf_offset_scale,
                                                                 params.attn_heads, params.dropout)
                                     for s in SUBSPACES})
        self.heads = nn.ModuleDict({s: ProjectionHead(2 * h, n_outputs) for s in SUBSPACES})
        self.aux_weights = dict(params.aux_losses)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters both subspace streams depend on (CGC coordinates their gradients)."""
        return list(self.patch.parameters())

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        bag = inputs[wsi_key(self.mag)]
        pos = inputs.get(pos_key(self.mag))
        if pos is None:  # no coordinates: lay the tiles out row by row (the reference code's layout)
            pos = raster_positions(bag.shape[0], bag.shape[1], bag.device)
        grid = scatter_to_grid(self.patch(bag), pos, self.grid_size)
        tokens, genes_seen = self.genes(inputs)  # zero tokens on a histology-only step
        reps, attention, branch = {}, {}, {}
        for i, s in enumerate(SUBSPACES):
            rep, weights, points = self.deform[s](self.query_base[i] + tokens[s], grid)
            reps[s] = {self.mag: rep} | ({GENE_VIEW: tokens[s]} if genes_seen else {})
            attention[s] = {self.mag: splat_to_tiles(weights, points, grid)}
            branch[s] = self.heads[s](torch.cat([rep, tokens[s]], dim=-1))
        features = torch.cat([reps[s][self.mag] for s in SUBSPACES], dim=-1)
        return {"logits": torch.stack(list(branch.values())).mean(dim=0), "branch_logits": branch,
                "features": features, "attention": attention, "aux": aux_losses(reps, self.aux_weights)}


def build(dims: Mapping[str, Any], task: Task, params: ModelParams) -> nn.Module:
    return KSFusion(dims, task.n_outputs, params, (params.mags or MAGS)[0])
