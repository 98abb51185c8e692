"""``python -m pathomix.genes``: highly variable genes and their subspaces.

Selection is unsupervised (variance of the log-expression, no labels), as in the DMSF paper
(30 % HVG), and runs once per fold on that fold's **training patients only** (``--folds``,
``--fold``): the count detection (log1p or not), the median imputation of missing values and the
variance ranking never see the fold's validation, test or external patients, so changing their
expression leaves the fold's selection unchanged. The output still holds every patient's values of
the selected genes (imputed with the training medians), because the fold's model predicts them;
standardisation happens later, in training, again on training patients only.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from pathomix.cli import stage_main
from pathomix.constants import SUBSPACES
from pathomix.errors import PathomixInputError
from pathomix.io.atomic import write_parquet
from pathomix.io.corrupt import read_parquet
from pathomix.io.sheets import read_clinical, read_genes
from pathomix.params import load_params

log = logging.getLogger("pathomix.genes")


@dataclass(frozen=True)
class GeneParams:
    """The config's ``genes_params:`` subtree; defaults equal config.yaml (tests/test_params.py checks)."""

    hvg_fraction: float = 0.3
    log_transform: str = "auto"  # auto | always | never
    gene_sets: str | None = None


def looks_like_counts(x: pd.DataFrame) -> bool:
    """Raw counts: non-negative, (nearly) integer-valued and spanning a wide range."""
    v = x.to_numpy(np.float64)
    v = v[np.isfinite(v)]
    return bool(v.size and v.min() >= 0 and np.mean(np.isclose(v, np.round(v))) > 0.99 and v.max() > 100)


def transform(x: pd.DataFrame, mode: str, source: str, fit: pd.DataFrame | None = None) -> pd.DataFrame:
    """log1p of ``x`` when ``mode`` is always, or auto and ``fit`` (default ``x``) looks like counts."""
    do_log = mode == "always" or (mode == "auto" and looks_like_counts(x if fit is None else fit))
    if do_log and (x.to_numpy() < 0).any():
        raise PathomixInputError(f"gene table {source}: negative values, cannot log-transform; "
                                 "set genes_params.log_transform: never")
    log.info("gene table %s: %s", source, "log1p applied (looks like counts)" if do_log
             else "used as given (not counts, or log_transform: never)")
    return np.log1p(x) if do_log else x


def select_hvg(x: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Keep the ``fraction`` most variable genes (at least one), in descending variance order."""
    var = x.var(axis=0, ddof=1).fillna(0.0)
    k = max(1, int(round(fraction * x.shape[1])))
    keep = var.sort_values(ascending=False, kind="stable").index[:k]
    log.info("HVG: kept %d of %d genes (%.0f %%); variance threshold %.4g", k, x.shape[1],
             100 * fraction, var[keep].min())
    return x[keep]


def load_gene_sets(path: str | None) -> pd.Series:
    """gene → subspace from a TSV (columns gene, subspace); default = the packaged file."""
    if path is None:
        with resources.files("pathomix").joinpath("data/gene_sets.tsv").open() as f:
            sets = pd.read_csv(f, sep="\t", comment="#")
    else:
        if not Path(path).exists():
            raise PathomixInputError(f"gene-set file {path} does not exist; fix genes_params.gene_sets")
        sets = pd.read_csv(path, sep="\t", comment="#")
    if not {"gene", "subspace"} <= set(sets.columns) or not sets.subspace.isin(SUBSPACES).all():
        raise PathomixInputError(f"gene-set file {path or 'default'}: needs columns gene, subspace with "
                                 f"subspace in {list(SUBSPACES)}")
    return sets.drop_duplicates("gene").set_index("gene").subspace


def training_patients(folds_path: str | Path, fold: int) -> pd.Index:
    """patient_ids with split ``train`` in ``fold`` of the splits table."""
    folds = read_parquet(folds_path)
    if fold not in set(folds.fold):
        raise PathomixInputError(f"splits table {folds_path} has no fold {fold} (folds: {sorted(set(folds.fold))})")
    rows = folds[(folds.fold == fold) & (folds.split == "train")]
    return pd.Index(rows.patient_id.astype(str).unique())


def run(genes_path: str, clinical_path: str, params: GeneParams, out: str, out_subspaces: str,
        train_ids: pd.Index | None = None) -> None:
    """Select the HVGs on ``train_ids`` (a fold's training patients; None: every patient, for exploration
    only) and write every clinical patient's values of them (``out``) and their subspaces."""
    x = read_genes(genes_path)
    clinical = read_clinical(clinical_path)
    missing = clinical.index.difference(x.index)
    if len(missing):
        log.warning("%d patient(s) of the clinical sheet have no gene expression (e.g. %s); "
                    "gene models skip them", len(missing), list(missing[:3]))
    x = x.loc[x.index.intersection(clinical.index)]
    if x.empty:
        raise PathomixInputError(f"gene table {genes_path} shares no patient_id with {clinical_path}")
    if train_ids is None:
        log.warning("no fold given: genes selected on every patient (use --folds/--fold in a study)")
        fit = x
    else:
        fit = x.loc[x.index.intersection(train_ids)]
        if fit.empty:
            raise PathomixInputError(f"gene table {genes_path}: no training patient of this fold has gene "
                                     "expression; check that its patient_id values match the clinical sheet")
        log.info("selecting genes on the fold's %d training patients (of %d with expression)", len(fit), len(x))
    unmeasured = fit.columns[fit.isna().all()]
    if len(unmeasured):
        log.warning("%d gene(s) have no value in any training patient and are left out (e.g. %s)",
                    len(unmeasured), list(unmeasured[:3]))
        x, fit = x.drop(columns=unmeasured), fit.drop(columns=unmeasured)
    nan_cols = x.columns[x.isna().any()]
    if len(nan_cols):
        log.warning("%d gene(s) with missing values filled with the training patients' median", len(nan_cols))
        medians = fit.median()
        x, fit = x.fillna(medians), fit.fillna(medians)
    keep = select_hvg(transform(fit, params.log_transform, genes_path), params.hvg_fraction).columns
    hv = transform(x[keep], params.log_transform, genes_path, fit=fit)
    sub = load_gene_sets(params.gene_sets).reindex(hv.columns).fillna("other")
    counts = sub.value_counts().to_dict()
    log.info("subspaces of the %d HVGs: %s", len(sub), counts)
    for s in SUBSPACES:
        if counts.get(s, 0) == 0:
            log.warning("no HVG falls in the %s subspace; DMSF models will see an empty %s gene set", s, s)
    write_parquet(hv.reset_index(names="patient_id"), out)
    write_parquet(pd.DataFrame({"gene": sub.index, "subspace": sub.values}), out_subspaces)


@stage_main("pathomix.genes")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.genes", description=__doc__)
    p.add_argument("--genes", required=True)
    p.add_argument("--clinical", required=True)
    p.add_argument("--params", default="{}", help="JSON of the config's `genes_params:` subtree")
    p.add_argument("--out", required=True)
    p.add_argument("--out-subspaces", required=True)
    p.add_argument("--folds", help="splits/folds.parquet: select on the training patients of --fold")
    p.add_argument("--fold", type=int, help="the fold whose training patients select the genes")
    args = p.parse_args(argv)
    if (args.folds is None) != (args.fold is None):
        p.error("--folds and --fold go together")
    train_ids = None if args.folds is None else training_patients(args.folds, args.fold)
    run(args.genes, args.clinical, load_params(GeneParams, args.params, where="genes_params"), args.out,
        args.out_subspaces, train_ids)
    return 0
