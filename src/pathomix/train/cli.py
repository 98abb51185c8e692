"""``python -m pathomix.train``: train one model on one task and fold, predict val and test.

Example (what the Snakemake rule runs)::

    python -m pathomix.train --model dmsf_student --task diagnosis --fold 0 \\
        --clinical clinical.tsv --folds results/splits/folds.parquet \\
        --manifest results/features/resnet50_trunc/manifest.parquet \\
        --hvg results/genes/hvg.parquet --subspaces results/genes/subspaces.parquet \\
        --teacher-checkpoint results/models/dmsf_teacher/diagnosis/fold0/checkpoint.pt \\
        --params '{"epochs": 40, ...}' --threads 1 --out results/models/dmsf_student/diagnosis/fold0

A variant (``train.variants``) runs as its registered model with ``--name`` and its merged
params, e.g. ``--model dmsf_student --name dmsf_student-scratch --scratch``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathomix.io.errors import PathomixInputError
from pathomix.io.tasks import TASKS, get_task
from pathomix.logs import setup_logging
from pathomix.models import GENE_INPUTS, MODELS, ModelSpec, get_model, wsi_key
from pathomix.train.data import Needs, Sources, load_cohort, read_cohorts
from pathomix.train.distill import (
    check_teacher,
    distill_term,
    load_checkpoint,
    load_teacher,
    teacher_targets,
)
from pathomix.train.importance import gene_importance
from pathomix.train.loop import Explain, evaluate, fit
from pathomix.train.objectives import make_objective
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
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--fold", required=True, type=int)
    ap.add_argument("--clinical", required=True, type=Path)
    ap.add_argument("--folds", required=True, type=Path, help="splits/folds.parquet")
    ap.add_argument("--manifest", type=Path, help="features/{encoder}/manifest.parquet (H&E and mIF models)")
    ap.add_argument("--hvg", type=Path, help="genes/hvg.parquet (gene models and distilled students)")
    ap.add_argument("--subspaces", type=Path, help="genes/subspaces.parquet")
    ap.add_argument("--teacher-checkpoint", type=Path, help="checkpoint.pt of the teacher (same task, fold)")
    ap.add_argument("--params", default="{}", help="JSON of the config's train: subtree, or @file.json")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", required=True, type=Path, help="output folder models/{model}/{task}/fold{k}")
    ap.add_argument("--log-level", help="overrides PATHOMIX_LOGLEVEL (default INFO)")
    return ap.parse_args(argv)


def read_params(raw: str) -> TrainParams:
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise PathomixInputError(f"--params is not valid JSON ({err}): {text[:200]!r}") from None
    if not isinstance(raw, dict):
        raise PathomixInputError(
            f"--params must be a JSON object (the config's train: subtree), got {text[:80]!r}")
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, predict and write the outputs; returns a summary (for logs and tests)."""
    t_start = time.perf_counter()
    params = read_params(args.params)
    device = resolve_device(params.device)
    seed_everything(params.seed, device)
    spec, task = get_model(args.model), get_task(args.task)
    name = args.name or spec.name
    teacher_spec, teacher_ckpt = _teacher(args, spec, task.name)
    teacher_name = args.teacher_name or spec.teacher
    if teacher_ckpt is not None:
        check_teacher(teacher_ckpt, teacher_name, task, args.fold)
    src = Sources(args.clinical, args.folds, args.manifest, args.hvg, args.subspaces)
    cohort = load_cohort(src, task, args.fold, _needs(spec, teacher_spec, params),
                         gene_stats=teacher_ckpt["gene_stats"] if teacher_ckpt else None,
                         empty_bags=params.empty_bags)
    log.info("model %s (%s), task %s, fold %d on %s, dims %s", name, spec.name, task.name, args.fold, device,
             cohort.dims)

    train, val, test, external = (cohort.split(s) for s in ("train", "val", "test", "external"))
    model = spec.build(cohort.dims, task, params.model).to(device)
    objective = make_objective(task, [p.target for p in train], device)
    extra, monitor_from = None, 1
    if teacher_spec is not None and teacher_ckpt is not None:
        if teacher_ckpt["dims"].get("wsi") != cohort.dims.get("wsi"):
            raise PathomixInputError(f"teacher was trained on {teacher_ckpt['dims'].get('wsi')}-d features, "
                                     f"these are {cohort.dims.get('wsi')}-d; use the same encoder")
        teacher = load_teacher(teacher_ckpt, teacher_name, task, args.fold, device)
        needed = ([wsi_key(teacher_spec.mags[0])] if teacher_spec.needs_wsi else []) + (
            list(GENE_INPUTS) if teacher_spec.needs_genes else [])
        extra = distill_term(teacher_targets(teacher, train, needed, device), params.distill,
                             objective.log_prob)
        monitor_from = params.distill.warmup_epochs + 1
        log.info("distilling from %s after %d warm-up epochs (KL weight %g at T=%g, feature weight %g)",
                 teacher_name, params.distill.warmup_epochs, params.distill.kl_weight,
                 params.distill.temperature, params.distill.feature_weight)

    result = fit(model, train, val, objective, params, device, extra, monitor_from)
    _, pred_val, _ = evaluate(model, val, objective, device)
    explain = Explain(spec.tile_input, cohort.markers) if spec.tile_input else None
    _, pred_test, tables = evaluate(model, test, objective, device, explain)
    _, pred_ext, _ = evaluate(model, external, objective, device)  # external cohorts, zero-shot
    parts = [f for f in (pred_val, pred_test, pred_ext) if len(f)] or [pred_test]
    predictions = predictions_frame(pd.concat(parts, ignore_index=True), args.fold, name, task.name,
                                    read_cohorts(args.folds))
    importance = (gene_importance(model, test, objective, device, cohort.gene_stats)
                  if spec.needs_genes else None)
    meta = {"model": name, "base_model": spec.name, "teacher": teacher_name if teacher_ckpt else None,
            "task": task.name, "fold": args.fold, "dims": dict(cohort.dims),
            "params": params.to_dict(), "gene_stats": cohort.gene_stats, "bin_edges": cohort.bin_edges,
            "classes": list(task.classes), "markers": list(cohort.markers), "best_epoch": result.best_epoch}
    write_outputs(args.out, checkpoint_dict(model, meta), result.history, predictions, tables.get("attention"),
                  importance, tables.get("marker_attention") if spec.needs_mif else None)
    summary = {"seconds": time.perf_counter() - t_start, "best_epoch": result.best_epoch,
               f"test_{objective.metric_name}": objective.metric(pred_test), "n_train": len(train),
               "n_val": len(val), "n_test": len(test), "n_external": len(external)}
    log.info("%s/%s/fold%d done in %.2f s: %s", name, task.name, args.fold, summary["seconds"], summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 2 on a user-input error (message logged)."""
    args = parse_args(argv)
    setup_logging()
    if args.log_level:
        logging.getLogger().setLevel(args.log_level.upper())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(1, args.threads))
        run(args)
    except PathomixInputError as err:
        log.error("%s", err)
        return 2
    finally:  # in-process callers (tests, notebooks) get their thread count back
        torch.set_num_threads(threads)
    return 0
