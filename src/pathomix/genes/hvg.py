"""``python -m pathomix.genes``: highly variable genes and their subspaces.

Selection is unsupervised (variance of the log-expression over all patients, no labels), as
in the DMSF paper (30 % HVG); standardisation happens later per fold on training patients,
so no test statistics leak into training.
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


def transform(x: pd.DataFrame, mode: str, source: str) -> pd.DataFrame:
    do_log = mode == "always" or (mode == "auto" and looks_like_counts(x))
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


def run(genes_path: str, clinical_path: str, params: GeneParams, out: str, out_subspaces: str) -> None:
    x = read_genes(genes_path)
    clinical = read_clinical(clinical_path)
    missing = clinical.index.difference(x.index)
    if len(missing):
        log.warning("%d patient(s) of the clinical sheet have no gene expression (e.g. %s); "
                    "gene models skip them", len(missing), list(missing[:3]))
    x = x.loc[x.index.intersection(clinical.index)]
    if x.empty:
        raise PathomixInputError(f"gene table {genes_path} shares no patient_id with {clinical_path}")
    nan_cols = x.columns[x.isna().any()]
    if len(nan_cols):
        log.warning("%d gene(s) with missing values filled with the gene median", len(nan_cols))
        x = x.fillna(x.median())
    hv = select_hvg(transform(x, params.log_transform, genes_path), params.hvg_fraction)
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
    args = p.parse_args(argv)
    run(args.genes, args.clinical, load_params(GeneParams, args.params, where="genes_params"), args.out,
        args.out_subspaces)
    return 0
