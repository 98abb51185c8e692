"""Clinical covariates: fitted on the fold's training patients only, applied unchanged to the others."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathomix.io.errors import PathomixInputError
from pathomix.train.covariates import CovariateStats, covariate_matrix, fit_covariates


def _clinical() -> pd.DataFrame:
    return pd.DataFrame({
        "age": [40, 50, 60, np.nan, 90, 20],
        "site": ["a", "b", "a", None, "c", "z"],
    }, index=[f"P{i}" for i in range(6)])


def test_numeric_standardised_and_categorical_one_hot_on_training_patients():
    clin = _clinical()
    train = ["P0", "P1", "P2", "P3"]
    stats = fit_covariates(clin, train, ["age", "site"])
    assert stats.names == ("age", "site=b")  # reference level: the training mode "a"; "c", "z" unseen
    x = covariate_matrix(clin, list(clin.index), stats)
    age = np.array([40, 50, 60, 50, 90, 20], float)  # P3 imputed with the training median 50
    mean, sd = age[:4].mean(), age[:4].std()
    assert np.allclose(x[:, 0], (age - mean) / sd)
    assert list(x[:, 1]) == [0, 1, 0, 0, 0, 0]  # missing → mode "a"; unseen "c", "z" → reference
    assert x.dtype == np.float32


def test_held_out_patients_do_not_change_the_fit():
    clin = _clinical()
    train = ["P0", "P1", "P2"]
    before = fit_covariates(clin, train, ["age", "site"])
    clin.loc[["P4", "P5"], "age"] = [1e6, -1e6]
    clin.loc[["P4", "P5"], "site"] = ["q", "q"]
    assert fit_covariates(clin, train, ["age", "site"]) == before
    assert CovariateStats.from_dict(before.to_dict()) == before


def test_missing_column_and_empty_training_values_name_the_fix():
    clin = _clinical()
    with pytest.raises(PathomixInputError, match=r"\['stage'\].*train.covariates"):
        fit_covariates(clin, ["P0"], ["stage"], "clinical sheet c.tsv")
    clin["age"] = np.nan
    with pytest.raises(PathomixInputError, match="covariate age: no training patient"):
        fit_covariates(clin, ["P0", "P1"], ["age"])
