"""Clinical covariates: fitted on the fold's training patients only, applied unchanged to the others."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathomix.errors import PathomixInputError
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


def test_cox_on_a_planted_covariate_ranks_patients():
    """Hazard doubles per standardised unit of `age`: the fitted Cox model finds it and ranks held-out patients."""
    from lifelines.utils import concordance_index

    from pathomix.train.clinical import fit_cox

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    time = rng.exponential(1 / np.exp(0.7 * x[:, 0]))
    event = (rng.random(300) < 0.8).astype(int)
    cph = fit_cox(x[:200], time[:200], event[:200], ("age", "noise"), penalizer=0.01)
    assert 0.5 < cph.params_["age"] < 0.9 and abs(cph.params_["noise"]) < 0.2
    risk = np.asarray(cph.predict_log_partial_hazard(pd.DataFrame(x[200:], columns=["age", "noise"])))
    assert concordance_index(time[200:], -risk, event[200:]) > 0.65
    with pytest.raises(PathomixInputError, match="no training patient"):
        fit_cox(x[:10], time[:10], np.zeros(10), ("age", "noise"), 0.1)


def test_logistic_probabilities_cover_every_class():
    from pathomix.train.clinical import class_probabilities, fit_logistic

    rng = np.random.default_rng(1)
    y = np.array([0, 2] * 30)  # class 1 never in training
    x = (y[:, None] + rng.normal(0, 0.3, (60, 1))).astype(np.float32)
    clf = fit_logistic(x, y, 3, penalizer=0.1)
    p = class_probabilities(clf, np.array([[0.0], [2.0]]), 3)
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1) and (p[:, 1] == 0).all()
    assert p[0].argmax() == 0 and p[1].argmax() == 2
