"""Read and check the cohort sheets of DESIGN.md §3.

Every problem raises :class:`PathomixInputError` naming the sheet, the row id and the fix.
Relative ``path`` entries in slides.tsv are resolved against the sheet's own folder, so a
cohort folder can be moved as a whole. The clinical sheet's values are checked against
workflow/schemas/clinical.schema.yaml (the one statement of its rules).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pathomix.config import validate_table
from pathomix.constants import MODALITIES
from pathomix.errors import PathomixInputError
from pathomix.tasks import who2021_diagnosis, who2021_grade

log = logging.getLogger(__name__)

SCHEMAS = Path(__file__).resolve().parents[3] / "workflow" / "schemas"  # the repository's (editable install)
CLINICAL_NUMERIC = ("age", "grade", "survival_months", "event")
CLINICAL_FIX = {  # column → what its values mean, appended to the schema's message (the values: the schema's)
    "grade": "use the WHO grade 2, 3 or 4 (or leave empty to derive it)",
    "event": "use 1 = death observed, 0 = censored (or leave empty)",
    "survival_months": "use months from diagnosis, >= 0 (or leave empty)",
    "age": "use a number of years (or leave empty)",
}


@functools.cache
def clinical_schema() -> dict[str, Any]:
    """workflow/schemas/clinical.schema.yaml (one row of clinical.tsv)."""
    with open(SCHEMAS / "clinical.schema.yaml") as f:
        return yaml.safe_load(f)


def _enum(column: str) -> tuple[Any, ...]:
    """The non-null values the clinical schema allows in ``column``."""
    return tuple(v for v in clinical_schema()["properties"][column]["enum"] if v is not None)


# the categorical clinical columns and their values, in the schema's order (FoF's biomarker classes)
CLINICAL_VOCAB = {column: _enum(column) for column in ("idh", "codel_1p19q", "cdkn2a")}


def _read_table(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise PathomixInputError(f"{what} {path} does not exist; check the `{what}` key in your config")
    sep = "," if path.suffix == ".csv" else "\t"
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=True).rename(columns=str.strip)


def _require(df: pd.DataFrame, cols: tuple[str, ...], path: Path, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise PathomixInputError(
            f"{what} {path} lacks column(s) {missing}; it has {list(df.columns)}. "
            f"Add them (see README 'Your own cohort')."
        )


def _refuse_shared_files(df: pd.DataFrame, sheet: Path, real: list[str]) -> None:
    """One file (or mIF folder) under two slide ids is a copy-paste error, and a leak between patients when the
    ids belong to different ones (the same pixels in a training and a test fold): refuse it, naming both.
    ``real``: the rows' paths with every symbolic link resolved."""
    real = pd.Series(real, index=df.index)
    shared = real[real.duplicated(keep=False)]
    if len(shared):
        first = shared[shared == shared.iloc[0]].index
        rows = df.loc[first]
        raise PathomixInputError(
            f"slides sheet {sheet}: slides {list(rows.slide_id)} (patients {list(dict.fromkeys(rows.patient_id))}) "
            f"all point at the same file {shared.iloc[0]} ({shared.nunique()} file(s) listed more than once in "
            "all); list each file once — if they are different slides, fix their `path`"
        )


def read_slides(path: str | Path, check_files: bool = True, unique_files: bool = False) -> pd.DataFrame:
    """slides.tsv → DataFrame indexed by slide_id with absolute ``path`` and float ``mpp``. ``check_files``: every
    path exists; ``unique_files`` (the workflow at planning): no file under two slide ids."""
    path = Path(path)
    df = _read_table(path, "slides")
    _require(df, ("slide_id", "patient_id", "path", "modality"), path, "slides sheet")
    dup = df.slide_id[df.slide_id.duplicated()].unique()
    if len(dup):
        raise PathomixInputError(f"slides sheet {path}: duplicate slide_id(s) {list(dup[:5])}; ids must be unique")
    bad = df[~df.modality.isin(MODALITIES)]
    if len(bad):
        row = bad.iloc[0]
        raise PathomixInputError(
            f"slides sheet {path}: slide {row.slide_id} has modality {row.modality!r}; "
            f"allowed: {list(MODALITIES)}"
        )
    # relative to the sheet, resolved (one realpath per row: it also finds a file listed under two spellings)
    base = str(path.parent)
    real = [os.path.realpath(os.path.join(base, p)) for p in df.path]  # noqa: PTH118 (pathlib: 5x slower)
    df["path"] = [p if os.path.isabs(p) else r for p, r in zip(df.path, real, strict=True)]  # noqa: PTH117
    if check_files:
        for row in df.itertuples():
            if not Path(row.path).exists():
                raise PathomixInputError(
                    f"slides sheet {path}: slide {row.slide_id} (patient {row.patient_id}) points at "
                    f"{row.path}, which does not exist; fix the `path` column"
                )
    if unique_files:
        _refuse_shared_files(df, path, real)
    df["mpp"] = pd.to_numeric(df["mpp"], errors="raise") if "mpp" in df.columns else np.nan
    df["cohort"] = df["cohort"].fillna("main").astype(str) if "cohort" in df.columns else "main"
    return df.set_index("slide_id", drop=False)


