"""Per-gene importance of a trained gene-reading model, per subspace (interpretability).

importance(gene) = mean over the test patients of |x_g · ∂L/∂x_g| (gradient × input of the
task loss with respect to the standardised expression; Shrikumar et al. 2016), computed for
every gene input the model reads (``genes`` for snn, ``genes_tumour`` / ``genes_tme`` for the
DMSF teacher). Written as ``gene_importance.parquet`` next to the predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pathomix.models import GENE_INPUTS
from pathomix.train.data import Patient
from pathomix.train.genes import SUBSPACE_INPUTS
from pathomix.train.loop import batch_inputs
from pathomix.train.objectives import Objective

COLUMNS = ("input", "gene", "subspace", "importance", "rank")


def _input_genes(stats: Mapping[str, Any]) -> dict[str, tuple[list[str], list[str]]]:
    """gene input name → (gene names, their subspaces), in the column order of the tensor."""
    genes, sub = np.asarray(stats["genes"]), np.asarray(stats["subspace"])
    out = {"genes": (genes.tolist(), sub.tolist())}
    for s, key in SUBSPACE_INPUTS.items():
        out[key] = (genes[sub == s].tolist(), [s] * int((sub == s).sum()))
    return out


def gene_importance(model: nn.Module, patients: Sequence[Patient], objective: Objective,
                    device: torch.device, gene_stats: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (gene input, gene): mean |gradient × input| over ``patients``, ranked within
    the input (1 = most important). Inputs the model ignores (zero gradient) are left out."""
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    for p in patients:
        inputs = batch_inputs(p, device)
        keys = [k for k in GENE_INPUTS if k in inputs]
        for k in keys:
            inputs[k].requires_grad_(True)
        loss = objective.loss(model(inputs)["logits"], p.target)
        grads = torch.autograd.grad(loss, [inputs[k] for k in keys], allow_unused=True)
        for k, g in zip(keys, grads, strict=True):
            if g is not None:
                totals[k] = totals.get(k, 0) + (inputs[k] * g).abs()[0].detach().cpu()
    names = _input_genes(gene_stats)
    frames = []
    for key, total in totals.items():
        genes, subs = names[key]
        imp = (total / max(len(patients), 1)).numpy()
        frames.append(pd.DataFrame({"input": key, "gene": genes, "subspace": subs, "importance": imp})
                      .assign(rank=lambda d: d.importance.rank(ascending=False, method="first").astype(int)))
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(COLUMNS)].sort_values(["input", "rank"], ignore_index=True)
