"""Paired model comparisons: is model A better than model B on the same patients, beyond resampling noise?

Two models' out-of-fold test predictions are joined on the patients both predicted; the difference of a
metric (A − B) is computed on the pooled predictions and on patient-level bootstrap resamples drawn **once
for both models** (the same patients in every resample), which gives a 95 % percentile interval of the
difference. An interval that excludes 0 is a difference outside resampling noise; one that contains 0 is
not, however far apart the two point estimates look.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pathomix.evaluate.metrics import Metric

KEY = ["patient_id", "fold"]


def paired_rows(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test rows of both prediction tables for the patients (and folds) both predicted, in one order."""
    a, b = (d[d.split == "test"].drop_duplicates(KEY).set_index(KEY) for d in (a, b))
    common = a.index.intersection(b.index).sort_values()
    return a.loc[common].reset_index(), b.loc[common].reset_index()


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, metric: Metric, n: int = 1000,
                      seed: int = 0) -> dict[str, float]:
    """``{a, b, diff, ci_low, ci_high, n_patients}``: metric(A) − metric(B) with a paired bootstrap 95 % CI."""
    a, b = paired_rows(a, b)
    rng = np.random.default_rng(seed)
    diffs = []
    with np.errstate(all="ignore"):
        for _ in range(n):
            rows = rng.integers(0, len(a), len(a))
            d = metric(a.iloc[rows]) - metric(b.iloc[rows])
            if np.isfinite(d):
                diffs.append(d)
    va, vb = metric(a), metric(b)
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if len(diffs) >= max(10, n // 10) else (np.nan, np.nan)
    return {"a": float(va), "b": float(vb), "diff": float(va - vb), "ci_low": float(lo), "ci_high": float(hi),
            "n_patients": int(len(a))}
