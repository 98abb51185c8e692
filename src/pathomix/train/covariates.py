"""Clinical covariates (``train.covariates``): clinical-sheet columns as a model input, fitted per fold.

Everything is fitted on the fold's **training patients only** and applied unchanged to its validation,
test and external patients:

- a numeric column (every non-missing value parses as a number, e.g. ``age``) is imputed with the
  training median, then standardised with the training mean and standard deviation;
- any other column is categorical: missing values take the training mode, and the column becomes
  one-hot indicators of its training levels except the most frequent one (the reference level, all
  zeros); a level never seen in training is also all zeros (logged).

:class:`CovariateStats` holds the fitted values; it travels in the checkpoint (``covariate_stats``) so
that a prediction later uses exactly the training transform. :class:`CovariateFusion` adds them to any model
(late fusion on the logits).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pathomix.errors import PathomixInputError
from pathomix.models.clinical import COVARIATES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CovariateStats:
    """The fitted transform: ``numeric`` column → (median, mean, sd); ``categorical`` column → (mode,
    levels with an indicator); ``names``: the output columns in order."""

    columns: tuple[str, ...]
    numeric: dict[str, tuple[float, float, float]]
    categorical: dict[str, tuple[str, tuple[str, ...]]]
    names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CovariateStats:
        return cls(tuple(d["columns"]), {k: tuple(v) for k, v in d["numeric"].items()},
                   {k: (m, tuple(levels)) for k, (m, levels) in d["categorical"].items()}, tuple(d["names"]))


def _is_numeric(values: pd.Series) -> bool:
    present = values.dropna()
    return bool(len(present)) and pd.to_numeric(present, errors="coerce").notna().all()


def fit_covariates(clinical: pd.DataFrame, train: Sequence[str], columns: Sequence[str],
                   source: str = "clinical sheet") -> CovariateStats:
    """Fit the transform of ``columns`` on the ``train`` patients (index of ``clinical``)."""
    missing = [c for c in columns if c not in clinical.columns]
    if missing:
        raise PathomixInputError(f"train.covariates names {missing}, which {source} has no column of; add the "
                                 f"column(s) to the sheet or remove them from train.covariates")
    rows = clinical.loc[list(train)]
    numeric, categorical, names = {}, {}, []
    for col in columns:
        values = rows[col]
        if values.isna().all():
            raise PathomixInputError(f"covariate {col}: no training patient of this fold has a value in {source}; "
                                     f"fill the column or remove {col} from train.covariates")
        if _is_numeric(clinical[col]):
            x = pd.to_numeric(values, errors="coerce")
            median = float(x.median())
            x = x.fillna(median)
            sd = float(x.std(ddof=0))
            numeric[col] = (median, float(x.mean()), sd if sd > 0 else 1.0)
            names.append(col)
        else:
            counts = values.dropna().astype(str).value_counts(sort=False).sort_index(kind="stable")
            mode = str(counts.idxmax())  # the most frequent level (alphabetically first among ties): the reference
            levels = tuple(v for v in counts.index if v != mode)
            categorical[col] = (mode, levels)
            names += [f"{col}={v}" for v in levels]
        if values.isna().any():
            log.info("covariate %s: %d training patient(s) without a value, imputed", col, int(values.isna().sum()))
    stats = CovariateStats(tuple(columns), numeric, categorical, tuple(names))
    log.info("covariates %s → %d inputs %s, fitted on %d training patients", list(columns), len(names),
             list(names), len(rows))
    return stats


def covariate_matrix(clinical: pd.DataFrame, patients: Sequence[str], stats: CovariateStats) -> np.ndarray:
    """(len(patients), len(stats.names)) float32: the fitted transform applied to ``patients``."""
    rows = clinical.reindex(list(patients))
    out = []
    for col in stats.columns:
        if col in stats.numeric:
            median, mean, sd = stats.numeric[col]
            x = pd.to_numeric(rows[col], errors="coerce").fillna(median).to_numpy(float)
            out.append(((x - mean) / sd)[:, None])
            continue
        mode, levels = stats.categorical[col]
        x = rows[col].astype(object).where(rows[col].notna(), mode).astype(str)
        unseen = sorted(set(x) - set(levels) - {mode})
        if unseen:
            log.warning("covariate %s: level(s) %s not seen in training; treated as the reference level %r",
                        col, unseen, mode)
        out.append(np.stack([(x == v).to_numpy(float) for v in levels], axis=1) if levels
                   else np.zeros((len(x), 0)))
    return (np.concatenate(out, axis=1) if out else np.zeros((len(rows), 0))).astype(np.float32)


class CovariateFusion(nn.Module):
    """Late fusion of the covariates into any model: ``logits + W · covariates`` (one linear map per task for a
    joint model's ``{task: logits}``; the same term is added to every ``branch_logits`` entry, so their mean
    stays ``logits`` and CGC sees it in each branch). ``W`` starts at zero: at the first step the model is
    exactly the wrapped one. Attributes the training loop asks of the model (``shared_parameters``, …) are the
    wrapped model's."""

    def __init__(self, model: nn.Module, n_covariates: int, n_outputs: int | Mapping[str, int]) -> None:
        super().__init__()
        self.inner = model
        sizes = n_outputs if isinstance(n_outputs, Mapping) else {"": n_outputs}
        self.heads = nn.ModuleDict({name or "_": nn.Linear(n_covariates, n, bias=False) for name, n in sizes.items()})
        for head in self.heads.values():
            nn.init.zeros_(head.weight)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def _shift(self, logits: Any, x: torch.Tensor) -> Any:
        if isinstance(logits, Mapping):
            return {task: value + self.heads[task](x) for task, value in logits.items()}
        return logits + self.heads["_"](x)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        if COVARIATES not in inputs:
            raise PathomixInputError("this model was trained with clinical covariates (train.covariates) but the "
                                     "inputs carry none; train it again without them or give the same covariates")
        out = dict(self.inner(inputs))
        x = inputs[COVARIATES]
        out["logits"] = self._shift(out["logits"], x)
        if "branch_logits" in out:
            out["branch_logits"] = {b: self._shift(v, x) for b, v in out["branch_logits"].items()}
        return out
