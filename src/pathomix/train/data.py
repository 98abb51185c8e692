"""Assemble one fold's cohort: splits, labels/targets, H&E and mIF bags and standardised genes.

Patients used = those of the fold table with a label for the task AND the inputs the model
needs (H&E tiles, mIF tiles, genes); every drop is logged at WARNING with its reason. Survival
bin edges and gene statistics come from the fold's training patients only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathomix.errors import PathomixInputError
from pathomix.io.corrupt import read_parquet
from pathomix.io.sheets import read_clinical
from pathomix.models import tile_key, wsi_key
from pathomix.models.clinical import COVARIATES
from pathomix.models.spec import pos_key
from pathomix.tasks import Task, discretise, survival_bins
from pathomix.train.bags import MODALITIES, Bag, load_bags, read_manifest
from pathomix.train.covariates import covariate_matrix, fit_covariates
from pathomix.train.genes import fit_gene_stats, gene_dims, gene_inputs, read_hvg

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "external")  # external: an external cohort, scored zero-shot


@dataclass(frozen=True)
class Sources:
    """Input files of a training job (None where the model does not need them)."""

    clinical: Path
    folds: Path
    manifest: Path | None = None
    hvg: Path | None = None
    subspaces: Path | None = None


@dataclass(frozen=True)
class Needs:
    """Which inputs to load (``load_*``) and which a patient must have (``require_*``): H&E tiles
    (``wsi``), mIF tiles (``mif``) at ``mags`` (the first required), genes."""

    mags: tuple[str, ...] = ()
    load_wsi: bool = False
    load_genes: bool = False
    require_wsi: bool = False
    require_genes: bool = False
    load_mif: bool = False
    require_mif: bool = False


@dataclass
class Patient:
    patient_id: str
    split: str
    target: dict[str, float]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # unbatched, CPU
    bags: dict[str, Bag] = field(default_factory=dict)  # input key (wsi_20x, mif_20x) → bag (tile provenance)


@dataclass
class Cohort:
    patients: list[Patient]
    dims: dict[str, int]
    gene_stats: dict[str, Any] | None
    bin_edges: list[float] | dict[str, list[float] | None] | None  # by task name in joint training
    markers: tuple[str, ...] = ()  # mIF marker names (the stores' `channels`), in feature order
    covariate_stats: dict[str, Any] | None = None  # train.covariates: the transform fitted on training patients

    def split(self, name: str) -> list[Patient]:
        return [p for p in self.patients if p.split == name]


def read_fold(path: Path, fold: int) -> pd.Series:
    """patient_id → split for ``fold``; asserts one row per patient."""
    df = read_parquet(path)
    if not {"patient_id", "fold", "split"} <= set(df.columns):
        raise PathomixInputError(f"{path} needs columns patient_id, fold, split; it has {list(df.columns)}")
    df = df[df.fold.astype(int) == fold].assign(patient_id=lambda d: d.patient_id.astype(str))
    if df.empty:
        known = sorted(read_parquet(path).fold.unique())
        raise PathomixInputError(f"{path} has no rows for fold {fold}; folds: {known}")
    dup = df.patient_id[df.patient_id.duplicated()].unique()
    if len(dup):
        raise PathomixInputError(f"{path}: patient(s) {list(dup[:5])} appear twice in fold {fold}")
    bad = sorted(set(df.split) - set(SPLITS))
    if bad:
        raise PathomixInputError(f"{path}: unknown split value(s) {bad}; allowed {list(SPLITS)}")
    return df.set_index("patient_id").split.sort_index()


def read_cohorts(path: Path) -> dict[str, str]:
    """patient_id → cohort from folds.parquet (empty when it has no ``cohort`` column)."""
    df = read_parquet(path)
    if "cohort" not in df.columns:
        return {}
    return dict(zip(df.patient_id.astype(str), df.cohort.astype(str), strict=True))


def _drop(keep: list[str], ok: Callable[[str], bool], why: str) -> list[str]:
    kept = [p for p in keep if ok(p)]
    if len(kept) < len(keep):
        dropped = [p for p in keep if p not in set(kept)]
        log.warning("%d patients %s; skipped (e.g. %s)", len(dropped), why, dropped[:3])
    return kept


def _classification_targets(clin: pd.DataFrame, label: pd.Series, pids: Sequence[str],
                            train: Sequence[str], edges: Sequence[float] | None = None
                            ) -> tuple[dict[str, dict[str, float]], None]:
    return {p: {"y": int(label[p])} for p in pids}, None


def _survival_targets(clin: pd.DataFrame, label: pd.Series, pids: Sequence[str],
                      train: Sequence[str], edges: Sequence[float] | None = None
                      ) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Targets with the bin of each time: the bin edges fitted on ``train``, or ``edges`` when given
    (a distilled student's are its teacher's, so that their survival distributions share the bins)."""
    if edges is None:
        edges = survival_bins(clin.loc[list(train), "survival_months"].to_numpy(float),
                              clin.loc[list(train), "event"].to_numpy(float))
        log.info("survival bin edges from %d training patients: %s", len(train), np.round(edges, 2).tolist())
    else:
        log.info("survival bin edges given (the teacher's): %s", np.round(np.asarray(edges, float), 2).tolist())
    bins = discretise(clin.loc[list(pids), "survival_months"].to_numpy(float), np.asarray(edges, float))
    targets = {p: {"time": float(clin.at[p, "survival_months"]), "event": int(clin.at[p, "event"]),
                   "bin": int(b)} for p, b in zip(pids, bins, strict=True)}
    return targets, [float(e) for e in edges]


