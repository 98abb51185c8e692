"""PORPOISE-style TCGA table → clinical.tsv + gene table, on the real LUAD file of ../shared/data."""

from __future__ import annotations

import pandas as pd
import pytest

from pathomix.errors import PathomixInputError
from pathomix.io.convert import convert, main, read_table
from pathomix.io.sheets import read_clinical, read_genes

LUAD = "genomics/tcga_luad_all_clean.csv.zip"


@pytest.fixture(scope="module")
def luad(shared_data) -> pd.DataFrame:
    return read_table(shared_data / LUAD)


def test_luad_is_one_row_per_patient_with_event_from_censorship(luad, shared_data, tmp_path):
    assert main([str(shared_data / LUAD), "--out", str(tmp_path)]) == 0
    clinical = read_clinical(tmp_path / "clinical.tsv")  # the workflow's own reader accepts it
    genes = read_genes(tmp_path / "genes.parquet")
    assert len(luad) == 515 and len(clinical) == 453 and len(genes) == 453
    assert set(genes.index) == set(clinical.index) == set(luad.case_id)
    per_case = luad.drop_duplicates("case_id").set_index("case_id")
    expected_event = 1 - per_case.censorship.loc[clinical.index]
    assert (clinical.event.to_numpy() == expected_event.to_numpy()).all()  # censorship 1 = censored
    assert int(clinical.event.sum()) == 158 and int((clinical.event == 0).sum()) == 295
    assert clinical.survival_months.loc["TCGA-05-4249"] == pytest.approx(50.03)
    assert genes.shape[1] == 1555 and "AAK1" in genes.columns and not genes.columns.str.endswith("_rnaseq").any()
    assert genes.loc["TCGA-05-4249", "AAK1"] == pytest.approx(per_case.loc["TCGA-05-4249", "AAK1_rnaseq"])


def test_several_omics_keep_their_suffixes(luad):
    genes = convert(luad, LUAD, ("rnaseq", "cnv")).genes
    assert genes.shape == (453, 1 + 1555 + 517)
    assert genes.columns.str.endswith("_rnaseq").sum() == 1555 and genes.columns.str.endswith("_cnv").sum() == 517


def test_missing_columns_name_the_file_and_the_fix(luad):
    with pytest.raises(PathomixInputError, match=r"lacks column\(s\) \['censorship'\].*censorship: 1 = censored"):
        convert(luad.drop(columns="censorship"), "my.csv")
    with pytest.raises(PathomixInputError, match=r"my.csv has no `\*_rnaseq` columns.*--omics"):
        convert(luad[["case_id", "survival_months", "censorship"]], "my.csv")


def test_conflicting_outcomes_of_one_case_are_an_error(luad):
    bad = luad.copy()
    dup = bad.case_id[bad.case_id.duplicated()].iloc[0]
    bad.loc[bad.case_id == dup, "survival_months"] = [1.0 + i for i in range((bad.case_id == dup).sum())]
    with pytest.raises(PathomixInputError, match=dup):
        convert(bad, "my.csv")
