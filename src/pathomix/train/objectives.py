"""Per task kind (classification, survival): loss, prediction columns and validation metric.

One registry (:data:`OBJECTIVES`) keyed by ``Task.kind``; the training loop never branches
on the kind itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathomix.tasks import Task
from pathomix.train.losses import (
    LogProb,
    class_weights,
    cross_entropy,
    softmax_log_prob,
    survival_log_pmf,
    survival_nll,
    survival_risk,
)

log = logging.getLogger(__name__)

Target = Mapping[str, float]  # classification: {y}; survival: {time, event, bin}


@dataclass(frozen=True)
class Objective:
    """``loss(logits, target)``; ``rows(logits, target)`` → prediction columns of one patient;
    ``metric(predictions)`` → validation metric (``metric_name``); ``confidence(logits, target)``
    → the predicted probability of the observed outcome (true class; for survival the
    likelihood of the observed death bin or of surviving past the censoring bin)."""

    loss: Callable[[torch.Tensor, Target], torch.Tensor]
    rows: Callable[[torch.Tensor, Target], dict[str, Any]]
    metric: Callable[[pd.DataFrame], float]
    metric_name: str
    columns: tuple[str, ...]  # the prediction columns ``rows`` returns, in order
    log_prob: LogProb  # logits, temperature → output log-distribution (for distillation)
    confidence: Callable[[torch.Tensor, Target], float]  # probability of the true outcome (CGC)


def _classification(task: Task, train_targets: Sequence[Target], device: torch.device) -> Objective:
    labels = np.array([t["y"] for t in train_targets], int)
    weight = class_weights(labels, len(task.classes)).to(device)
    log.info("class weights from %d training labels: %s", len(labels),
             dict(zip(task.classes, np.round(weight.cpu().numpy(), 3).tolist(), strict=True)))

    def loss(logits: torch.Tensor, target: Target) -> torch.Tensor:
        return cross_entropy(logits, torch.tensor([int(target["y"])], device=logits.device), weight)

    def rows(logits: torch.Tensor, target: Target) -> dict[str, Any]:
        prob = torch.softmax(logits.float(), dim=-1)[0].cpu().numpy()
        out: dict[str, Any] = {"y_true": int(target["y"]), "y_pred": int(prob.argmax())}
        out.update({f"prob_{c}": float(p) for c, p in zip(task.classes, prob, strict=True)})
        return out

    def accuracy(pred: pd.DataFrame) -> float:
        return float((pred.y_true == pred.y_pred).mean()) if len(pred) else float("nan")

    def confidence(logits: torch.Tensor, target: Target) -> float:
        return float(torch.softmax(logits.float(), dim=-1)[0, int(target["y"])])

    columns = ("y_true", "y_pred", *(f"prob_{c}" for c in task.classes))
    return Objective(loss, rows, accuracy, "accuracy", columns, softmax_log_prob, confidence)


def _survival(task: Task, train_targets: Sequence[Target], device: torch.device) -> Objective:
    def loss(logits: torch.Tensor, target: Target) -> torch.Tensor:
        b = torch.tensor([int(target["bin"])], device=logits.device)
        e = torch.tensor([float(target["event"])], device=logits.device)
        return survival_nll(logits, b, e)

    def rows(logits: torch.Tensor, target: Target) -> dict[str, Any]:
        return {"time": float(target["time"]), "event": int(target["event"]),
                "risk": float(survival_risk(logits.float())[0]), "bin": int(target["bin"])}

    def confidence(logits: torch.Tensor, target: Target) -> float:
        return float(torch.exp(-loss(logits.float(), target)))  # likelihood of the observed outcome

    return Objective(loss, rows, c_index, "c_index", ("time", "event", "risk", "bin"), survival_log_pmf,
                     confidence)


def c_index(pred: pd.DataFrame) -> float:
    """Harrell's C of ``risk`` (higher = worse) against (time, event); NaN without comparable pairs."""
    return harrell_c(pred.time.to_numpy(float), pred.risk.to_numpy(float), pred.event.to_numpy(bool))


def harrell_c(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float:
    """Harrell's concordance index with lifelines' conventions, in O(n²) (validation sets are small).

    A pair (i, j) is comparable when i died first (t_i < t_j), or at the time j was censored;
    it is concordant when risk_i > risk_j, and counts 0.5 when the risks tie. Equals
    ``lifelines.utils.concordance_index(time, -risk, event)`` without importing lifelines.
    """
    t, r, e = np.asarray(time, float), np.asarray(risk, float), np.asarray(event, bool)
    earlier = t[:, None] < t[None, :]
    tied_censored = (t[:, None] == t[None, :]) & ~e[None, :]
    comparable = e[:, None] & (earlier | tied_censored)
    n_pairs = int(comparable.sum())
    if n_pairs == 0:
        return float("nan")
    concordant = (comparable & (r[:, None] > r[None, :])).sum()
    tied = (comparable & (r[:, None] == r[None, :])).sum()
    return float((concordant + 0.5 * tied) / n_pairs)


OBJECTIVES: dict[str, Callable[[Task, Sequence[Target], torch.device], Objective]] = {
    "classification": _classification,
    "survival": _survival,
}


def make_objective(task: Task, train_targets: Sequence[Target], device: torch.device) -> Objective:
    """The objective of ``task.kind``, fitted to the training targets (class weights)."""
    return OBJECTIVES[task.kind](task, train_targets, device)


def task_view(name: str, objective: Objective) -> Objective:
    """``objective`` of task ``name`` inside joint training: reads ``logits[name]`` and ``target[name]``
    (a joint model returns logits per task; a patient's target holds the tasks it has labels for)."""
    return Objective(
        loss=lambda logits, target: objective.loss(logits[name], target[name]),
        rows=lambda logits, target: objective.rows(logits[name], target[name]),
        metric=objective.metric, metric_name=objective.metric_name, columns=objective.columns,
        log_prob=objective.log_prob,
        confidence=lambda logits, target: objective.confidence(logits[name], target[name]))


def joint_objective(tasks: Sequence[Task], train_targets: Sequence[Mapping[str, Target]],
                    device: torch.device) -> tuple[Objective, dict[str, Objective]]:
    """Joint multi-task training (one model, a head per task) → (the joint objective, a view per task).

    The joint loss is the sum of the task losses a patient has labels for; its rows carry each task's
    columns as ``{task}:{column}``, and its metric (early stopping's log) is the mean of the task metrics."""
    views = {t.name: task_view(t.name, make_objective(t, [g[t.name] for g in train_targets if t.name in g], device))
             for t in tasks}

    def loss(logits: Mapping[str, torch.Tensor], target: Mapping[str, Target]) -> torch.Tensor:
        return torch.stack([views[t].loss(logits, target) for t in target]).sum()

    def rows(logits: Mapping[str, torch.Tensor], target: Mapping[str, Target]) -> dict[str, Any]:
        return {f"{t}:{c}": v for t in target for c, v in views[t].rows(logits, target).items()}

    def metric(pred: pd.DataFrame) -> float:
        values = []
        for t, view in views.items():
            cols = {f"{t}:{c}": c for c in view.columns}
            part = pred.reindex(columns=list(cols)).dropna(how="all").rename(columns=cols)
            values.append(view.metric(part) if len(part) else float("nan"))
        return float(np.nanmean(values)) if not np.isnan(values).all() else float("nan")

    def unsupported(*_: Any) -> Any:
        raise NotImplementedError("joint multi-task training has no single output distribution")

    columns = tuple(f"{t}:{c}" for t, view in views.items() for c in view.columns)
    return Objective(loss, rows, metric, "mean_metric", columns, unsupported, unsupported), views
