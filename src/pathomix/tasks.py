"""Tasks and labels (DESIGN.md §3, §6): one registry, derived from the clinical sheet.

WHO-2021 diagnosis is derived, never typed by hand:
IDH-mut + 1p/19q codel → oligodendroglioma; IDH-mut non-codel → astrocytoma;
IDH-wt → glioblastoma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

DIAGNOSES = ("astrocytoma", "oligodendroglioma", "glioblastoma")
N_SURVIVAL_BINS = 4


def who2021_diagnosis(idh: str | float, codel: str | float) -> str | float:
    """WHO-2021 adult diffuse glioma type from IDH and 1p/19q status (NaN when unknown)."""
    if idh == "wt":
        return "glioblastoma"
    if idh == "mut" and codel == "codel":
        return "oligodendroglioma"
    if idh == "mut" and codel == "non-codel":
        return "astrocytoma"
    return np.nan


def who2021_grade(diagnosis: str | float, cdkn2a: str | float, grade: float) -> float:
    """Grade with the WHO-2021 rule: IDH-mut astrocytoma with CDKN2A/B homdel is grade 4."""
    if diagnosis == "astrocytoma" and cdkn2a == "homdel":
        return 4.0
    return grade


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "classification" | "survival"
    classes: tuple[str, ...]
    label: Callable[[pd.DataFrame], pd.Series]  # clinical → class index (float, NaN when unknown)

    @property
    def n_outputs(self) -> int:
        return N_SURVIVAL_BINS if self.kind == "survival" else len(self.classes)


def _encode(values: pd.Series, classes: tuple[str, ...]) -> pd.Series:
    lookup = {c: i for i, c in enumerate(classes)}
    return values.map(lambda v: lookup.get(str(v), np.nan) if pd.notna(v) else np.nan).astype(float)


def _grade_label(c: pd.DataFrame) -> pd.Series:
    g = c["grade"].map(lambda v: f"{int(v)}" if pd.notna(v) else np.nan)
    return _encode(g, ("2", "3", "4"))


def _survival_label(c: pd.DataFrame) -> pd.Series:
    ok = c["survival_months"].notna() & c["event"].notna()
    return ok.astype(float).where(ok, np.nan)  # bins are computed per fold from training times


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("diagnosis", "classification", DIAGNOSES, lambda c: _encode(c["diagnosis"], DIAGNOSES)),
        Task("grading", "classification", ("2", "3", "4"), _grade_label),
        Task("idh", "classification", ("wt", "mut"), lambda c: _encode(c["idh"], ("wt", "mut"))),
        Task("codel", "classification", ("non-codel", "codel"),
             lambda c: _encode(c["codel_1p19q"], ("non-codel", "codel"))),
        Task("survival", "survival", ("risk",), _survival_label),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None


def survival_bins(times: np.ndarray, events: np.ndarray, n_bins: int = N_SURVIVAL_BINS) -> np.ndarray:
    """Bin edges at the quartiles of the *uncensored* times (DESIGN §6), open at both ends.

    Returns ``n_bins + 1`` edges with edges[0] = -inf, edges[-1] = +inf. Falls back to all
    times when fewer than ``n_bins`` events are observed.
    """
    t = np.asarray(times, float)
    e = np.asarray(events).astype(bool)
    base = t[e] if e.sum() >= n_bins else t
    inner = np.quantile(base, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.concatenate([[-np.inf], inner, [np.inf]])


def discretise(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Time → bin index in ``[0, len(edges) - 2]``."""
    return np.clip(np.searchsorted(edges, np.asarray(times, float), side="right") - 1, 0, len(edges) - 2)
