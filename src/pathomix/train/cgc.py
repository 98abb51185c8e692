"""Confidence-guided gradient coordination (CGC, DMSF arXiv 2508.16479).

A model with two branches (``outputs["branch_logits"]``: tumour and TME halves of the
classifier) trains each branch on the task, and both branches pull on the parameters they
share (``model.shared_parameters()``). When the two branch gradients on those parameters
conflict (negative cosine), the gradient of the *less confident* branch is projected onto the
normal plane of the more confident one's (PCGrad-style, Yu et al. 2020, with the order set by
confidence instead of at random); the confident branch keeps its direction.
Confidence = the branch's probability of the true outcome (``Objective.confidence``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pathomix.train.objectives import Objective, Target


@dataclass(frozen=True)
class Coordinated:
    """Result of :func:`coordinate`: the (possibly projected) gradients and whether they conflicted."""

    grads: tuple[torch.Tensor, torch.Tensor]
    conflict: bool


def coordinate(g_a: torch.Tensor, g_b: torch.Tensor, conf_a: float, conf_b: float) -> Coordinated:
    """Project the less confident of two flat gradients onto the normal plane of the other when
    they conflict; otherwise return them unchanged. After projection their cosine is 0."""
    dot = torch.dot(g_a, g_b)
    if dot >= 0:
        return Coordinated((g_a, g_b), False)
    if conf_a >= conf_b:  # b is less confident: remove its component along a
        return Coordinated((g_a, g_b - dot / g_a.dot(g_a).clamp_min(1e-12) * g_a), True)
    return Coordinated((g_a - dot / g_b.dot(g_b).clamp_min(1e-12) * g_b, g_b), True)


def branch_losses(objective: Objective, outputs: Mapping, target: Target) -> dict[str, torch.Tensor]:
    """Task loss of each branch, divided by the number of branches (deep supervision of the halves
    adds their mean, so the step's loss keeps the scale of one task loss per term)."""
    branches = outputs.get("branch_logits") or {}
    return {name: objective.loss(logits, target) / len(branches) for name, logits in branches.items()}


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[nn.Parameter]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params,
                                                                                               strict=True)])


class GradientCoordinator:
    """Backward pass with CGC for one training step; counts the conflicting steps."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        self.params = [p for p in model.shared_parameters() if p.requires_grad]
        self.objective = objective
        self.steps = self.conflicts = 0

    def backward(self, loss: torch.Tensor, outputs: Mapping, target: Target) -> torch.Tensor:
        """``loss`` (the step's total, without branch terms) + the branch losses, backpropagated with
        the branch gradients on the shared parameters coordinated. Returns the total loss."""
        branches = branch_losses(self.objective, outputs, target)
        if len(branches) != 2:
            raise ValueError(f"CGC needs exactly two branches, got {sorted(branches)}")
        (name_a, loss_a), (name_b, loss_b) = branches.items()
        raw = [_flat(torch.autograd.grad(b, self.params, retain_graph=True, allow_unused=True), self.params)
               for b in (loss_a, loss_b)]
        conf = [self.objective.confidence(outputs["branch_logits"][n].detach(), target) for n in (name_a, name_b)]
        result = coordinate(raw[0], raw[1], conf[0], conf[1])
        total = loss + loss_a + loss_b
        total.backward()
        self.steps += 1
        if result.conflict:
            self.conflicts += 1
            delta = (result.grads[0] - raw[0]) + (result.grads[1] - raw[1])
            offset = 0
            for p in self.params:
                n = p.numel()
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(delta[offset:offset + n].view_as(p))
                offset += n
        return total

    def take_conflict_rate(self) -> float:
        """Share of steps since the last call whose branch gradients conflicted (then reset)."""
        rate = self.conflicts / self.steps if self.steps else float("nan")
        self.steps = self.conflicts = 0
        return rate
