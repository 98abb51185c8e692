"""``fluoroformer``: MIL on multiplexed immunofluorescence (Fluoroformer, arXiv 2411.08975).

A patient's mIF bag ``mif_20x`` holds one embedding per marker channel of each tile
``(N, C, D)`` (the features stage encodes every marker channel, autofluorescence already
subtracted). Per tile, :class:`~pathomix.models.blocks.MarkerAttention` fuses the C marker
embeddings by single-head scaled dot-product self-attention and averages them into one token;
gated attention pooling (:class:`~pathomix.models.blocks.GatedAttention`) over the tiles gives
the patient representation, and a linear head the task's logits (survival: 4 discrete-time
hazards; classification: class logits — the task registry decides).

Outputs: ``attention = {"fluoroformer": {"20x": (B, N)}}`` over the mIF tiles (heatmaps) and
``marker_attention = {"20x": (B, N, C)}``: per tile, the attention each marker receives
(sums to 1 over the markers). The training stage turns it into one distribution over the
markers per slide (``marker_attention.parquet``).

Hyperparameters reuse ``train.hidden`` (width of the marker bottleneck and of the gated
attention) and ``train.dropout``; the magnification is ``train.mags`` (default 20x).

Where this differs from the paper and its code (lotterlab/fluoroformer):

- one attention head: the code's ``num_heads`` argument is never used (the SDPA is single-head);
- dropout (``train.dropout``, 0.25) on the attention output and in the gated attention; the
  code's marker-attention ``dropout`` argument is unused and its patch attention uses 0.1;
- the paper trains survival only; here every task of the registry gets a head, with our
  discrete-time NLL at 4 quartile bins, Adam and early stopping (``pathomix.train``);
- the paper's cohort has 7 channels including DAPI with its own panel preprocessing; here the
  autofluorescence channel is subtracted and dropped upstream, so C = the panel's markers;
- the code's widths come from an unpublished CLI config; ``train.hidden`` = 128 is ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pathomix.models.blocks import GatedAttention, MarkerAttention, ProjectionHead
from pathomix.models.spec import ModelParams, mif_key
from pathomix.tasks import Task

HEAD = "fluoroformer"
MAGS = ("20x",)


class Fluoroformer(nn.Module):
    """Marker self-attention per tile → gated attention over tiles → linear head."""

    def __init__(self, in_dim: int, n_outputs: int, params: ModelParams, mag: str = MAGS[0]) -> None:
        super().__init__()
        self.mag = mag
        self.markers = MarkerAttention(in_dim, params.hidden, params.dropout)
        self.pool = GatedAttention(in_dim, params.hidden, params.dropout)
        self.head = ProjectionHead(in_dim, n_outputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        tokens, marker_weights = self.markers(inputs[mif_key(self.mag)])
        pooled, weights = self.pool(tokens)
        return {"logits": self.head(pooled), "features": pooled, "attention": {HEAD: {self.mag: weights}},
                "aux": {}, "marker_attention": {self.mag: marker_weights}}


def build(dims: Mapping[str, Any], task: Task, params: ModelParams) -> nn.Module:
    return Fluoroformer(int(dims["mif"]), task.n_outputs, params, (params.mags or MAGS)[0])
