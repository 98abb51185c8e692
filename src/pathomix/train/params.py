"""Training parameters: the config's ``train:`` subtree as a frozen dataclass.

Defaults equal ``config.yaml``; the architecture part lives in
:class:`pathomix.models.spec.ModelParams` (its fields sit flat in ``train:``, next to these).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pathomix.models import ModelParams

log = logging.getLogger(__name__)

IGNORED_KEYS = ("models", "tasks", "variants")  # in ``train:`` for the Snakefile, not for one job


@dataclass(frozen=True)
class DistillParams:
    """Distillation from a frozen teacher: ``kl_weight`` · KL on the outputs at ``temperature``
    + ``feature_weight`` · MSE of the subspace features, after ``warmup_epochs`` of task loss only."""

    temperature: float = 2.0
    kl_weight: float = 1.0
    feature_weight: float = 1.0
    warmup_epochs: int = 5


@dataclass(frozen=True)
class TrainParams:
    seed: int = 0
    epochs: int = 40
    lr: float = 0.0005
    weight_decay: float = 0.0001
    patience: int = 10
    max_tiles: int = 4096
    device: str = "auto"
    empty_bags: str = "skip"  # a patient whose H&E stores all have 0 tiles: skip (logged) | error
    cgc: bool = True  # models with branch_logits: confidence-guided gradient coordination
    distill: DistillParams = field(default_factory=DistillParams)
    model: ModelParams = field(default_factory=ModelParams)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> TrainParams:
        """Parse the ``train:`` subtree (flat model keys, nested ``distill``); warn on unknown keys."""
        own = {f.name for f in dataclasses.fields(cls)} - {"distill", "model"}
        model_keys = {f.name for f in dataclasses.fields(ModelParams)}
        unknown = sorted(set(raw) - own - model_keys - {"distill", *IGNORED_KEYS})
        if unknown:
            log.warning("train params: ignoring unknown key(s) %s", unknown)
        distill = dict(raw.get("distill") or {})
        bad = sorted(set(distill) - {f.name for f in dataclasses.fields(DistillParams)})
        if bad:
            log.warning("train params: ignoring unknown distill key(s) %s", bad)
        return cls(
            **{k: _coerce(cls, k, raw[k]) for k in own if k in raw},
            distill=DistillParams(**{k: _coerce(DistillParams, k, v) for k, v in distill.items() if k not in bad}),
            model=ModelParams(**{k: _coerce(ModelParams, k, raw[k]) for k in model_keys if k in raw}),
        )

    def to_dict(self) -> dict[str, Any]:
        """Flat, plain (JSON/``weights_only`` safe) form, the inverse of :meth:`from_mapping`."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("model", "distill")}
        out.update({k: getattr(self.model, k) for k in (f.name for f in dataclasses.fields(ModelParams))})
        out["aux_losses"] = {str(k): float(v) for k, v in self.model.aux_losses.items()}
        out["mags"] = list(self.model.mags)
        out["distill"] = dataclasses.asdict(self.distill)
        return out


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Cast ``value`` to the type of the default of field ``name`` (bool/int/float/str/tuple);
    mappings become {str: float}."""
    default = next(f for f in dataclasses.fields(cls) if f.name == name)
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    kind = type(default.default) if default.default is not dataclasses.MISSING else None
    if kind is bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if kind is tuple:
        return tuple(str(v) for v in value)
    return kind(value) if kind in (int, float, str) else value


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
