"""Distillation from a frozen teacher checkpoint of the same task and fold.

The teacher's outputs (logits, features) are computed once, with every tile, for the
training patients that have the teacher's inputs; a survival student bins the times with the
teacher's edges (:func:`teacher_bin_edges`); after ``warmup_epochs`` of task loss only,
the student's loss adds ``kl_weight · KL(T) + feature_weight · MSE(features)`` for those
patients (the paper's schedule: warm up, then distil; its weights are 0.01 each).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathomix.errors import PathomixInputError
from pathomix.models import MODELS
from pathomix.tasks import Task
from pathomix.train.data import Patient
from pathomix.train.loop import ExtraLoss, batch_inputs
from pathomix.train.losses import LogProb, distillation_loss
from pathomix.train.params import DistillParams, TrainParams

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A pathomix checkpoint, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.exists():
        raise PathomixInputError(f"checkpoint {path} does not exist; train the teacher first")
    return torch.load(path, map_location="cpu", weights_only=True)


def check_teacher(ckpt: Mapping[str, Any], expected: str, task: Task, fold: int) -> None:
    """Refuse a checkpoint that is not model ``expected`` trained on this task and fold."""
    found = (ckpt.get("model"), ckpt.get("task"), ckpt.get("fold"))
    if found != (expected, task.name, fold):
        raise PathomixInputError(
            f"teacher checkpoint is model={found[0]} task={found[1]} fold={found[2]}; "
            f"this job needs model={expected} task={task.name} fold={fold}")


def teacher_bin_edges(ckpt: Mapping[str, Any], task: Task) -> dict[str, list[float]] | None:
    """``{task name: edges}``: the survival bin edges the student must share with its teacher (the
    survival KL compares their distributions bin by bin; edges refitted on the student's training
    patients, who need no genes, would misalign them). None for other task kinds; a survival teacher
    checkpoint without edges for ``task.n_outputs`` bins is refused."""
    if task.kind != "survival":
        return None
    edges = ckpt.get("bin_edges")
    if not isinstance(edges, list | tuple) or len(edges) != task.n_outputs + 1:
        raise PathomixInputError(
            f"the teacher checkpoint ({ckpt.get('model')}, {task.name}, fold {ckpt.get('fold')}) has survival bin "
            f"edges {edges!r}, not {task.n_outputs + 1} edges of {task.n_outputs} bins; the student must use the "
            "teacher's bins: retrain the teacher with this pathomix version")
    return {task.name: [float(e) for e in edges]}


def load_teacher(ckpt: Mapping[str, Any], expected: str, task: Task, fold: int, device: torch.device
                 ) -> nn.Module:
    """Rebuild a frozen teacher from ``ckpt``, checking it is ``expected`` (a model or variant
    name) for this task and fold."""
    check_teacher(ckpt, expected, task, fold)
    model_params = TrainParams.from_mapping(ckpt["params"]).model
    teacher = MODELS[ckpt.get("base_model", expected)].build(ckpt["dims"], task, model_params)
    if ckpt.get("covariate_stats"):  # trained with train.covariates: the same late fusion around it
        from pathomix.train.covariates import CovariateFusion

        teacher = CovariateFusion(teacher, int(ckpt["dims"]["covariates"]), task.n_outputs)
    teacher.load_state_dict(ckpt["model_state"])
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_targets(teacher: nn.Module, patients: Sequence[Patient], needed: Sequence[str],
                    device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """Frozen-teacher logits and features for every patient that has all ``needed`` inputs."""
    out = {}
    for p in patients:
        if all(k in p.inputs for k in needed):
            res = teacher(batch_inputs(p, device))
            out[p.patient_id] = {"logits": res["logits"].detach(), "features": res["features"].detach()}
    log.info("teacher targets for %d of %d training patients (others: task loss only)",
             len(out), len(patients))
    return out


def distill_term(targets: Mapping[str, dict[str, torch.Tensor]], params: DistillParams,
                 log_prob: LogProb) -> ExtraLoss:
    """The extra loss of the training loop: distillation for patients with a teacher target;
    ``log_prob`` is the task's output distribution (``Objective.log_prob``)."""

    def term(patient: Patient, outputs: dict[str, Any], epoch: int) -> torch.Tensor | None:
        target = targets.get(patient.patient_id)
        if target is None or epoch <= params.warmup_epochs:
            return None
        if outputs["features"].shape != target["features"].shape:
            raise PathomixInputError(
                f"student features {tuple(outputs['features'].shape)} do not match the teacher's "
                f"{tuple(target['features'].shape)}; train both with the same `hidden`")
        return distillation_loss(outputs, target, params.temperature, params.kl_weight, params.feature_weight,
                                 log_prob)

    return term
