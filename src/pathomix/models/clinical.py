"""The clinical baseline's container (``cox_clinical``): a linear model on the clinical covariates.

Its coefficients are not learnt by the gradient loop: :mod:`pathomix.train.clinical` fits them in closed form
(penalised Cox for survival, logistic regression for classification) and copies them in, so the checkpoint
holds the fitted model like any other. ``logits``: the Cox linear predictor ``(B, 1)`` (higher = shorter
survival) or the class logits ``(B, n_classes)``; ``features``: the covariates themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pathomix.models.spec import ModelParams
from pathomix.tasks import Task

COVARIATES = "covariates"  # input name: (B, n_covariates) standardised / one-hot clinical covariates


class ClinicalLinear(nn.Module):
    def __init__(self, n_covariates: int, n_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_covariates, n_outputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        x = inputs[COVARIATES]
        return {"logits": self.linear(x), "features": x, "attention": {}, "aux": {}}


def build(dims: Mapping[str, Any], task: Task, params: ModelParams) -> ClinicalLinear:
    """One output (the Cox linear predictor) for survival, one logit per class for classification."""
    return ClinicalLinear(int(dims[COVARIATES]), 1 if task.kind == "survival" else task.n_outputs)
