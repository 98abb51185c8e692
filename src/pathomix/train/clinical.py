"""``cox_clinical``: the clinical baseline every survival paper in the field reports.

On the covariates of ``train.covariates`` (:mod:`pathomix.train.covariates`, fitted on the fold's
training patients):

- survival tasks: a penalised Cox proportional-hazards model (lifelines ``CoxPHFitter``, ridge
  penalty ``penalizer``); the risk is the linear predictor (log partial hazard);
- classification tasks: a multinomial logistic regression (scikit-learn, L2 penalty ``C = 1 / penalizer``).

Both are fitted on the training patients only; the validation patients are predicted like the test
patients (nothing is tuned on them here). The models are deterministic given the data.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pathomix.errors import PathomixInputError

log = logging.getLogger(__name__)


def fit_cox(x: np.ndarray, time: np.ndarray, event: np.ndarray, names: tuple[str, ...], penalizer: float):
    """A fitted ``lifelines.CoxPHFitter`` on the covariate matrix ``x`` (rows: training patients)."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    if not np.asarray(event).any():
        raise PathomixInputError("cox_clinical: no training patient of this fold has an event; "
                                 "the Cox model cannot be fitted")
    df = pd.DataFrame(x, columns=list(names)).assign(_time=time, _event=event)
    cph = CoxPHFitter(penalizer=penalizer)
    try:
        cph.fit(df, duration_col="_time", event_col="_event")
    except ConvergenceError as err:
        raise PathomixInputError(f"cox_clinical: the Cox model did not converge on {list(names)} ({err}); "
                                 "raise train.clinical_penalizer or drop a covariate") from None
    log.info("Cox model on %s: coefficients %s, training C-index %.3f", list(names),
             dict(zip(names, np.round(cph.params_.to_numpy(), 3), strict=True)), cph.concordance_index_)
    return cph


def cox_risk(cph, x: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Linear predictor (higher = shorter survival) of the rows of ``x``."""
    return np.asarray(cph.predict_log_partial_hazard(pd.DataFrame(x, columns=list(names))), dtype=float)


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, penalizer: float):
    """A fitted L2-penalised multinomial logistic regression; classes absent from training get probability 0."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        raise PathomixInputError("cox_clinical: the fold's training patients have a single class; "
                                 "a classifier cannot be fitted")
    clf = LogisticRegression(C=1.0 / max(penalizer, 1e-12), max_iter=1000)
    clf.fit(x, y)
    log.info("logistic regression: %d classes seen in training of %d", len(clf.classes_), n_classes)
    return clf


def class_probabilities(clf, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(rows, n_classes) probabilities, zero for classes the classifier never saw."""
    out = np.zeros((len(x), n_classes))
    out[:, clf.classes_.astype(int)] = clf.predict_proba(x)
    return out
