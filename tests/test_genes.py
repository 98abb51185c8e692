"""Gene stage: count detection, HVG selection, subspaces, on the real TCGA LUAD table too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathomix.errors import PathomixInputError
from pathomix.genes.hvg import GeneParams, load_gene_sets, looks_like_counts, main, run, select_hvg, training_patients


def _cohort(tmp_path, n=20, genes=("TP53", "EGFR", "IL6", "CD4", "NOISE1")):
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.poisson(50, size=(n, len(genes))) * (np.arange(len(genes)) + 1),
                     columns=list(genes))
    x.insert(0, "patient_id", [f"P{i}" for i in range(n)])
    x.to_parquet(tmp_path / "genes.parquet")
    pd.DataFrame({"patient_id": x.patient_id, "idh": "wt"}).to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    return tmp_path / "genes.parquet", tmp_path / "clinical.tsv"


def test_counts_detection():
    counts = pd.DataFrame({"a": [0, 5, 500], "b": [3, 2, 1]})
    assert looks_like_counts(counts)
    assert not looks_like_counts(np.log1p(counts))


def test_select_hvg_keeps_most_variable():
    x = pd.DataFrame({"flat": [1.0, 1.0, 1.1], "wide": [0.0, 5.0, 10.0], "mid": [0.0, 1.0, 2.0]})
    assert list(select_hvg(x, 0.34).columns) == ["wide"]
    assert list(select_hvg(x, 0.67).columns) == ["wide", "mid"]


def test_default_gene_sets_have_both_subspaces():
    sets = load_gene_sets(None)
    assert {"tumour", "tme"} <= set(sets.unique())
    assert sets["TP53"] == "tumour"


def test_stage_writes_hvg_and_subspaces(tmp_path):
    genes, clinical = _cohort(tmp_path)
    out, sub = tmp_path / "hvg.parquet", tmp_path / "sub.parquet"
    assert main(["--genes", str(genes), "--clinical", str(clinical), "--params", '{"hvg_fraction": 0.4}',
                 "--out", str(out), "--out-subspaces", str(sub)]) == 0
    hvg = pd.read_parquet(out)
    assert hvg.shape == (20, 1 + 2)
    assert hvg.drop(columns="patient_id").to_numpy().max() < 10  # log1p applied to counts
    subspaces = pd.read_parquet(sub)
    assert list(subspaces.gene) == list(hvg.columns[1:])
    assert set(subspaces.subspace) <= {"tumour", "tme", "other"}


def test_duplicate_patients_are_an_error(tmp_path):
    genes, clinical = _cohort(tmp_path)
    df = pd.read_parquet(genes)
    pd.concat([df, df.iloc[:1]]).to_parquet(genes)
    with pytest.raises(PathomixInputError, match="duplicate patient_id"):
        from pathomix.genes.hvg import run, GeneParams  # noqa: I001
        run(str(genes), str(clinical), GeneParams(), str(tmp_path / "o.parquet"), str(tmp_path / "s.parquet"))


def test_real_tcga_table_selects_30_percent(shared_data, tmp_path):
    raw = pd.read_csv(shared_data / "genomics" / "tcga_luad_all_clean.csv.zip", compression="zip")
    raw = raw.drop_duplicates("case_id")
    rna = raw[[c for c in raw.columns if c.endswith("_rnaseq")]]
    genes = rna.rename(columns=lambda c: c.removesuffix("_rnaseq")).assign(patient_id=raw.case_id.values)
    genes.to_parquet(tmp_path / "g.parquet")
    pd.DataFrame({"patient_id": raw.case_id}).to_csv(tmp_path / "c.tsv", sep="\t", index=False)
    assert main(["--genes", str(tmp_path / "g.parquet"), "--clinical", str(tmp_path / "c.tsv"),
                 "--out", str(tmp_path / "h.parquet"), "--out-subspaces", str(tmp_path / "s.parquet")]) == 0
    hvg = pd.read_parquet(tmp_path / "h.parquet")
    assert hvg.shape[0] == raw.case_id.nunique() == 453
    assert hvg.shape[1] - 1 == round(0.3 * rna.shape[1])


def _folds(tmp_path, n=20):
    """Fold 0: P0–P11 train, P12–P13 val, P14–P19 test; fold 1: the reverse roles for a few."""
    split = ["train"] * 12 + ["val"] * 2 + ["test"] * (n - 14)
    rows = [(f"P{i}", 0, s) for i, s in enumerate(split)] + [(f"P{i}", 1, s) for i, s in enumerate(reversed(split))]
    pd.DataFrame(rows, columns=["patient_id", "fold", "split"]).to_parquet(tmp_path / "folds.parquet")
    return tmp_path / "folds.parquet"


def _select(tmp_path, genes, clinical, folds, tag):
    out, sub = tmp_path / f"hvg-{tag}.parquet", tmp_path / f"sub-{tag}.parquet"
    assert main(["--genes", str(genes), "--clinical", str(clinical), "--params", '{"hvg_fraction": 0.4}',
                 "--folds", str(folds), "--fold", "0", "--out", str(out), "--out-subspaces", str(sub)]) == 0
    return pd.read_parquet(out).set_index("patient_id"), pd.read_parquet(sub)


def test_fold_selection_ignores_test_patients(tmp_path):
    """Changing the test and validation patients' expression (wild values, missing values) leaves fold 0's
    genes, its imputation and its training patients' values unchanged; changing training patients changes it."""
    genes, clinical = _cohort(tmp_path)
    folds = _folds(tmp_path)
    before, sub_before = _select(tmp_path, genes, clinical, folds, "before")
    x = pd.read_parquet(genes).set_index("patient_id").astype(float)
    held_out = [f"P{i}" for i in range(12, 20)]
    x.loc[held_out, "TP53"] = np.linspace(0, 1e6, len(held_out))  # would top the variance ranking over all
    x.loc[held_out[:3], "CD4"] = np.nan                           # would shift an all-patient median
    x.reset_index().to_parquet(genes)
    after, sub_after = _select(tmp_path, genes, clinical, folds, "after")
    assert list(after.columns) == list(before.columns) and "TP53" not in after.columns
    assert sub_after.equals(sub_before)
    train = [f"P{i}" for i in range(12)]
    pd.testing.assert_frame_equal(after.loc[train], before.loc[train])
    assert after.notna().all().all()  # test patients' missing values imputed with training medians
    # the same wild gene among the training patients is selected
    x.loc[train, "TP53"] = np.linspace(0, 1e6, len(train))
    x.reset_index().to_parquet(genes)
    trained, _ = _select(tmp_path, genes, clinical, folds, "train")
    assert "TP53" in trained.columns


def test_fold_without_gene_patients_is_an_error(tmp_path):
    genes, clinical = _cohort(tmp_path)
    folds = pd.DataFrame({"patient_id": ["X1", "X2"], "fold": 0, "split": "train"})
    folds.to_parquet(tmp_path / "f.parquet")
    with pytest.raises(PathomixInputError, match="no training patient"):
        run(str(genes), str(clinical), GeneParams(), str(tmp_path / "o.parquet"), str(tmp_path / "s.parquet"),
            training_patients(tmp_path / "f.parquet", 0))
    with pytest.raises(PathomixInputError, match="no fold 3"):
        training_patients(tmp_path / "f.parquet", 3)
