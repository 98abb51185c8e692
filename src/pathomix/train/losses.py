"""Loss functions: discrete-time survival NLL, class-weighted cross-entropy, distillation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-7


def survival_nll(logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor,
                 alpha: float = 0.0) -> torch.Tensor:
    """Discrete-time survival negative log-likelihood (Zadeh & Schmid 2020; PORPOISE/MCAT).

    hazards h_k = sigmoid(logits_k), survival S_k = prod_{j<=k} (1 - h_j), S_{-1} = 1.
    Uncensored (event = 1) in bin y: -log S_{y-1} - log h_y; censored: -log S_y.
    ``alpha`` up-weights the uncensored term: (1 - alpha)·(unc + cens) + alpha·unc.
    Returns the mean over the batch. ``bins`` (B,) long, ``events`` (B,) in {0, 1}.
    """
    hazards = torch.sigmoid(logits)
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)  # surv_pad[:, k] = S_{k-1}
    y = bins.long().view(-1, 1)
    e = events.float().view(-1, 1)
    s_before = torch.gather(surv_pad, 1, y).clamp_min(EPS)
    h_at = torch.gather(hazards, 1, y).clamp_min(EPS)
    s_at = torch.gather(surv_pad, 1, y + 1).clamp_min(EPS)
    uncensored = -e * (torch.log(s_before) + torch.log(h_at))
    censored = -(1 - e) * torch.log(s_at)
    loss = (1 - alpha) * (uncensored + censored) + alpha * uncensored
    return loss.mean()


def survival_curve(logits: torch.Tensor) -> torch.Tensor:
    """S_k = prod_{j<=k} (1 - sigmoid(logits_j)), shape (B, K)."""
    return torch.cumprod(1 - torch.sigmoid(logits), dim=1)


def survival_risk(logits: torch.Tensor) -> torch.Tensor:
    """Risk score = -sum_k S_k (higher = worse; PORPOISE's convention)."""
    return -survival_curve(logits).sum(dim=1)


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights n / (K · count_c) from the training labels (absent classes: 1)."""
    counts = np.bincount(np.asarray(labels, int), minlength=n_classes).astype(float)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Cross-entropy with optional class weights."""
    return F.cross_entropy(logits, labels.long().view(-1), weight=weight)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
               ) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) · T² (Hinton et al. 2015), batch mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                      temperature: float, kl_weight: float, feature_weight: float) -> torch.Tensor:
    """kl_weight · KL on logits + feature_weight · MSE on ``features`` (zero when equal)."""
    kl = distill_kl(student["logits"], teacher["logits"], temperature)
    mse = F.mse_loss(student["features"], teacher["features"])
    return kl_weight * kl + feature_weight * mse