def read_clinical(path: str | Path) -> pd.DataFrame:
    """clinical.tsv → DataFrame indexed by patient_id with derived ``diagnosis`` and WHO grade."""
    path = Path(path)
    df = _read_table(path, "clinical")
    _require(df, ("patient_id",), path, "clinical sheet")
    dup = df.patient_id[df.patient_id.duplicated()].unique()
    if len(dup):
        raise PathomixInputError(f"clinical sheet {path}: duplicate patient_id(s) {list(dup[:5])}")
    for col in CLINICAL_NUMERIC:  # numbers where they parse; other text stays, for the schema to name
        if col in df.columns:
            numbers = pd.to_numeric(df[col], errors="coerce")
            df[col] = numbers.astype(object).where(numbers.notna() | df[col].isna(), df[col])
    check_clinical(df.set_index("patient_id", drop=False), path)
    for col in CLINICAL_VOCAB:
        if col not in df.columns:
            df[col] = np.nan
    for col in CLINICAL_NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    df["diagnosis"] = [who2021_diagnosis(i, c) for i, c in zip(df.idh, df.codel_1p19q, strict=True)]
    df["grade"] = [who2021_grade(d, k, g) for d, k, g in zip(df.diagnosis, df.cdkn2a, df.grade, strict=True)]
    return df.set_index("patient_id", drop=False)


def check_clinical(df: pd.DataFrame, path: Path) -> None:
    """The clinical sheet (indexed by patient_id) against clinical.schema.yaml → PathomixInputError naming
    the file, the patient (row), the column, the value and the fix."""
    try:
        validate_table(df, clinical_schema(), f"clinical sheet {path}")
    except ValueError as err:
        columns = clinical_schema()["properties"]
        column = next((c for c in columns if f"column {c!r}" in str(err)), None)
        fix = CLINICAL_FIX.get(column) if column else None
        if fix is None and column in CLINICAL_VOCAB:
            fix = f"use {' or '.join(CLINICAL_VOCAB[column])} (or leave empty for unknown)"
        fix = f"; {fix}" if fix else ""
        raise PathomixInputError(str(err).replace(", row ", ", patient ", 1) + fix) from None


def read_genes(path: str | Path) -> pd.DataFrame:
    """Gene table (parquet or csv/tsv; rows = patients) → float DataFrame indexed by patient_id."""
    path = Path(path)
    if not path.exists():
        raise PathomixInputError(f"gene table {path} does not exist; check the `genes` key in your config")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".txt") else ",")
    if "patient_id" not in df.columns:
        raise PathomixInputError(f"gene table {path} has no `patient_id` column; rows must be patients")
    df["patient_id"] = df.patient_id.astype(str)
    dup = df.patient_id[df.patient_id.duplicated()].unique()
    if len(dup):
        raise PathomixInputError(
            f"gene table {path}: duplicate patient_id(s) {list(dup[:5])}; keep one row per patient"
        )
    df = df.set_index("patient_id")
    values = df.apply(pd.to_numeric, errors="coerce")
    bad_cols = [c for c in values.columns if values[c].isna().all() and df[c].notna().any()]
    if bad_cols:
        raise PathomixInputError(f"gene table {path}: non-numeric gene column(s) {bad_cols[:5]}")
    return values.astype(np.float32)
