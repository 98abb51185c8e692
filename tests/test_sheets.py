"""Sheets and tasks: WHO-2021 derivation, vocabulary errors that name the row, path resolution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathomix.errors import PathomixInputError
from pathomix.io.sheets import read_clinical, read_slides
from pathomix.tasks import TASKS, discretise, survival_bins


def _write(path, rows):
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def test_who2021_is_derived(tmp_path):
    c = read_clinical(_write(tmp_path / "c.tsv", [
        {"patient_id": "A", "idh": "mut", "codel_1p19q": "non-codel", "cdkn2a": "homdel", "grade": 2},
        {"patient_id": "O", "idh": "mut", "codel_1p19q": "codel", "cdkn2a": "wt", "grade": 3},
        {"patient_id": "G", "idh": "wt", "codel_1p19q": "non-codel", "cdkn2a": "wt", "grade": 4},
        {"patient_id": "U", "idh": None, "codel_1p19q": None, "cdkn2a": None, "grade": None},
    ]))
    assert list(c.diagnosis.fillna("?")) == ["astrocytoma", "oligodendroglioma", "glioblastoma", "?"]
    assert c.loc["A", "grade"] == 4  # CDKN2A homdel astrocytoma is grade 4
    labels = TASKS["diagnosis"].label(c)
    assert list(labels.fillna(-1)) == [0, 1, 2, -1]


def test_typo_in_idh_names_patient_and_allowed_values(tmp_path):
    path = _write(tmp_path / "c.tsv", [{"patient_id": "P7", "idh": "mutant"}])
    # checked against workflow/schemas/clinical.schema.yaml: the file, the patient, the column, the fix
    with pytest.raises(PathomixInputError, match=r"c\.tsv, patient P7: column 'idh' has 'mutant'.*\['mut', 'wt'.*"
                                                 r"use mut or wt"):
        read_clinical(path)


@pytest.mark.parametrize(("column", "value", "fix"), [
    ("event", "2", "1 = death observed, 0 = censored"),
    ("grade", "5", "WHO grade 2, 3 or 4"),
    ("survival_months", "-3", ">= 0"),
    ("age", "forty", "number of years"),
    ("codel_1p19q", "yes", "codel or non-codel"),
])
def test_clinical_sheet_follows_its_schema(tmp_path, column, value, fix):
    path = _write(tmp_path / "c.tsv", [{"patient_id": "P1", column: None}, {"patient_id": "P2", column: value}])
    with pytest.raises(PathomixInputError, match=rf"patient P2: column '{column}' has .*{value}.*{fix}"):
        read_clinical(path)


def test_slides_sheet_resolves_relative_paths_and_checks_files(tmp_path):
    (tmp_path / "s1.svs").write_bytes(b"x")
    sheet = _write(tmp_path / "slides.tsv", [
        {"slide_id": "S1", "patient_id": "P1", "path": "s1.svs", "modality": "he"},
        {"slide_id": "S2", "patient_id": "P1", "path": "missing file.svs", "modality": "he"},
    ])
    with pytest.raises(PathomixInputError, match=r"slide S2 \(patient P1\).*missing file.svs"):
        read_slides(sheet)
    df = read_slides(sheet, check_files=False)
    assert df.loc["S1", "path"] == str(tmp_path / "s1.svs")


def test_one_file_under_two_slide_ids_is_refused_naming_both(tmp_path):
    (tmp_path / "s1.svs").write_bytes(b"x")
    (tmp_path / "link.svs").symlink_to(tmp_path / "s1.svs")  # the same file by another name
    sheet = _write(tmp_path / "slides.tsv", [
        {"slide_id": "S1", "patient_id": "P1", "path": "s1.svs", "modality": "he"},
        {"slide_id": "S9", "patient_id": "P2", "path": "link.svs", "modality": "he"},
    ])
    with pytest.raises(PathomixInputError, match=r"slides \['S1', 'S9'\] \(patients \['P1', 'P2'\]\) all point at the "
                                                 r"same file .*s1.svs"):
        read_slides(sheet, unique_files=True)
    assert len(read_slides(sheet)) == 2  # the stages after planning read the sheet as it is


def test_unknown_modality(tmp_path):
    sheet = _write(tmp_path / "slides.tsv", [{"slide_id": "S1", "patient_id": "P", "path": "x", "modality": "IHC"}])
    with pytest.raises(PathomixInputError, match="modality 'IHC'"):
        read_slides(sheet, check_files=False)


def test_survival_bins_at_quartiles_of_uncensored_times():
    times = np.array([1, 2, 3, 4, 5, 6, 7, 8, 100, 200.0])
    events = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    edges = survival_bins(times, events)
    np.testing.assert_allclose(edges[1:-1], np.quantile(times[:8], [0.25, 0.5, 0.75]))
    assert list(discretise([0.5, 2.9, 4.6, 300], edges)) == [0, 1, 2, 3]