TARGETS = {"classification": _classification_targets, "survival": _survival_targets}


def load_cohort(src: Sources, task: Task | Sequence[Task], fold: int, needs: Needs,
                gene_stats: Mapping[str, Any] | None = None, empty_bags: str = "skip",
                bin_edges: Mapping[str, Sequence[float]] | None = None, covariates: Sequence[str] = ()) -> Cohort:
    """Load everything one training job needs into memory (features loaded once).

    ``gene_stats`` (e.g. a teacher's) replaces statistics fitted on this fold's training set;
    ``bin_edges`` ``{task name: edges}`` (e.g. a teacher's) replace the survival bin edges fitted there.
    ``covariates``: clinical-sheet columns given to every patient as input ``covariates`` (standardised / one-hot,
    imputed; fitted on the fold's training patients: :mod:`pathomix.train.covariates`).
    ``empty_bags``: what to do with a patient whose H&E slides all have 0 tiles (no tissue, or
    smaller than one tile): ``skip`` (logged with the reason) or ``error``.

    Several tasks (joint multi-task training): a patient is used when it has a label for at least one
    of them; its ``target`` is then ``{task name: target}`` over the tasks it has a label for, and
    ``bin_edges`` ``{task name: edges}`` (survival tasks only).
    """
    tasks = [task] if isinstance(task, Task) else list(task)
    split = read_fold(src.folds, fold)
    clin = read_clinical(src.clinical)
    labels = {t.name: t.label(clin) for t in tasks}
    pids = _drop(list(split.index), lambda p: p in clin.index,
                 "of the fold table are not in the clinical sheet")
    pids = _drop(pids, lambda p: any(pd.notna(lab.get(p)) for lab in labels.values()),
                 f"have no {' or '.join(labels)} label")

    bags: dict[str, dict[str, Bag]] = {}  # patient → input key → bag
    dims: dict[str, int] = {}
    markers: tuple[str, ...] = ()
    for kind, modality, load, require in (("wsi", "he", needs.load_wsi, needs.require_wsi),
                                          ("mif", "mif", needs.load_mif, needs.require_mif)):
        if load:
            pids, channels = _load_tiles(kind, modality, src, needs.mags, pids, require, empty_bags, bags, dims)
            markers = markers or channels

    genes: dict[str, dict[str, torch.Tensor]] = {}
    stats: dict[str, Any] | None = None
    if needs.load_genes:
        if src.hvg is None or src.subspaces is None:
            raise PathomixInputError(
                "this model (or its teacher) needs gene expression; pass --hvg and --subspaces")
        hvg, subspace = read_hvg(src.hvg, src.subspaces)
        if needs.require_genes:
            with_genes = set(hvg.dropna(axis=0, how="any").index)
            pids = _drop(pids, lambda p: p in with_genes, "have no (complete) gene expression")
        train = [p for p in pids if split[p] == "train"]
        stats = dict(gene_stats) if gene_stats is not None else fit_gene_stats(hvg, subspace, train)
        genes = gene_inputs(hvg, stats)
        dims.update(gene_dims(stats))

    targets: dict[str, dict[str, dict[str, float]]] = {}
    edges: dict[str, list[float] | None] = {}
    for t in tasks:
        with_label = [p for p in pids if pd.notna(labels[t.name].get(p))]
        train = [p for p in with_label if split[p] == "train"]
        if not train:
            raise PathomixInputError(f"fold {fold}: no training patient has a {t.name} label and the inputs "
                                     "this model needs")
        targets[t.name], edges[t.name] = TARGETS[t.kind](clin, labels[t.name], with_label, train,
                                                         (bin_edges or {}).get(t.name))
    cov_stats, cov = None, {}
    if covariates:
        train = [p for p in pids if split[p] == "train"]
        fitted = fit_covariates(clin, train, covariates, f"clinical sheet {src.clinical}")
        cov = dict(zip(pids, torch.from_numpy(covariate_matrix(clin, pids, fitted)), strict=True))
        cov_stats, dims[COVARIATES] = fitted.to_dict(), len(fitted.names)
    patients = []
    for p in pids:
        by_key = bags.get(p, {})
        positions = {pos_key(m): torch.from_numpy(by_key[wsi_key(m)].positions)
                     for m in needs.mags if wsi_key(m) in by_key}  # of the H&E tiles
        inputs = {key: b.features for key, b in by_key.items()} | positions | genes.get(p, {})
        if cov:
            inputs[COVARIATES] = cov[p]
        target = ({t: by_p[p] for t, by_p in targets.items() if p in by_p} if len(tasks) > 1
                  else targets[tasks[0].name][p])
        patients.append(Patient(p, str(split[p]), target, inputs, by_key))
    counts = {s: sum(q.split == s for q in patients) for s in SPLITS}
    log.info("fold %d, task %s: %d patients used (%s)", fold, " + ".join(labels), len(patients), counts)
    return Cohort(patients, dims, stats, edges if len(tasks) > 1 else edges[tasks[0].name], markers, cov_stats)


