"""Confidence-guided gradient coordination (CGC, DMSF arXiv 2508.16479).

A model with two branches (``outputs["branch_logits"]``: tumour and TME halves of the
classifier, whose mean is ``logits``) trains each branch on the task, and both branches pull
on the parameters they share (``model.shared_parameters()``). When the two branch gradients
on those parameters conflict (negative inner product), the gradient of the *less confident*
branch is projected onto the normal plane of the more confident one's (PCGrad-style, Yu et
al. 2020, with the order set by confidence instead of at random); the confident branch keeps
its direction. Confidence = the branch's probability of the true outcome
(``Objective.confidence``).

Every gradient that reaches the shared parameters goes through the coordination, so the
``-noCGC`` ablation removes the whole mechanism: a branch's gradient is everything that flows
through its logits, i.e. its own task loss (deep supervision) *and* its share of the task loss
of the mean logits (that loss evaluated with the other branch's logits detached: the two
shares sum to the loss's gradient exactly). The terms that flow through neither branch's
logits (the auxiliary consistency terms, distillation) keep their direction unless they
conflict with the confident branch, in which case their conflicting component is removed too.
The other parameters get the plain sum; a parameter no term reaches keeps ``grad = None``.
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


def branch_shares(objective: Objective, outputs: Mapping, target: Target) -> dict[str, torch.Tensor]:
    """Per branch, every task term that flows through its logits: its own loss (:func:`branch_losses`)
    plus the task loss of the mean logits with the other branches' logits detached. Each share has
    the value of that loss; the shares' gradients sum to the gradient of (task loss of ``logits``
    + branch losses)."""
    logits = outputs["branch_logits"]
    own = branch_losses(objective, outputs, target)
    return {name: objective.loss(torch.stack([z if other == name else z.detach() for other, z in logits.items()])
                                 .mean(dim=0), target) + own[name]
            for name in logits}


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[nn.Parameter]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params,
                                                                                               strict=True)])


def remove_conflict(g: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``g`` without its component against ``anchor`` (unchanged when their inner product is ≥ 0)."""
    dot = torch.dot(g, anchor)
    return g if dot >= 0 else g - dot / anchor.dot(anchor).clamp_min(1e-12) * anchor


def _sum(grads: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    present = [g for g in grads if g is not None]
    return torch.stack(present).sum(dim=0) if present else None


class GradientCoordinator:
    """Backward pass with CGC for one training step; counts the conflicting steps."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        shared = {id(p) for p in model.shared_parameters()}
        self.shared = [i for i, p in enumerate(self.params) if id(p) in shared]
        self.objective = objective
        self.steps = self.conflicts = 0

    def backward(self, outputs: Mapping, target: Target, rest: torch.Tensor | None = None) -> torch.Tensor:
        """Set ``grad`` of the model's parameters for the step's loss: the task loss of ``logits``, the
        branch losses and ``rest`` (the terms outside the task: auxiliary, distillation; None when
        there are none), with every gradient on the shared parameters coordinated. → the loss."""
        shares = branch_shares(self.objective, outputs, target)
        if len(shares) != 2:
            raise ValueError(f"CGC needs exactly two branches, got {sorted(shares)}")
        (name_a, loss_a), (name_b, loss_b) = shares.items()
        terms = [loss_a, loss_b] + ([rest] if rest is not None and rest.requires_grad else [])
        grads = [torch.autograd.grad(t, self.params, retain_graph=i < len(terms) - 1, allow_unused=True)
                 for i, t in enumerate(terms)]
        conf = [self.objective.confidence(outputs["branch_logits"][n].detach(), target) for n in (name_a, name_b)]
        shared = [self.params[i] for i in self.shared]
        flat = [_flat([g[i] for i in self.shared], shared) for g in grads]
        result = coordinate(flat[0], flat[1], conf[0], conf[1])
        confident = flat[0] if conf[0] >= conf[1] else flat[1]
        update = result.grads[0] + result.grads[1] + sum(remove_conflict(g, confident) for g in flat[2:])
        self.steps += 1
        self.conflicts += int(result.conflict)
        offset, shared_ids = 0, set(self.shared)
        for i, p in enumerate(self.params):
            if i in shared_ids:
                g = update[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                if all(gs[i] is None for gs in grads):
                    continue  # reached by no term: grad stays None (Adam, weight decay leave it alone)
            else:
                g = _sum([gs[i] for gs in grads])
                if g is None:
                    continue
            p.grad = g.clone() if p.grad is None else p.grad + g
        with torch.no_grad():
            task = self.objective.loss(outputs["logits"], target)
            own = sum(branch_losses(self.objective, outputs, target).values())
            return task + own + (rest.detach() if rest is not None else 0.0)

    def take_conflict_rate(self) -> float:
        """Share of steps since the last call whose branch gradients conflicted (then reset)."""
        rate = self.conflicts / self.steps if self.steps else float("nan")
        self.steps = self.conflicts = 0
        return rate
