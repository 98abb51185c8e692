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
    assert set(f.columns) == {"patient_id", "fold", "split", "cohort"} and set(f.cohort) == {"main"}
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


def _slides(tmp_path, cohorts: dict[str, str]):
    df = pd.DataFrame({"slide_id": [f"{p}-A" for p in cohorts], "patient_id": list(cohorts),
                       "path": [f"{p}.svs" for p in cohorts], "modality": "he", "cohort": list(cohorts.values())})
    df.to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    return tmp_path / "slides.tsv"


def test_external_cohort_is_never_trained_on_and_scored_in_every_fold(tmp_path):
    clinical = _clinical(tmp_path)
    cohorts = {f"P{i:02d}": ("site-B" if i >= 24 else "site-A") for i in range(30)}
    out = tmp_path / "folds.parquet"
    params = '{"n_folds": 3, "external_cohorts": ["site-B"]}'
    assert main(["--clinical", str(clinical), "--slides", str(_slides(tmp_path, cohorts)), "--params", params,
                 "--out", str(out)]) == 0
    f = pd.read_parquet(out)
    ext = f[f.cohort == "site-B"]
    assert set(ext.split) == {"external"} and ext.groupby("patient_id").fold.nunique().eq(3).all()
    internal = f[f.cohort == "site-A"]
    assert "external" not in set(internal.split)
    assert internal[internal.split == "test"].patient_id.nunique() == 24  # each internal patient tested once
    check_folds(f)


def test_unknown_external_cohort_names_the_cohorts_found(tmp_path, caplog):
    clinical = _clinical(tmp_path)
    slides = _slides(tmp_path, {f"P{i:02d}": "site-A" for i in range(30)})
    rc = main(["--clinical", str(clinical), "--slides", str(slides), "--params",
               '{"n_folds": 3, "external_cohorts": ["site-Z"]}', "--out", str(tmp_path / "f.parquet")])
    assert rc == 1 and "site-Z" in caplog.text and "site-A" in caplog.text
    assert not (tmp_path / "f.parquet").exists()