def _load_tiles(kind: str, modality: str, src: Sources, mags: tuple[str, ...], pids: list[str], require: bool,
                empty_bags: str, bags: dict[str, dict[str, Bag]], dims: dict[str, int]
                ) -> tuple[list[str], tuple[str, ...]]:
    """Load the ``modality`` bags of ``pids`` into ``bags[patient][tile_key(kind, mag)]`` and their
    sizes into ``dims`` (``wsi``; ``mif`` and ``markers``). With ``require``, drop (logged) the
    patients without tiles at the first magnification. → (patients kept, marker names)."""
    name = MODALITIES[modality][0]
    if src.manifest is None:
        raise PathomixInputError(f"this model (or its teacher) needs {name} features; pass --manifest")
    manifest = read_manifest(src.manifest, mags, modality)
    if manifest.empty:
        fix = ("add mIF images (rows with modality mif) to slides.tsv, or remove the mIF model from train.models"
               if modality == "mif" else "run the features stage on the H&E slides")
        raise PathomixInputError(f"{src.manifest} lists no {name} feature store at {list(mags)}; {fix}")
    loaded = load_bags(manifest, pids, modality)
    if loaded.tile_shape is None:
        raise PathomixInputError(f"no {name} tiles at {list(mags)} for any patient in {src.manifest}")
    for pid, by_mag in loaded.bags.items():
        bags.setdefault(pid, {}).update({tile_key(kind, m): b for m, b in by_mag.items()})
    dims[kind] = loaded.tile_shape[-1]
    if modality == "mif":
        dims["markers"] = loaded.tile_shape[0]
    if not require:
        return pids, loaded.channels
    main, key = mags[0], tile_key(kind, mags[0])
    with_slides = set(manifest.patient_id[manifest.mag == main])
    pids = _drop(pids, lambda p: p in with_slides, f"have no {name} features at {main}")
    empty = [p for p in pids if key not in bags.get(p, {})]
    if empty and empty_bags == "error":
        slides_of = manifest[manifest.patient_id.isin(empty) & (manifest.mag == main)]
        raise PathomixInputError(
            f"patient(s) {empty[:5]} have {name} slides {list(slides_of.slide_id[:5])} whose feature "
            f"stores at {main} all have 0 tiles (no tissue found, or smaller than one tile); check "
            "the QC thumbnails, or set train.empty_bags: skip to leave such patients out")
    pids = _drop(pids, lambda p: key in bags.get(p, {}),
                 f"have {name} slides at {main} whose feature stores all have 0 tiles")
    return pids, loaded.channels
