"""HVG gene inputs: read, split into subspaces, standardise with training statistics only."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathomix.errors import PathomixInputError
from pathomix.io.corrupt import read_parquet

log = logging.getLogger(__name__)

SUBSPACE_INPUTS = {"tumour": "genes_tumour", "tme": "genes_tme"}


def read_hvg(hvg_path: str | Path, subspaces_path: str | Path) -> tuple[pd.DataFrame, pd.Series]:
    """→ (patients × genes float table indexed by patient_id, gene → subspace)."""
    hvg_path, subspaces_path = Path(hvg_path), Path(subspaces_path)
    for p in (hvg_path, subspaces_path):
        if not p.exists():
            raise PathomixInputError(f"{p} does not exist; run the genes stage first")
    hvg = read_parquet(hvg_path)
    if "patient_id" not in hvg.columns:
        raise PathomixInputError(f"{hvg_path} has no patient_id column")
    hvg = hvg.assign(patient_id=hvg.patient_id.astype(str)).set_index("patient_id").astype(np.float32)
    sub = read_parquet(subspaces_path)
    if not {"gene", "subspace"} <= set(sub.columns):
        raise PathomixInputError(f"{subspaces_path} needs columns gene, subspace; it has {list(sub.columns)}")
    subspace = sub.set_index(sub.gene.astype(str)).subspace.reindex(hvg.columns.astype(str))
    if subspace.isna().any():
        log.warning("%d HVG genes have no subspace in %s; treated as 'other'", int(subspace.isna().sum()),
                    subspaces_path)
    return hvg, subspace.fillna("other")


def fit_gene_stats(hvg: pd.DataFrame, subspace: pd.Series, train_patients: Iterable[str]) -> dict[str, Any]:
    """Mean and std of every gene over the training patients (std 0 → 1); plain lists."""
    train = hvg.loc[hvg.index.isin(list(train_patients))]
    if train.empty:
        raise PathomixInputError("no training patient has gene expression; cannot standardise the genes")
    mean = train.mean(axis=0)
    std = train.std(axis=0, ddof=0)
    std = std.where(std > 1e-6, 1.0)
    return {"genes": [str(g) for g in hvg.columns], "subspace": [str(s) for s in subspace],
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def gene_dims(stats: Mapping[str, Any]) -> dict[str, int]:
    """Sizes of the gene inputs (``genes`` and one per subspace)."""
    sub = np.asarray(stats["subspace"])
    return {"genes": len(sub), **{key: int((sub == s).sum()) for s, key in SUBSPACE_INPUTS.items()}}


def gene_inputs(hvg: pd.DataFrame, stats: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Standardised gene tensors per patient: ``{patient: {genes, genes_tumour, genes_tme}}``.

    Patients with any missing value among the genes are left out.
    """
    missing = sorted(set(stats["genes"]) - set(map(str, hvg.columns)))
    if missing:
        raise PathomixInputError(f"{len(missing)} gene(s) used in training are absent from the HVG table, "
                                 f"e.g. {missing[:5]}")
    values = hvg.set_axis(hvg.columns.astype(str), axis=1)[stats["genes"]].dropna(axis=0, how="any")
    mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    z = (values.to_numpy(np.float32) - mean) / std
    sub = np.asarray(stats["subspace"])
    out: dict[str, dict[str, torch.Tensor]] = {}
    for pid, row in zip(values.index, torch.from_numpy(z), strict=True):
        out[str(pid)] = {"genes": row,
                         **{key: row[torch.from_numpy(sub == s)] for s, key in SUBSPACE_INPUTS.items()}}
    return out
