"""Splits: patient-level, stratified, every patient tested exactly once, deterministic."""

from __future__ import annotations

import pandas as pd
import pytest

from pathomix.splits.folds import SplitParams, check_folds, main, make_folds


def _clinical(tmp_path, n=30):
    idh = ["wt", "mut", "mut"] * (n // 3)
    codel = ["non-codel", "codel", "non-codel"] * (n // 3)
    df = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(n)], "idh": idh, "codel_1p19q": codel})
    df.to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    return tmp_path / "clinical.tsv"


def test_folds_are_patient_level_and_stratified(tmp_path):
    out = tmp_path / "folds.parquet"
    assert main(["--clinical", str(_clinical(tmp_path)), "--params", '{"n_folds": 3}', "--out", str(out)]) == 0
    f = pd.read_parquet(out)
    assert set(f.columns) == {"patient_id", "fold", "split"}
    assert f.groupby("fold").size().eq(30).all()
    test = f[f.split == "test"]
    assert test.patient_id.is_unique and len(test) == 30
    for _, d in f.groupby("fold"):
        assert set(d.split) == {"train", "val", "test"}
    clinical = pd.read_csv(tmp_path / "clinical.tsv", sep="\t").set_index("patient_id")
    wt_per_fold = test.assign(idh=clinical.idh.loc[test.patient_id].values).query("idh == 'wt'").fold
    assert wt_per_fold.value_counts().between(3, 4).all()  # 10 IDH-wt patients spread 3/3/4


def test_deterministic(tmp_path):
    clinical = _clinical(tmp_path)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for out in (a, b):
        main(["--clinical", str(clinical), "--params", '{"n_folds": 3, "seed": 7}', "--out", str(out)])
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))


def test_leak_is_detected():
    idx = pd.Index([f"P{i}" for i in range(9)])
    df = make_folds(idx, pd.Series(["a", "b", "c"] * 3).to_numpy(), SplitParams(n_folds=3))
    leaked = df.copy()
    leaked.loc[(leaked.fold == 1) & (leaked.patient_id == df[(df.fold == 0) & (df.split == "test")]
                                     .patient_id.iloc[0]), "split"] = "test"
    with pytest.raises(AssertionError):
        check_folds(leaked)


def test_genes_only_cohort_is_stratified_on_event(tmp_path, caplog):
    """No IDH/1p19q (so no diagnosis) but survival events: folds stratify on event and say so."""
    n = 40
    event = [1] * 10 + [0] * 30
    pd.DataFrame({"patient_id": [f"T{i:02d}" for i in range(n)], "survival_months": range(1, n + 1),
                  "event": event}).to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    out = tmp_path / "folds.parquet"
    with caplog.at_level("INFO", logger="pathomix.splits"):
        assert main(["--clinical", str(tmp_path / "clinical.tsv"), "--params", '{"n_folds": 5}',
                     "--out", str(out)]) == 0
    assert "stratifying on event instead" in caplog.text
    test = pd.read_parquet(out).query("split == 'test'")
    events = test.patient_id.map(dict(zip([f"T{i:02d}" for i in range(n)], event, strict=True)))
    assert events.groupby(test.fold).sum().eq(2).all()  # 10 events spread 2 per fold
