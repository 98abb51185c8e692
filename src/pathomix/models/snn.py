"""``snn``: genes-only self-normalising network (Klambauer et al. 2017; PORPOISE's SNN)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pathomix.models.blocks import ProjectionHead, SNNEncoder
from pathomix.models.spec import ModelParams
from pathomix.tasks import Task


class SNN(nn.Module):
    """Two SNN blocks on all HVG genes → linear head."""

    def __init__(self, n_genes: int, n_outputs: int, params: ModelParams) -> None:
        super().__init__()
        self.encoder = SNNEncoder(n_genes, params.hidden, params.dropout, n_blocks=2)
        self.head = ProjectionHead(params.hidden, n_outputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        z = self.encoder(inputs["genes"])
        return {"logits": self.head(z), "features": z, "attention": {}, "aux": {}}


def build(dims: Mapping[str, Any], task: Task, params: ModelParams) -> nn.Module:
    return SNN(int(dims["genes"]), task.n_outputs, params)
