"""Atomic outputs of a training job: checkpoint.pt, history.parquet, predictions.parquet,
attention.parquet (H&E and mIF tile models, test patients), marker_attention.parquet (mIF
models, test patients: one distribution over the markers per slide), gene_importance.parquet
(gene models)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from pathomix import __version__
from pathomix.io.atomic import atomic_path, write_parquet
from pathomix.paths import ATTENTION, CHECKPOINT, GENE_IMPORTANCE, HISTORY, MARKER_ATTENTION, PREDICTIONS  # noqa: F401

log = logging.getLogger(__name__)



def checkpoint_dict(model: nn.Module, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Plain tensors, lists, dicts and scalars only, so ``torch.load(weights_only=True)`` works."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"model_state": state, "pathomix_version": __version__, **meta}


def save_checkpoint(path: Path, ckpt: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(dict(ckpt), tmp)


def predictions_frame(pred: pd.DataFrame, fold: int, model: str, task: str,
                      cohorts: Mapping[str, str] | None = None, encoder: str = "") -> pd.DataFrame:
    """Prefix the contract columns: patient_id, fold, split, model, encoder (of the patch features the model
    read; empty for a model that reads none), task, then the task's columns, then ``cohort`` when the folds
    carry one (external cohorts are reported separately)."""
    rest = [c for c in pred.columns if c not in ("patient_id", "split")]
    out = pred.assign(fold=fold, model=model, encoder=encoder, task=task)
    out = out[["patient_id", "fold", "split", "model", "encoder", "task", *rest]].reset_index(drop=True)
    if cohorts:
        out["cohort"] = out.patient_id.astype(str).map(cohorts).fillna("main")
    return out


def write_outputs(out_dir: Path, ckpt: Mapping[str, Any], history: pd.DataFrame, predictions: pd.DataFrame,
                  attention: pd.DataFrame | None, importance: pd.DataFrame | None = None,
                  marker_attention: pd.DataFrame | None = None) -> None:
    """Write every output atomically (the checkpoint last: it marks a finished job)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if importance is not None:
        write_parquet(importance, out_dir / GENE_IMPORTANCE)
    if marker_attention is not None:
        write_parquet(marker_attention.astype({"patient_id": str, "slide_id": str, "mag": str, "marker": str,
                                               "weight": "float32"}), out_dir / MARKER_ATTENTION)
    write_parquet(history, out_dir / HISTORY)
    write_parquet(predictions, out_dir / PREDICTIONS)
    if attention is not None:
        att = attention.astype({"patient_id": str, "slide_id": str, "mag": str, "tile_index": "int64",
                                "weight": "float32", "head": str})
        write_parquet(att, out_dir / ATTENTION)
    save_checkpoint(out_dir / CHECKPOINT, ckpt)
    log.info("wrote %s", ", ".join(str(out_dir / n) for n in (CHECKPOINT, HISTORY, PREDICTIONS)
                                     + ((ATTENTION,) if attention is not None else ())
                                     + ((MARKER_ATTENTION,) if marker_attention is not None else ())))
