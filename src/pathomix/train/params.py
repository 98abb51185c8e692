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

from pathomix.catalog.variants import SNAKEFILE_KEYS
from pathomix.devices import resolve_device
from pathomix.errors import PathomixInputError
from pathomix.models import ModelParams
from pathomix.params import field_names, load_params, read_json_object

__all__ = ["IGNORED_KEYS", "DistillParams", "TrainParams", "resolve_device"]

log = logging.getLogger(__name__)

IGNORED_KEYS = SNAKEFILE_KEYS  # in ``train:`` for the Snakefile, not for one job


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
    covariates: tuple[str, ...] = ()  # clinical-sheet columns every model also takes (late fusion, train.covariates)
    clinical_penalizer: float = 0.1  # cox_clinical: ridge penalty of the Cox model (logistic regression: C = 1/it)
    distill: DistillParams = field(default_factory=DistillParams)
    model: ModelParams = field(default_factory=ModelParams)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | str) -> TrainParams:
        """Parse the ``train:`` subtree (flat model keys, nested ``distill``; a dict or JSON text): the
        Snakefile's keys (:data:`IGNORED_KEYS`) are dropped, any other unknown key is an error."""
        values = read_json_object(raw, "train")
        for key in IGNORED_KEYS:
            values.pop(key, None)
        model_keys = set(field_names(ModelParams))
        known = (set(field_names(cls)) - {"model"}) | model_keys
        if unknown := sorted(set(values) - known):
            raise PathomixInputError(
                f"config `train`: unknown key(s) {unknown}; `train` knows {sorted(known | set(IGNORED_KEYS))}. "
                "Fix the spelling in config.yaml (or --config, or the train.variants entry), or remove the key")
        nested: dict[str, Any] = {k: v for k, v in values.items() if k not in model_keys}
        # the model's keys sit flat in `train:`, so their messages say train.<key>
        nested["model"] = load_params(ModelParams, {k: v for k, v in values.items() if k in model_keys}, where="train")
        return load_params(cls, nested, where="train")

    def to_dict(self) -> dict[str, Any]:
        """Flat, plain (JSON/``weights_only`` safe) form, the inverse of :meth:`from_mapping`."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("model", "distill")}
        out.update({k: getattr(self.model, k) for k in (f.name for f in dataclasses.fields(ModelParams))})
        out["aux_losses"] = {str(k): float(v) for k, v in self.model.aux_losses.items()}
        out["mags"] = list(self.model.mags)
        out["covariates"] = list(self.covariates)
        out["distill"] = dataclasses.asdict(self.distill)
        return out

