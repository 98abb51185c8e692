"""``python -m pathomix.train``: train one model on one task and fold, predict val and test.

Example (what the Snakemake rule runs)::

    python -m pathomix.train --model dmsf_student --task diagnosis --fold 0 \\
        --clinical clinical.tsv --folds results/splits/folds.parquet \\
        --manifest results/features/resnet50_trunc/manifest.parquet \\
        --hvg results/genes/fold0/hvg.parquet --subspaces results/genes/fold0/subspaces.parquet \\
        --teacher-checkpoint results/models/dmsf_teacher/diagnosis/fold0/checkpoint.pt \\
        --params '{"epochs": 40, ...}' --threads 1 --out results/models/dmsf_student/diagnosis/fold0

A variant (``train.variants``) runs as its registered model with ``--name`` and its merged
params, e.g. ``--model dmsf_student --name dmsf_student-scratch --scratch``.

Several folds in one process (``--fold 0 1 2``; the workflow's ``train.folds_per_job``): the per-fold
inputs (``--hvg``, ``--subspaces``, ``--teacher-checkpoint``) then name one file per fold and ``--out`` one
folder per fold and task (fold-major). The folds are trained one after another exactly as separate
processes would (every fold seeds afresh), so the outputs are the same; the process start-up (Python,
torch, the model code: 2-3 s on a CPU) is paid once.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathomix.cli import stage_main
from pathomix.errors import PathomixInputError
from pathomix.models import GENE_INPUTS, MODELS, ModelSpec, get_model, wsi_key
from pathomix.models.clinical import COVARIATES
from pathomix.tasks import TASKS, Task, get_task
from pathomix.train import clinical, fof
from pathomix.train.bags import manifest_encoder
from pathomix.train.covariates import CovariateFusion
from pathomix.train.data import SPLITS, Needs, Sources, load_cohort, read_cohorts
from pathomix.train.distill import (
    check_teacher,
    distill_term,
    load_checkpoint,
    load_teacher,
    teacher_bin_edges,
    teacher_targets,
)
from pathomix.train.importance import gene_importance
from pathomix.train.loop import Explain, FitResult, evaluate, fit
from pathomix.train.objectives import Objective, joint_objective, make_objective
from pathomix.train.outputs import checkpoint_dict, predictions_frame, write_outputs
from pathomix.train.params import TrainParams, resolve_device

log = logging.getLogger("pathomix.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pathomix.train", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=sorted(MODELS), help="registered model")
    ap.add_argument("--name", help="name of this model in the outputs (a variant); default: --model")
    ap.add_argument("--teacher-name", help="model name the teacher checkpoint must carry (a variant); "
                    "default: the registered teacher")
    ap.add_argument("--scratch", action="store_true", help="train a distilled model without its teacher")
    ap.add_argument("--task", required=True, nargs="+", choices=sorted(TASKS),
                    help="task; several train one joint model (models with a joint builder, e.g. umeml)")
    ap.add_argument("--fold", required=True, nargs="+", type=int, help="fold(s); several train one after another")
    ap.add_argument("--clinical", required=True, type=Path)
    ap.add_argument("--folds", required=True, type=Path, help="splits/folds.parquet")
    ap.add_argument("--manifest", type=Path, help="features/{encoder}/manifest.parquet (H&E and mIF models)")
    ap.add_argument("--hvg", nargs="+", type=Path,
                    help="genes/fold{k}/hvg.parquet (gene models, distilled students), one per --fold")
    ap.add_argument("--subspaces", nargs="+", type=Path, help="genes/fold{k}/subspaces.parquet, one per --fold")
    ap.add_argument("--slides", type=Path, help="slides sheet (image models: where the slides are)")
    ap.add_argument("--tiles", nargs="+", default=[],
                    help="coords stores tiles/{mag}/{slide}.h5, or the tiles folder holding them (image models)")
    ap.add_argument("--teacher-checkpoint", nargs="+", type=Path,
                    help="checkpoint.pt of the teacher (same task and fold), one per --fold")
    ap.add_argument("--params", default="{}", help="JSON of the config's train: subtree, or @file.json")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", required=True, nargs="+", type=Path,
                    help="output folder models/{model}/{task}/fold{k}, one per --task and --fold (fold-major)")
    ap.add_argument("--log-level", help="overrides PATHOMIX_LOGLEVEL (default INFO)")
    return ap.parse_args(argv)


def per_fold(args: argparse.Namespace) -> list[argparse.Namespace]:
    """The arguments of each ``--fold``: its fold, its per-fold inputs and its ``--out`` folders (one per task)."""
    folds, n_tasks = args.fold, len(args.task)
    if len(args.out) != n_tasks * len(folds):
        raise PathomixInputError(f"--out names {len(args.out)} folder(s) for {n_tasks} task(s) and {len(folds)} "
                                 f"fold(s); give one per task and fold, fold by fold")
    per_fold_inputs = {"hvg": args.hvg, "subspaces": args.subspaces, "teacher_checkpoint": args.teacher_checkpoint}
    for flag, files in per_fold_inputs.items():
        if files is not None and len(files) != len(folds):
            raise PathomixInputError(f"--{flag.replace('_', '-')} names {len(files)} file(s) for {len(folds)} "
                                     "fold(s); give one per --fold")
    return [argparse.Namespace(**{**vars(args), "fold": fold, "out": args.out[i * n_tasks:(i + 1) * n_tasks],
                                  **{k: None if v is None else v[i] for k, v in per_fold_inputs.items()}})
            for i, fold in enumerate(folds)]


def read_params(raw: str) -> TrainParams:
    """``--params``: JSON text or ``@file.json`` of the ``train:`` subtree (one job's, see catalog.job_params)."""
    return TrainParams.from_mapping(raw)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed python, numpy and torch. CPU kernels are deterministic; on CUDA ask for
    deterministic kernels too (not on CPU: the call imports torch._dynamo, ~3 s)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _needs(spec: ModelSpec, teacher: ModelSpec | None, params: TrainParams) -> Needs:
    """Load what the model and its teacher use; require only what the model itself needs."""
    specs = [spec] + ([teacher] if teacher else [])
    mags = tuple(dict.fromkeys([*(params.model.mags or spec.mags), *(m for s in specs[1:] for m in s.mags)]))
    return Needs(mags=mags, load_wsi=any(s.needs_wsi for s in specs),
                 load_genes=any(s.needs_genes for s in specs), load_mif=any(s.needs_mif for s in specs),
                 require_wsi=spec.needs_wsi, require_genes=spec.needs_genes, require_mif=spec.needs_mif)


def _teacher(args: argparse.Namespace, spec: ModelSpec, task_name: str) -> tuple[ModelSpec | None, dict | None]:
    """The teacher's spec and checkpoint, or (None, None) for a model trained without one."""
    if spec.teacher is None or args.scratch:
        if args.teacher_checkpoint is not None:
            raise PathomixInputError(f"{args.name or spec.name}: --teacher-checkpoint given, but "
                                     f"{'--scratch was asked' if args.scratch else f'{spec.name} has no teacher'}")
        return None, None
    if args.teacher_checkpoint is None:
        raise PathomixInputError(
            f"{spec.name} is distilled from {spec.teacher}; pass --teacher-checkpoint "
            f"(models/{args.teacher_name or spec.teacher}/{task_name}/fold{args.fold}/checkpoint.pt), "
            "or --scratch to train it without a teacher")
    return get_model(spec.teacher), load_checkpoint(args.teacher_checkpoint)


@dataclass
class Trained:
    """What a trainer hands back for the outputs: the model, its fit, predictions per split and tables."""

    model: torch.nn.Module
    result: FitResult
    objective: Objective
    predictions: dict[str, pd.DataFrame]  # split → one row per patient (val, test, external)
    attention: pd.DataFrame | None = None
    marker_attention: pd.DataFrame | None = None
    importance: pd.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # dims, gene_stats, bin_edges, markers, teacher


def train_bags(args: argparse.Namespace, spec: ModelSpec, tasks: list[Task], params: TrainParams,
               device: torch.device) -> dict[str, Trained]:
    """Models on feature bags and genes (every model but the image models); several tasks train one
    joint model (``spec.build_joint``) → {task name: Trained}."""
    joint = len(tasks) > 1
    teacher_spec, teacher_ckpt = _teacher(args, spec, tasks[0].name)
    teacher_name = args.teacher_name or spec.teacher
    if teacher_ckpt is not None:
        check_teacher(teacher_ckpt, teacher_name, tasks[0], args.fold)
    src = Sources(args.clinical, args.folds, args.manifest, args.hvg, args.subspaces)
    cohort = load_cohort(src, tasks if joint else tasks[0], args.fold, _needs(spec, teacher_spec, params),
                         covariates=params.covariates,
                         gene_stats=teacher_ckpt["gene_stats"] if teacher_ckpt else None,
                         empty_bags=params.empty_bags,
                         bin_edges=teacher_bin_edges(teacher_ckpt, tasks[0]) if teacher_ckpt else None)
    log.info("model %s (%s), task %s, fold %d on %s, dims %s", args.name or spec.name, spec.name,
             " + ".join(t.name for t in tasks), args.fold, device, cohort.dims)

    train, val, test, external = (cohort.split(s) for s in SPLITS)
    if joint:
        model = spec.build_joint(cohort.dims, tasks, params.model).to(device)
        objective, views = joint_objective(tasks, [p.target for p in train], device)
    else:
        model = spec.build(cohort.dims, tasks[0], params.model).to(device)
        objective = make_objective(tasks[0], [p.target for p in train], device)
        views = {tasks[0].name: objective}
    if params.covariates:  # late fusion: a linear term of the covariates added to the logits
        outputs = {t.name: t.n_outputs for t in tasks} if joint else tasks[0].n_outputs
        model = CovariateFusion(model, cohort.dims[COVARIATES], outputs).to(device)
    extra, monitor_from = None, 1
    if teacher_spec is not None and teacher_ckpt is not None:
        if teacher_ckpt["dims"].get("wsi") != cohort.dims.get("wsi"):
            raise PathomixInputError(f"teacher was trained on {teacher_ckpt['dims'].get('wsi')}-d features, "
                                     f"these are {cohort.dims.get('wsi')}-d; use the same encoder")
        teacher = load_teacher(teacher_ckpt, teacher_name, tasks[0], args.fold, device)
        needed = ([wsi_key(teacher_spec.mags[0])] if teacher_spec.needs_wsi else []) + (
            list(GENE_INPUTS) if teacher_spec.needs_genes else [])
        extra = distill_term(teacher_targets(teacher, train, needed, device), params.distill,
                             objective.log_prob)
        monitor_from = params.distill.warmup_epochs + 1
        log.info("distilling from %s after %d warm-up epochs (KL weight %g at T=%g, feature weight %g)",
                 teacher_name, params.distill.warmup_epochs, params.distill.kl_weight,
                 params.distill.temperature, params.distill.feature_weight)

    result = fit(model, train, val, objective, params, device, extra, monitor_from)
    explain = Explain(spec.tile_input, cohort.markers) if spec.tile_input else None
    out = {}
    for name, view in views.items():
        def labelled(patients: list, name: str = name) -> list:  # joint: the patients with this task's label
            return [p for p in patients if name in p.target] if joint else patients
        preds, tables = {}, {}
        for split, patients in zip(SPLITS[1:], (val, test, external), strict=True):
            _, preds[split], got = evaluate(model, labelled(patients), view, device,
                                            explain if split == "test" else None)
            tables.update(got)
        importance = (gene_importance(model, labelled(test), view, device, cohort.gene_stats)
                      if spec.needs_genes else None)
        meta = {"teacher": teacher_name if teacher_ckpt else None, "dims": dict(cohort.dims),
                "gene_stats": cohort.gene_stats, "markers": list(cohort.markers),
                "covariate_stats": cohort.covariate_stats,
                "bin_edges": cohort.bin_edges[name] if joint else cohort.bin_edges,
                "joint_tasks": [t.name for t in tasks] if joint else None}
        out[name] = Trained(model, result, view, preds, tables.get("attention"),
                            tables.get("marker_attention") if spec.needs_mif else None, importance, meta)
    return out


def train_images(args: argparse.Namespace, spec: ModelSpec, tasks: list[Task], params: TrainParams,
                 device: torch.device) -> dict[str, Trained]:
    """Models on tile images (``fof``): tiles read through the coords stores (:mod:`pathomix.train.fof`)."""
    if args.slides is None or not args.tiles:
        raise PathomixInputError(f"{spec.name} learns from tile images; pass --slides (the slides sheet) and "
                                 "--tiles (the coords stores tiles/{mag}/{slide}.h5)")
    task = tasks[0]
    if params.covariates:
        log.warning("%s does not take clinical covariates (train.covariates %s): it learns from the tile images "
                    "alone", spec.name, list(params.covariates))
    cohort = load_cohort(Sources(args.clinical, args.folds), task, args.fold, Needs())
    mag = (params.model.mags or spec.mags)[0]
    data = fof.image_cohort(cohort, args.slides, args.tiles, mag, params.model.fof_image_px)
    log.info("model %s (%s), task %s, fold %d on %s, %s tiles at %d px", args.name or spec.name, spec.name,
             task.name, args.fold, device, mag, params.model.fof_image_px)
    model = spec.build({}, task, params.model).to(device)
    objective = make_objective(task, [p.target for p in data.split("train")], device)
    result = fof.fit(model, data, objective, args.clinical, params, device)
    preds, attention = {}, None
    for split in SPLITS[1:]:
        _, preds[split], att = fof.evaluate(model, data, data.split(split), objective, params, device,
                                            attention=split == "test")
        attention = att if att is not None else attention
    meta = {"teacher": None, "dims": {}, "gene_stats": None, "bin_edges": cohort.bin_edges, "markers": [],
            "biomarkers": list(params.model.fof_biomarkers)}
    return {task.name: Trained(model, result, objective, preds, attention, meta=meta)}


def train_clinical(args: argparse.Namespace, spec: ModelSpec, tasks: list[Task], params: TrainParams,
                   device: torch.device) -> dict[str, Trained]:
    """The clinical baseline (``cox_clinical``): the covariates alone, fitted in closed form on the fold's
    training patients (:mod:`pathomix.train.clinical`); validation patients are predicted, never used."""
    task = tasks[0]
    if not params.covariates:
        raise PathomixInputError(f"{spec.name} learns from clinical covariates, but train.covariates is empty; "
                                 "list clinical sheet columns there, e.g. covariates: [age]")
    cohort = load_cohort(Sources(args.clinical, args.folds), task, args.fold, Needs(), covariates=params.covariates)
    log.info("model %s (%s), task %s, fold %d: covariates %s", args.name or spec.name, spec.name, task.name,
             args.fold, cohort.covariate_stats["names"])
    train = cohort.split("train")
    objective = make_objective(task, [p.target for p in train], device)
    model = spec.build(cohort.dims, task, params.model)
    fitted = clinical.fit(model, task, train, params.clinical_penalizer)
    preds = {split: clinical.predict(model, task, cohort.split(split), objective.columns) for split in SPLITS[1:]}
    history = pd.DataFrame({"epoch": [1], "train_loss": [fitted], "val_loss": [math.nan],
                            "val_metric": [objective.metric(preds["val"]) if len(preds["val"]) else math.nan],
                            "lr": [math.nan], "seconds": [math.nan]})
    meta = {"teacher": None, "dims": dict(cohort.dims), "gene_stats": None, "bin_edges": cohort.bin_edges,
            "markers": [], "covariate_stats": cohort.covariate_stats}
    return {task.name: Trained(model, FitResult(history, 1), objective, preds, meta=meta)}


TRAINERS = {"features": train_bags, "images": train_images, "clinical": train_clinical}  # ModelSpec.reads → trainer


def run(args: argparse.Namespace, params: TrainParams | None = None) -> dict[str, dict[str, Any]]:
    """Train, predict and write the outputs (one folder per task); returns a summary per task. In-process
    callers may pass typed ``params`` (else ``args.params``, the ``--params`` JSON, is read)."""
    t_start = time.perf_counter()
    params = params if params is not None else read_params(args.params)
    device = resolve_device(params.device)
    seed_everything(params.seed, device)
    spec, tasks = get_model(args.model), [get_task(t) for t in args.task]
    name = args.name or spec.name
    if len(args.out) != len(tasks):
        raise PathomixInputError(f"--out names {len(args.out)} folder(s) for {len(tasks)} task(s); give one per task")
    if bad := [t.name for t in tasks if t.kind not in spec.task_kinds]:
        raise PathomixInputError(f"{spec.name} trains {' and '.join(spec.task_kinds)} tasks only, not {bad}")
    if len(tasks) > 1 and spec.build_joint is None:
        raise PathomixInputError(f"{spec.name} trains one task at a time; run one job per task")
    trained = TRAINERS[spec.reads](args, spec, tasks, params, device)
    summaries, cohorts = {}, read_cohorts(args.folds)
    reads_features = spec.needs_wsi or spec.needs_mif  # patch features of the manifest's encoder
    for task, out_dir in zip(tasks, args.out, strict=True):
        t = trained[task.name]
        parts = [f for f in t.predictions.values() if len(f)] or [t.predictions["test"]]
        predictions = predictions_frame(pd.concat(parts, ignore_index=True), args.fold, name, task.name, cohorts,
                                        encoder=manifest_encoder(args.manifest) if reads_features else "")
        meta = {"model": name, "base_model": spec.name, "task": task.name, "fold": args.fold,
                "params": params.to_dict(), "classes": list(task.classes), "best_epoch": t.result.best_epoch,
                **t.meta}
        write_outputs(out_dir, checkpoint_dict(t.model, meta), t.result.history, predictions, t.attention,
                      t.importance, t.marker_attention)
        summaries[task.name] = {
            "seconds": time.perf_counter() - t_start, "best_epoch": t.result.best_epoch,
            f"test_{t.objective.metric_name}": t.objective.metric(t.predictions["test"]),
            **{f"n_{s}": int((predictions.split == s).sum()) for s in SPLITS[1:]}}
        log.info("%s/%s/fold%d done in %.2f s: %s", name, task.name, args.fold, summaries[task.name]["seconds"],
                 summaries[task.name])
    return summaries


@stage_main("pathomix.train")
def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 1 on a user-input error (message logged, no traceback)."""
    args = parse_args(argv)
    if args.log_level:
        logging.getLogger().setLevel(args.log_level.upper())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(1, args.threads))
        for fold_args in per_fold(args):
            run(fold_args)
    finally:  # in-process callers (tests, notebooks) get their thread count back
        torch.set_num_threads(threads)
    return 0
