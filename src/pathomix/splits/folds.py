"""``python -m pathomix.splits``: patient-level stratified k-fold → splits/folds.parquet.

Every fold k has one row per patient: split = test (the k-th fold), val (a stratified
``val_fraction`` of the rest, for early stopping) or train. The unit is the patient, so
slides of one patient never straddle train and test; :func:`check_folds` asserts it.

External cohorts (``splits.external_cohorts``: values of the slides sheet's ``cohort``
column) never train: their patients get split = ``external`` in every fold, so each fold's
model is scored on them zero-shot (no fine-tuning) and reported separately. The ``cohort``
column of folds.parquet carries every patient's cohort.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from pathomix.cli import stage_main
from pathomix.errors import PathomixInputError
from pathomix.io.atomic import write_parquet
from pathomix.io.sheets import read_clinical, read_slides
from pathomix.params import load_params

log = logging.getLogger("pathomix.splits")


@dataclass(frozen=True)
class SplitParams:
    """The config's ``splits:`` subtree; defaults equal config.yaml (tests/test_params.py checks)."""

    n_folds: int = 3
    val_fraction: float = 0.2
    stratify: str = "diagnosis"
    seed: int = 0
    external_cohorts: tuple[str, ...] = ()


# stratification columns tried, in order, when the configured one has no value for any patient
# (a genes-only TCGA cohort has no IDH/1p19q, hence no derived diagnosis, but has survival events)
FALLBACK_STRATA = ("event",)


def _strata_column(clinical: pd.DataFrame, column: str) -> str | None:
    """The configured column, else the first fallback with values (logged), else None (unstratified)."""
    if column not in clinical.columns:
        raise PathomixInputError(f"splits.stratify={column!r} is not a clinical column; "
                                 f"use one of {sorted(clinical.columns)}")
    if clinical[column].notna().any():
        return column
    for alt in FALLBACK_STRATA:
        if alt != column and alt in clinical.columns and clinical[alt].notna().any():
            log.info("splits.stratify=%s: no patient has a value; stratifying on %s instead", column, alt)
            return alt
    log.warning("splits.stratify=%s: no patient has a value, nor %s; folds are not stratified",
                column, list(FALLBACK_STRATA))
    return None


def _strata(clinical: pd.DataFrame, column: str, n_folds: int) -> np.ndarray:
    column = _strata_column(clinical, column)
    if column is None:
        return np.full(len(clinical), "all", dtype=object)
    s = clinical[column].astype(str).where(clinical[column].notna(), "unknown")
    counts = s.value_counts()
    rare = counts[counts < n_folds].index
    if len(rare):
        log.warning("strata %s have fewer than %d patients; pooled into 'rare'", list(rare), n_folds)
        s = s.where(~s.isin(rare), "rare")
    return s.to_numpy()


def _stratifiable(strata: np.ndarray, fraction: float) -> np.ndarray | None:
    """The strata when a stratified hold-out of ``fraction`` is possible, else None (random)."""
    _, counts = np.unique(strata, return_counts=True)
    n_val = int(np.ceil(fraction * len(strata)))
    ok = counts.min() >= 2 and len(counts) <= min(n_val, len(strata) - n_val)
    return strata if ok else None


def make_folds(patients: pd.Index, strata: np.ndarray, p: SplitParams) -> pd.DataFrame:
    if len(patients) < p.n_folds:
        raise PathomixInputError(f"{len(patients)} patients cannot make {p.n_folds} folds; "
                                 "lower splits.n_folds")
    skf = StratifiedKFold(n_splits=p.n_folds, shuffle=True, random_state=p.seed)
    rows = []
    for k, (rest, test) in enumerate(skf.split(np.zeros(len(patients)), strata)):
        train, val = train_test_split(rest, test_size=p.val_fraction, random_state=p.seed + k,
                                      stratify=_stratifiable(strata[rest], p.val_fraction))
        for idx, split in ((train, "train"), (val, "val"), (test, "test")):
            rows += [(patients[i], k, split) for i in idx]
    df = pd.DataFrame(rows, columns=["patient_id", "fold", "split"]).sort_values(["fold", "patient_id"])
    check_folds(df)
    return df.reset_index(drop=True)


