"""``cox_clinical``: the clinical baseline every survival paper in the field reports.

On the covariates of ``train.covariates`` (:mod:`pathomix.train.covariates`, fitted on the fold's
training patients):

- survival tasks: a penalised Cox proportional-hazards model (lifelines ``CoxPHFitter``, ridge
  penalty ``penalizer``); the risk is the linear predictor (log partial hazard);
- classification tasks: a multinomial logistic regression (scikit-learn, L2 penalty ``C = 1 / penalizer``).

Both are fitted on the training patients only; the validation patients are predicted like the test
patients (nothing is tuned on them here). The models are deterministic given the data. :func:`fit` copies the
coefficients into the model's container (:class:`pathomix.models.clinical.ClinicalLinear`), so the checkpoint
holds the fitted model; :func:`predict` writes the training stage's prediction rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from pathomix.errors import PathomixInputError
from pathomix.models.clinical import COVARIATES, ClinicalLinear
from pathomix.tasks import Task
from pathomix.train.data import Patient

log = logging.getLogger(__name__)
UNSEEN_LOGIT = -30.0  # a class no training patient has: probability ~1e-13, not exactly 0 (log losses stay finite)


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


def _matrix(patients: Sequence[Patient]) -> np.ndarray:
    return np.stack([p.inputs[COVARIATES].numpy() for p in patients]).astype(float)


def fit(model: ClinicalLinear, task: Task, train: Sequence[Patient], penalizer: float) -> float:
    """Fit on the ``train`` patients and copy the coefficients into ``model``; → the training loss (negative
    partial log-likelihood per patient for Cox, mean log loss for the classifier)."""
    x = _matrix(train)
    names = tuple(f"x{i}" for i in range(x.shape[1]))
    weight = torch.zeros_like(model.linear.weight, dtype=torch.float64)
    bias = torch.zeros_like(model.linear.bias, dtype=torch.float64)
    if task.kind == "survival":
        time = np.array([p.target["time"] for p in train], float)
        event = np.array([p.target["event"] for p in train], int)
        cph = fit_cox(x, time, event, names, penalizer)
        weight[0] = torch.from_numpy(cph.params_.to_numpy())
        loss = -float(cph.log_likelihood_) / len(train)
    else:
        from sklearn.metrics import log_loss

        y = np.array([p.target["y"] for p in train], int)
        clf = fit_logistic(x, y, task.n_outputs, penalizer)
        seen = clf.classes_.astype(int)
        coef, intercept = clf.coef_, clf.intercept_
        if len(seen) == 2:  # scikit-learn's binary form: one logit for the second class against the first
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        bias.fill_(UNSEEN_LOGIT)  # classes absent from training
        weight[seen], bias[seen] = torch.from_numpy(coef), torch.from_numpy(intercept)
        loss = float(log_loss(y, class_probabilities(clf, x, task.n_outputs), labels=range(task.n_outputs)))
    with torch.no_grad():
        model.linear.weight.copy_(weight)
        model.linear.bias.copy_(bias)
    return loss


@torch.no_grad()
def predict(model: ClinicalLinear, task: Task, patients: Sequence[Patient], columns: Sequence[str]) -> pd.DataFrame:
    """One row per patient in the training stage's prediction format (survival: ``risk`` = the Cox linear
    predictor; classification: softmax of the fitted logits)."""
    rows = []
    for p in patients:
        logits = model({COVARIATES: p.inputs[COVARIATES][None].float()})["logits"][0].double()
        if task.kind == "survival":
            row = {"time": p.target["time"], "event": p.target["event"], "risk": float(logits[0]),
                   "bin": p.target["bin"]}
        else:
            prob = torch.softmax(logits, 0).numpy()
            row = {"y_true": int(p.target["y"]), "y_pred": int(prob.argmax()),
                   **{f"prob_{c}": float(v) for c, v in zip(task.classes, prob, strict=True)}}
        rows.append({"patient_id": p.patient_id, "split": p.split, **row})
    return pd.DataFrame(rows, columns=["patient_id", "split", *columns])
