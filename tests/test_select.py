"""Nested model selection (train.select): the choice is made on validation patients only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pathomix.train.select import choose, run


def _pred(val_signal: float, test_signal: float, seed: int = 0, n: int = 40) -> pd.DataFrame:
    """Binary predictions whose AUC on the val rows follows val_signal and on the test rows test_signal."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    split = np.where(np.arange(n) < n // 2, "val", "test")
    signal = np.where(split == "val", val_signal, test_signal)
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
    return pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "fold": 0, "split": split, "model": "m",
                         "encoder": "", "task": "idh", "y_true": y, "y_pred": (p > 0.5).astype(int),
                         "prob_mut": 1 - p, "prob_wt": p})


def test_validation_chooses_even_when_the_test_fold_would_disagree(tmp_path):
    """a is better on validation, b on test: the selection takes a (the test fold never chooses)."""
    a, b = _pred(3.0, 0.0), _pred(0.0, 3.0, seed=1)
    chosen, metric, scores = choose({"a": a, "b": b})
    assert (chosen, metric) == ("a", "auc") and scores["a"] > scores["b"]
    paths = []
    for name, pred in (("a", a), ("b", b)):
        pred.to_parquet(tmp_path / f"{name}.parquet")
        pd.DataFrame({"epoch": [1], "train_loss": [0.5], "name": name}).to_parquet(tmp_path / f"{name}_h.parquet")
        paths.append(name)
    out = tmp_path / "models" / "best" / "idh" / "fold0"
    run("best", ["a", "b"], [tmp_path / "a.parquet", tmp_path / "b.parquet"],
        [tmp_path / "a_h.parquet", tmp_path / "b_h.parquet"], out)
    pred = pd.read_parquet(out / "predictions.parquet")
    assert (pred.model == "best").all() and np.allclose(pred.prob_wt, a.prob_wt)
    assert pd.read_parquet(out / "history.parquet").name.iloc[0] == "a"
    record = json.loads((out / "selection.json").read_text())
    assert record["chosen"] == "a" and record["metric"] == "val_auc" and set(record["scores"]) == {"a", "b"}


def test_ties_and_undefined_scores():
    a = _pred(2.0, 0.0)
    assert choose({"a": a, "b": a.copy()})[0] == "a"  # a tie: the first listed
    one_class = a.assign(y_true=np.where(a.split == "val", 1, a.y_true))  # validation AUC undefined
    assert choose({"x": one_class, "b": a})[0] == "b"
    assert choose({"x": one_class, "y": one_class.copy()})[0] == "x"  # none defined: the first listed
