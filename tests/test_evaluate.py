"""Evaluation: metrics from sklearn/lifelines on known predictions, CIs, figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pathomix.evaluate.cli import main
from pathomix.evaluate.metrics import CLASSIFICATION, bootstrap_ci


def _classification(n=60, seed=0, model="m"):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "fold": np.arange(n) % 3, "split": "test",
                       "model": model, "task": "diagnosis", "y_true": y, "y_pred": p.argmax(1)})
    for k, c in enumerate(("astrocytoma", "oligodendroglioma", "glioblastoma")):
        df[f"prob_{c}"] = p[:, k]
    return df


def _survival(n=60, seed=0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(np.exp(-risk)) * 20
    return pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "fold": np.arange(n) % 3, "split": "test",
                         "model": "m", "task": "survival", "time": time, "event": rng.random(n) < 0.7,
                         "risk": risk, "bin": 0})


def test_auc_matches_sklearn():
    df = _classification()
    ref = roc_auc_score(df.y_true, df[[c for c in df if c.startswith("prob_")]], multi_class="ovr")
    assert np.isclose(CLASSIFICATION["auc"](df), ref)


def test_bootstrap_ci_brackets_the_value():
    df = _classification()
    value = CLASSIFICATION["auc"](df)
    lo, hi = bootstrap_ci(df, CLASSIFICATION["auc"], 200)
    assert lo < value < hi and hi - lo < 0.3


def test_stage_writes_metrics_summary_and_figures(tmp_path):
    paths = []
    for name, df in (("c", _classification()), ("s", _survival())):
        paths.append(tmp_path / f"{name}.parquet")
        df.to_parquet(paths[-1])
    out = tmp_path / "eval" / "metrics.parquet"
    figs = tmp_path / "eval" / "figures"
    assert main(["--predictions", *map(str, paths), "--out", str(out), "--summary", str(tmp_path / "s.csv"),
                 "--figures", str(figs), "--params", '{"bootstrap": 50}']) == 0
    m = pd.read_parquet(out)
    assert set(m.columns) >= {"model", "task", "fold", "metric", "value", "ci_low", "ci_high"}
    assert set(m[m.task == "diagnosis"].metric) == {"accuracy", "balanced_accuracy", "auc", "f1", "kappa"}
    assert set(m.fold) == {"0", "1", "2", "all"}
    c = m[(m.task == "survival") & (m.fold == "all")].value.iloc[0]
    assert c > 0.6  # planted: risk drives time
    assert m[m.fold == "all"].ci_low.notna().all()
    for f in ("m_diagnosis.png", "m_survival.png", "summary.png"):
        assert (figs / f).stat().st_size > 5000
