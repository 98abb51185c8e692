"""Epoch loop with early stopping on the validation loss, and evaluation/prediction.

Batch size is one bag (standard MIL). During training a bag larger than ``max_tiles`` is
subsampled at random; evaluation always sees every tile. A step's loss is the task loss +
the model's auxiliary terms + the extra term (distillation) + the task loss of each branch
when the model has ``branch_logits``; with ``train.cgc`` the branch gradients on the shared
parameters are coordinated (:mod:`pathomix.train.cgc`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pathomix.train.cgc import GradientCoordinator, branch_losses
from pathomix.train.data import Patient
from pathomix.train.objectives import Objective
from pathomix.train.optim import Adam
from pathomix.train.params import TrainParams

log = logging.getLogger(__name__)

ExtraLoss = Callable[[Patient, dict[str, Any], int], "torch.Tensor | None"]  # patient, outputs, epoch
ATTENTION_COLUMNS = ("patient_id", "slide_id", "mag", "tile_index", "weight", "head")


@dataclass(frozen=True)
class FitResult:
    history: pd.DataFrame  # epoch, train_loss, val_loss, val_metric, lr, seconds[, cgc_conflicts]
    best_epoch: int


def batch_inputs(patient: Patient, device: torch.device, max_tiles: int | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One patient's inputs as float32 batch-of-one tensors on ``device``; a bag larger than
    ``max_tiles`` is subsampled, its tile positions (``pos_{mag}``) with the same tiles."""
    picks = {key[len("wsi_"):]: torch.randperm(len(value), generator=generator)[:max_tiles].sort().values
             for key, value in patient.inputs.items()
             if max_tiles and key.startswith("wsi_") and len(value) > max_tiles}
    out = {}
    for key, value in patient.inputs.items():
        kind, _, mag = key.partition("_")
        if kind in ("wsi", "pos") and mag in picks:
            value = value[picks[mag]]
        out[key] = value.to(device=device, dtype=torch.float32).unsqueeze(0)
    return out


def _attention_frame(patient: Patient, attention: dict[str, dict[str, torch.Tensor]]) -> list[pd.DataFrame]:
    frames = []
    for head, by_mag in attention.items():
        for mag, weights in by_mag.items():
            bag = patient.bags[mag]
            frames.append(pd.DataFrame({
                "patient_id": patient.patient_id, "slide_id": bag.slide_ids.astype(str), "mag": mag,
                "tile_index": bag.tile_index, "weight": weights[0].float().cpu().numpy(), "head": head}))
    return frames


@torch.no_grad()
def evaluate(model: nn.Module, patients: Sequence[Patient], objective: Objective, device: torch.device,
             attention: bool = False) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    """→ (mean task loss, one prediction row per patient, attention rows (empty unless asked))."""
    model.eval()
    losses, rows, frames = [], [], []
    for p in patients:
        out = model(batch_inputs(p, device))
        losses.append(float(objective.loss(out["logits"], p.target)))
        rows.append({"patient_id": p.patient_id, "split": p.split, **objective.rows(out["logits"], p.target)})
        if attention:
            frames.extend(_attention_frame(p, out["attention"]))
    pred = pd.DataFrame(rows, columns=["patient_id", "split", *objective.columns])
    att = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(ATTENTION_COLUMNS))
    return (float(np.mean(losses)) if losses else math.nan), pred, att


def _train_epoch(model: nn.Module, patients: Sequence[Patient], objective: Objective,
                 opt: Adam, params: TrainParams, device: torch.device, rng: np.random.Generator,
                 generator: torch.Generator, extra: ExtraLoss | None, epoch: int,
                 coordinator: GradientCoordinator | None) -> float:
    model.train()
    losses = []
    for i in rng.permutation(len(patients)):
        p = patients[i]
        out = model(batch_inputs(p, device, params.max_tiles, generator))
        loss = objective.loss(out["logits"], p.target)
        for term in out["aux"].values():
            loss = loss + term
        extra_term = extra(p, out, epoch) if extra is not None else None
        if extra_term is not None:
            loss = loss + extra_term
        opt.zero_grad(set_to_none=True)
        if coordinator is not None:
            loss = coordinator.backward(loss, out, p.target)
        else:
            for branch in branch_losses(objective, out, p.target).values():
                loss = loss + branch
            loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _coordinator(model: nn.Module, objective: Objective, params: TrainParams) -> GradientCoordinator | None:
    if not params.cgc:
        return None
    if not hasattr(model, "shared_parameters"):
        return None
    log.info("CGC on: branch gradients on %d shared parameter tensors are coordinated",
             len(model.shared_parameters()))
    return GradientCoordinator(model, objective)


def fit(model: nn.Module, train: Sequence[Patient], val: Sequence[Patient], objective: Objective,
        params: TrainParams, device: torch.device, extra: ExtraLoss | None = None,
        monitor_from: int = 1) -> FitResult:
    """Train with Adam; early-stop on the validation task loss and restore the best weights.

    Epochs before ``monitor_from`` (a distilled student's warm-up) are trained but neither kept
    as the best model nor counted towards the patience."""
    opt = Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    rng = np.random.default_rng(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    monitor = val
    if not val:
        log.warning("no validation patients; early stopping on the training set's loss")
        monitor = train
    best_loss, best_epoch, bad = math.inf, 0, 0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history = []
    coordinator = _coordinator(model, objective, params)
    for epoch in range(1, params.epochs + 1):
        t0 = time.perf_counter()
        train_loss = _train_epoch(model, train, objective, opt, params, device, rng, generator, extra, epoch,
                                  coordinator)
        val_loss, pred, _ = evaluate(model, monitor, objective, device)
        metric = objective.metric(pred)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_metric": metric,
               "lr": float(opt.lr), "seconds": seconds}
        if coordinator is not None:
            row["cgc_conflicts"] = coordinator.take_conflict_rate()
        history.append(row)
        log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_%s %.3f  (%.2f s)%s", epoch, params.epochs,
                 train_loss, val_loss, objective.metric_name, metric, seconds,
                 f"  CGC conflicts {row['cgc_conflicts']:.0%}" if coordinator is not None else "")
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} at epoch {epoch}; lower train.lr")
        if epoch < monitor_from:
            continue
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, bad = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= params.patience:
                log.info("early stop at epoch %d (no val-loss improvement for %d epochs)", epoch, bad)
                break
    model.load_state_dict(best_state)
    log.info("best epoch %d (val_loss %.4f)", best_epoch, best_loss)
    return FitResult(pd.DataFrame(history), best_epoch)
