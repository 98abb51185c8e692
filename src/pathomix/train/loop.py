"""Epoch loop with early stopping on the validation loss, and evaluation/prediction.

Batch size is one bag (standard MIL). During training a bag (H&E or mIF) larger than
``max_tiles`` is subsampled at random; evaluation always sees every tile. Evaluation can also
record the models' attention over the tiles and, for mIF models, over the markers of each slide.
A step's loss is the task loss + the model's auxiliary terms + the extra term (distillation) +
the task loss of each branch when the model has ``branch_logits``; with ``train.cgc`` every gradient
on the shared parameters is coordinated (:mod:`pathomix.train.cgc`).
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

from pathomix.models import TILE_INPUTS, tile_key, wsi_key
from pathomix.train.cgc import GradientCoordinator, branch_losses
from pathomix.train.data import Patient
from pathomix.train.objectives import Objective
from pathomix.train.optim import Adam
from pathomix.train.params import TrainParams

log = logging.getLogger(__name__)

ExtraLoss = Callable[[Patient, dict[str, Any], int], "torch.Tensor | None"]  # patient, outputs, epoch
ATTENTION_COLUMNS = ("patient_id", "slide_id", "mag", "tile_index", "weight", "head")
MARKER_COLUMNS = ("patient_id", "slide_id", "mag", "marker", "weight")
TILE_PREFIXES = tuple(f"{kind}_" for kind in TILE_INPUTS)


@dataclass(frozen=True)
class Explain:
    """What :func:`evaluate` records besides predictions: attention over the tiles of the bags of
    ``tiles`` (``wsi`` | ``mif``, :attr:`pathomix.models.ModelSpec.tile_input`) and, when the
    model returns ``marker_attention``, one distribution over ``markers`` per slide."""

    tiles: str
    markers: tuple[str, ...] = ()


@dataclass(frozen=True)
class FitResult:
    history: pd.DataFrame  # epoch, train_loss, val_loss, val_metric, lr, seconds[, cgc_conflicts]
    best_epoch: int


def batch_inputs(patient: Patient, device: torch.device, max_tiles: int | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One patient's inputs as float32 batch-of-one tensors on ``device``; a bag (H&E or mIF) larger
    than ``max_tiles`` is subsampled, the H&E tile positions (``pos_{mag}``) with the same tiles."""
    picks = {key: torch.randperm(len(value), generator=generator)[:max_tiles].sort().values
             for key, value in patient.inputs.items()
             if max_tiles and key.startswith(TILE_PREFIXES) and len(value) > max_tiles}
    out = {}
    for key, value in patient.inputs.items():
        kind, _, mag = key.partition("_")
        bag = wsi_key(mag) if kind == "pos" else key  # the bag whose tiles this input indexes
        if bag in picks:
            value = value[picks[bag].to(value.device)]
        out[key] = value.to(device=device, dtype=torch.float32).unsqueeze(0)
    return out


def stage_on_device(patients: Sequence[Patient], device: torch.device, share: float = 0.5) -> bool:
    """Move the patients' inputs to ``device`` once, as float32, when they fit in ``share`` of its free
    memory: the per-step host→device copy of a 10 000-tile bag was 30–60 % of a training step on an
    H100 (benchmarks/train_speed.py). → whether they were moved (never on the CPU)."""
    if device.type != "cuda":
        return False
    need = sum(v.numel() * 4 for p in patients for v in p.inputs.values())
    free, _ = torch.cuda.mem_get_info(device)
    if need > share * free:
        log.info("bags stay on the host: %.1f GiB > %.0f %% of %.1f GiB free", need / 2**30, 100 * share, free / 2**30)
        return False
    for p in patients:
        p.inputs = {k: v.to(device=device, dtype=torch.float32) for k, v in p.inputs.items()}
    return True


def _attention_frame(patient: Patient, attention: dict[str, dict[str, torch.Tensor]], tiles: str
                     ) -> list[pd.DataFrame]:
    frames = []
    for head, by_mag in attention.items():
        for mag, weights in by_mag.items():
            bag = patient.bags[tile_key(tiles, mag)]
            frames.append(pd.DataFrame({
                "patient_id": patient.patient_id, "slide_id": bag.slide_ids.astype(str), "mag": mag,
                "tile_index": bag.tile_index, "weight": weights[0].float().cpu().numpy(), "head": head}))
    return frames


def _marker_frame(patient: Patient, out: dict[str, Any], explain: Explain) -> list[pd.DataFrame]:
    """Per slide and magnification, the tile marker distributions averaged with the tiles' attention
    (mean over heads, renormalised within the slide): the share of each marker in what the
    model pools from that slide. Sums to 1 over the markers of each slide."""
    frames = []
    for mag, per_tile in out.get("marker_attention", {}).items():
        bag = patient.bags[tile_key(explain.tiles, mag)]
        w = per_tile[0].float().cpu().numpy()  # (N, C)
        heads = [by_mag[mag][0].float().cpu().numpy() for by_mag in out["attention"].values() if mag in by_mag]
        tile_w = np.mean(heads, axis=0) if heads else np.ones(len(w))
        markers = explain.markers or tuple(f"channel{i}" for i in range(w.shape[1]))
        for slide in dict.fromkeys(bag.slide_ids.astype(str)):
            sel = bag.slide_ids.astype(str) == slide
            a = tile_w[sel] / max(float(tile_w[sel].sum()), 1e-12)
            frames.append(pd.DataFrame({"patient_id": patient.patient_id, "slide_id": slide, "mag": mag,
                                        "marker": list(markers), "weight": a @ w[sel]}))
    return frames


