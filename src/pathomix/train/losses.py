"""Loss functions: discrete-time survival NLL, class-weighted cross-entropy, distillation."""

from __future__ import annotations

from collections.abc import Callable

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


def softmax_log_prob(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class log-probabilities at temperature T."""
    return F.log_softmax(logits / temperature, dim=-1)


def survival_log_pmf(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities of the K + 1 discrete-time outcomes at temperature T: death in bin k,
    P = S_{k-1}·h_k (k < K), or survival past the last bin, P = S_{K-1}; they sum to 1.

    Distilling this distribution (not a softmax over the hazard logits, which ignores their
    absolute level) keeps the student's hazards calibrated to the teacher's.
    """
    log_h = F.logsigmoid(logits / temperature)
    log_surv = torch.cumsum(F.logsigmoid(-logits / temperature), dim=-1)  # log S_k
    log_surv_before = torch.cat([torch.zeros_like(log_surv[:, :1]), log_surv[:, :-1]], dim=-1)
    return torch.cat([log_surv_before + log_h, log_surv[:, -1:]], dim=-1)


LogProb = Callable[[torch.Tensor, float], torch.Tensor]


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               log_prob: LogProb = softmax_log_prob) -> torch.Tensor:
    """KL(teacher_T || student_T) · T² (Hinton et al. 2015), batch mean; ``log_prob`` maps
    logits to the task's output distribution (softmax for classes, :func:`survival_log_pmf`)."""
    t = temperature
    return F.kl_div(log_prob(student_logits, t), log_prob(teacher_logits, t), reduction="batchmean",
                    log_target=True) * t * t


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                      temperature: float, kl_weight: float, feature_weight: float,
                      log_prob: LogProb = softmax_log_prob) -> torch.Tensor:
    """kl_weight · KL on the output distributions + feature_weight · MSE on ``features``
    (zero when student and teacher agree)."""
    kl = distill_kl(student["logits"], teacher["logits"], temperature, log_prob)
    mse = F.mse_loss(student["features"], teacher["features"])
    return kl_weight * kl + feature_weight * mse