def check_folds(df: pd.DataFrame) -> None:
    """Assert the patient-level contract: one row per patient and fold; each internal patient is
    in exactly one test fold; an external patient is external in every fold."""
    per_fold = df.groupby(["fold", "patient_id"]).size()
    if (per_fold != 1).any():
        raise AssertionError(f"patients with several rows in one fold: {list(per_fold[per_fold > 1].index[:5])}")
    external = set(df.patient_id[df.split == "external"])
    if (df[df.patient_id.isin(external)].split != "external").any():
        raise AssertionError("an external patient is in a training, validation or test split")
    test_folds = df[df.split == "test"].groupby("patient_id").fold.nunique()
    if (test_folds != 1).any() or set(test_folds.index) != set(df.patient_id) - external:
        raise AssertionError("a patient is in more than one test fold, or in none")


def patient_cohorts(patients: pd.Index, slides: pd.DataFrame | None) -> pd.Series:
    """patient_id → cohort from the slides sheet (``main`` for patients without slides)."""
    cohort = pd.Series("main", index=patients, name="cohort", dtype=object)
    if slides is None or slides.empty:
        return cohort
    per_patient = slides.groupby("patient_id").cohort.unique()
    mixed = [p for p, c in per_patient.items() if len(c) > 1]
    if mixed:
        raise PathomixInputError(f"slides.tsv: patient(s) {mixed[:5]} have slides in more than one cohort; "
                                 "a patient belongs to one cohort")
    found = per_patient.map(lambda c: str(c[0]))
    cohort.update(found.reindex(patients).dropna())
    return cohort


def split_cohorts(clinical: pd.DataFrame, cohorts: pd.Series, p: SplitParams) -> pd.DataFrame:
    """Folds over the internal patients, plus the external cohorts' patients as ``external``."""
    unknown = sorted(set(p.external_cohorts) - set(cohorts))
    if unknown:
        raise PathomixInputError(f"splits.external_cohorts {unknown} are not in the slides sheet's `cohort` "
                                 f"column (cohorts found: {sorted(set(cohorts))})")
    is_external = cohorts.isin(list(p.external_cohorts))
    internal = clinical[~is_external.reindex(clinical.index).to_numpy()]
    if internal.empty:
        raise PathomixInputError("every patient is in an external cohort; nothing is left to train on")
    df = make_folds(internal.index, _strata(internal, p.stratify, p.n_folds), p)
    external = cohorts.index[is_external]
    if len(external):
        ext = pd.DataFrame([(pid, k, "external") for k in range(p.n_folds) for pid in external],
                           columns=["patient_id", "fold", "split"])
        df = pd.concat([df, ext], ignore_index=True).sort_values(["fold", "patient_id"], ignore_index=True)
        log.info("%d patient(s) of external cohort(s) %s are scored zero-shot in every fold",
                 len(external), list(p.external_cohorts))
    check_folds(df)
    return df.assign(cohort=df.patient_id.map(cohorts).astype(str))


def run(params: SplitParams, clinical_path: str, slides_path: str | None, out: str) -> pd.DataFrame:
    """Make the folds and write them (in-process entry point of the stage); → the folds table."""
    clinical = read_clinical(clinical_path)
    slides = read_slides(slides_path, check_files=False) if slides_path else None
    df = split_cohorts(clinical, patient_cohorts(clinical.index, slides), params)
    write_parquet(df, out)
    log.info("%d patients in %d folds: %s", clinical.shape[0], params.n_folds,
             df[df.fold == 0].split.value_counts().to_dict())
    return df


@stage_main("pathomix.splits")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pathomix.splits", description=__doc__)
    ap.add_argument("--clinical", required=True)
    ap.add_argument("--slides", help="slides.tsv (its `cohort` column); absent for a genes-only cohort")
    ap.add_argument("--params", default="{}", help="JSON of the config's `splits:` subtree")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    run(load_params(SplitParams, args.params, where="splits"), args.clinical, args.slides, args.out)
    return 0