@torch.no_grad()
def evaluate(model: nn.Module, patients: Sequence[Patient], objective: Objective, device: torch.device,
             explain: Explain | None = None) -> tuple[float, pd.DataFrame, dict[str, pd.DataFrame]]:
    """→ (mean task loss, one prediction row per patient, tables): with ``explain``, tables holds
    ``attention`` (:data:`ATTENTION_COLUMNS`) and ``marker_attention`` (:data:`MARKER_COLUMNS`; no
    rows for models without marker attention); without it, no tables."""
    model.eval()
    losses, rows = [], []
    columns = {"attention": ATTENTION_COLUMNS, "marker_attention": MARKER_COLUMNS}
    frames: dict[str, list[pd.DataFrame]] = {k: [] for k in columns}
    for p in patients:
        out = model(batch_inputs(p, device))
        losses.append(float(objective.loss(out["logits"], p.target)))
        rows.append({"patient_id": p.patient_id, "split": p.split, **objective.rows(out["logits"], p.target)})
        if explain is not None:
            frames["attention"].extend(_attention_frame(p, out["attention"], explain.tiles))
            frames["marker_attention"].extend(_marker_frame(p, out, explain))
    pred = pd.DataFrame(rows, columns=["patient_id", "split", *objective.columns])
    tables = {k: pd.concat(f, ignore_index=True) if f else pd.DataFrame(columns=list(columns[k]))
              for k, f in frames.items()} if explain is not None else {}
    return (float(np.mean(losses)) if losses else math.nan), pred, tables


def _train_epoch(model: nn.Module, patients: Sequence[Patient], objective: Objective,
                 opt: Adam, params: TrainParams, device: torch.device, rng: np.random.Generator,
                 generator: torch.Generator, extra: ExtraLoss | None, epoch: int,
                 coordinator: GradientCoordinator | None) -> float:
    model.train()
    losses = []
    for i in rng.permutation(len(patients)):
        p = patients[i]
        out = model(batch_inputs(p, device, params.max_tiles, generator))
        rest = [*out["aux"].values()]  # the terms besides the task loss(es)
        extra_term = extra(p, out, epoch) if extra is not None else None
        if extra_term is not None:
            rest.append(extra_term)
        opt.zero_grad(set_to_none=True)
        if coordinator is not None:
            loss = coordinator.backward(out, p.target, sum(rest) if rest else None)
        else:
            loss = objective.loss(out["logits"], p.target)
            for term in [*rest, *branch_losses(objective, out, p.target).values()]:
                loss = loss + term
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


class EarlyStopping:
    """Early stopping on the validation loss: keeps the best weights; epochs before ``monitor_from``
    (a distilled student's warm-up) are neither kept as the best nor counted towards ``patience``.
    When no epoch could be kept (all of them in the warm-up, or no finite validation loss) the
    model keeps its last weights, never its initial ones."""

    def __init__(self, model: nn.Module, patience: int, monitor_from: int = 1) -> None:
        self.model, self.patience, self.monitor_from = model, patience, monitor_from
        self.best_loss, self.best_epoch, self.bad, self.last_epoch = math.inf, 0, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def update(self, epoch: int, train_loss: float, val_loss: float) -> bool:
        """Record one epoch → True when training should stop; a non-finite training loss raises."""
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} at epoch {epoch}; lower train.lr")
        self.last_epoch = epoch
        if epoch < self.monitor_from:
            return False
        if val_loss < self.best_loss - 1e-6:
            self.best_loss, self.best_epoch, self.bad = val_loss, epoch, 0
            self.best_state = self._state()
            return False
        self.bad += 1
        if self.bad >= self.patience:
            log.info("early stop at epoch %d (no val-loss improvement for %d epochs)", epoch, self.bad)
            return True
        return False

    def restore(self) -> int:
        """Load the best weights into the model → the best epoch (the last one when none was kept)."""
        if self.best_state is None:
            log.warning("no epoch could be kept as the best (the %d trained epoch(s) are all before epoch %d, "
                        "the end of the warm-up, or gave no finite validation loss): keeping the last epoch's "
                        "weights", self.last_epoch, self.monitor_from)
            return self.last_epoch
        self.model.load_state_dict(self.best_state)
        log.info("best epoch %d (val_loss %.4f)", self.best_epoch, self.best_loss)
        return self.best_epoch


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
    stopper = EarlyStopping(model, params.patience, monitor_from)
    history = []
    coordinator = _coordinator(model, objective, params)
    stage_on_device([*train, *val], device)
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
        if stopper.update(epoch, train_loss, val_loss):
            break
    return FitResult(pd.DataFrame(history), stopper.restore())
