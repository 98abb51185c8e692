"""``abmil``: WSI-only gated-attention MIL on 20x features (Ilse et al. 2018; CLAM's stem)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pathomix.models.blocks import GatedAttention, PatchEncoder, ProjectionHead
from pathomix.models.spec import ModelParams, wsi_key
from pathomix.tasks import Task


class ABMIL(nn.Module):
    """Patch encoder → gated attention pooling → head. Attention head name: ``abmil``."""

    def __init__(self, in_dim: int, n_outputs: int, params: ModelParams, mag: str = "20x") -> None:
        super().__init__()
        self.mag = mag
        self.encoder = PatchEncoder(in_dim, params.hidden, params.dropout)
        self.pool = GatedAttention(params.hidden, params.hidden // 2 or 1, params.dropout)
        self.head = ProjectionHead(params.hidden, n_outputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        h = self.encoder(inputs[wsi_key(self.mag)])
        pooled, weights = self.pool(h)
        return {"logits": self.head(pooled), "features": pooled,
                "attention": {"abmil": {self.mag: weights}}, "aux": {}}


def build(dims: Mapping[str, Any], task: Task, params: ModelParams) -> nn.Module:
    return ABMIL(int(dims["wsi"]), task.n_outputs, params)
