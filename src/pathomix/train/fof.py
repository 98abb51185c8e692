"""Training stage of the image models (``fof``, :mod:`pathomix.models.fof`): tiles in, patients out.

FoF classifies tiles (classification tasks only: its dummy class and class-score Grad-CAM have no
survival counterpart). Every tile carries its patient's label. An epoch samples ``train.fof_tiles``
tiles of each training patient, shuffles them into steps of ``train.fof_batch`` tiles (random flips and 90° turns) and
updates the EMA teacher after every step. A patient's prediction is the mean of its tiles' logits
(over up to ``train.fof_eval_tiles`` tiles); its validation loss is the task loss of that mean, on
which training stops early as for the bag models. Biomarker statuses (``train.fof_biomarkers``,
clinical columns) are read for the training patients only and serve only the MCA term.

The attention written for the report's heatmaps (head ``fof``) is, per test patient, the softmax over
its tiles of their logit for the patient's top output: the tiles that drive its prediction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pathomix.errors import PathomixInputError
from pathomix.io.sheets import CLINICAL_VOCAB, read_clinical
from pathomix.models.fof import EMATeacher, FoF
from pathomix.train.data import Cohort, Patient
from pathomix.train.images import ImageBag, TileImages, augment, batches, load_image_bags, normalise
from pathomix.train.loop import ATTENTION_COLUMNS, EarlyStopping, FitResult
from pathomix.train.objectives import Objective
from pathomix.train.optim import Adam
from pathomix.train.params import TrainParams

log = logging.getLogger(__name__)

HEAD = "fof"


@dataclass
class ImageCohort:
    """The fold's patients with tiles, their tile bags, and the tile reader."""

    patients: list[Patient]
    bags: dict[str, ImageBag]
    images: TileImages
    mag: str

    def split(self, name: str) -> list[Patient]:
        return [p for p in self.patients if p.split == name]


def image_cohort(cohort: Cohort, slides: Path, stores: Sequence[str], mag: str, image_px: int) -> ImageCohort:
    """Attach each patient's H&E tiles at ``mag``; patients without any are dropped (logged)."""
    images, bags = load_image_bags(slides, stores, [p.patient_id for p in cohort.patients], mag, image_px)
    kept = [p for p in cohort.patients if p.patient_id in bags]
    if len(kept) < len(cohort.patients):
        missing = [p.patient_id for p in cohort.patients if p.patient_id not in bags]
        log.warning("%d patients have no H&E tile at %s; skipped (e.g. %s)", len(missing), mag, missing[:3])
    if not any(p.split == "train" for p in kept):
        raise PathomixInputError(f"no training patient has H&E tiles at {mag}; check the tiling QC images")
    return ImageCohort(kept, bags, images, mag)


def biomarker_status(clinical: Path, names: Sequence[str], train: Sequence[str]) -> dict[str, dict[str, int]]:
    """{biomarker: {training patient: status index}} from the clinical sheet; unknown statuses are left out.

    Known vocabularies (idh, codel_1p19q, cdkn2a) keep their order; any other column is categorical."""
    clin = read_clinical(clinical)
    out: dict[str, dict[str, int]] = {}
    for name in names:
        if name not in clin.columns or clin[name].isna().all():
            log.warning("FoF biomarker %r has no values in %s; its projector is not trained", name, clinical)
            continue
        values = clin.loc[[p for p in train if p in clin.index], name].dropna().astype(str)
        vocab = CLINICAL_VOCAB.get(name) or tuple(sorted(values.unique()))
        out[name] = {p: vocab.index(v) for p, v in values.items() if v in vocab}
        log.info("FoF biomarker %s: %s over %d training patients", name,
                 {k: int(v) for k, v in values.value_counts().sort_index().items()}, len(values))
    return out


def _tile_task_loss(objective: Objective, targets: Sequence[Mapping[str, float]]):
    """(B, n) logits of tiles whose patients have ``targets`` (or of the tiles ``rows`` selects) → the
    mean task loss over those tiles."""
    def loss(logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        picked = targets if rows is None else [t for t, keep in zip(targets, rows.tolist(), strict=True) if keep]
        return torch.stack([objective.loss(logits[j:j + 1], t) for j, t in enumerate(picked)]).mean()
    return loss


def _train_epoch(model: FoF, teacher: EMATeacher, data: ImageCohort, train: Sequence[Patient], objective: Objective,
                 markers: Mapping[str, Mapping[str, int]], opt: Adam, params: TrainParams,
                 device: torch.device, rng: np.random.Generator, generator: torch.Generator) -> dict[str, float]:
    """One epoch → the mean of the loss and of each of its terms over the steps."""
    model.train()
    p = params.model
    picks = []
    for j, patient in enumerate(train):
        bag = data.bags[patient.patient_id]
        rows = rng.choice(len(bag), size=min(p.fof_tiles, len(bag)), replace=False)
        picks.extend((bag.slide[r], bag.tile_index[r], j) for r in rows)
    picks = np.array(picks, dtype=np.int64)[rng.permutation(len(picks))]
    losses = []
    for tiles, rows in batches(data.images, picks, p.fof_batch, p.fof_workers):
        owners = [train[int(k)] for k in picks[rows.numpy(), 2]]
        targets = [o.target for o in owners]
        cam_index = torch.tensor([int(t["y"]) for t in targets], device=device)  # Grad-CAM explains the true class
        status = {m: torch.tensor([by_patient.get(o.patient_id, -1) for o in owners], device=device)
                  for m, by_patient in markers.items()}
        status.update({m: torch.full((len(owners),), -1, device=device)
                       for m in model.projectors.projectors if m not in status})
        terms = model.training_loss(augment(normalise(tiles, device), generator), cam_index,
                                    _tile_task_loss(objective, targets), status, teacher)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        teacher.update(model)
        losses.append({"train_loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}})
    return pd.DataFrame(losses).mean().to_dict()


@torch.no_grad()
def tile_logits(model: FoF, data: ImageCohort, patients: Sequence[Patient], params: TrainParams,
                device: torch.device) -> dict[str, tuple[np.ndarray, torch.Tensor]]:
    """{patient: (bag positions read, (n, n_outputs) logits of those tiles)}."""
    model.eval()
    p = params.model
    chosen = {q.patient_id: data.bags[q.patient_id].spread(p.fof_eval_tiles) for q in patients}
    picks = np.array([(data.bags[pid].slide[r], data.bags[pid].tile_index[r], j)
                      for j, (pid, rows) in enumerate(chosen.items()) for r in rows], dtype=np.int64).reshape(-1, 3)
    owner, logits = [], []
    for tiles, rows in batches(data.images, picks, max(p.fof_batch, 64), p.fof_workers):
        logits.append(model(normalise(tiles, device))["logits"][:, :model.n_outputs].float().cpu())
        owner.append(picks[rows.numpy(), 2])
    all_logits = torch.cat(logits) if logits else torch.zeros(0, model.n_outputs)
    all_owner = np.concatenate(owner) if owner else np.zeros(0, np.int64)
    return {pid: (rows, all_logits[torch.from_numpy(all_owner == j)]) for j, (pid, rows) in enumerate(chosen.items())}


def evaluate(model: FoF, data: ImageCohort, patients: Sequence[Patient], objective: Objective, params: TrainParams,
             device: torch.device, attention: bool = False) -> tuple[float, pd.DataFrame, pd.DataFrame | None]:
    """→ (mean patient task loss, one prediction row per patient, attention frame or None)."""
    per_tile = tile_logits(model, data, patients, params, device)
    losses, rows, frames = [], [], []
    for q in patients:
        read, logits = per_tile[q.patient_id]
        mean = logits.mean(dim=0, keepdim=True)
        losses.append(float(objective.loss(mean, q.target)))
        rows.append({"patient_id": q.patient_id, "split": q.split, **objective.rows(mean, q.target)})
        if attention:
            bag = data.bags[q.patient_id]
            weight = torch.softmax(logits[:, int(mean.argmax())], dim=0).numpy()
            frames.append(pd.DataFrame({"patient_id": q.patient_id, "slide_id": bag.slide_ids[read].astype(str),
                                        "mag": data.mag, "tile_index": bag.tile_index[read], "weight": weight,
                                        "head": HEAD}))
    pred = pd.DataFrame(rows, columns=["patient_id", "split", *objective.columns])
    att = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(ATTENTION_COLUMNS))
           ) if attention else None
    return (float(np.mean(losses)) if losses else float("nan")), pred, att


def fit(model: FoF, data: ImageCohort, objective: Objective, clinical: Path, params: TrainParams,
        device: torch.device) -> FitResult:
    """Train with Adam and the EMA teacher; early-stop on the validation patients' task loss."""
    train, val = data.split("train"), data.split("val")
    markers = biomarker_status(clinical, params.model.fof_biomarkers, [p.patient_id for p in train])
    teacher = EMATeacher(model, params.model.fof_ema)
    opt = Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    rng = np.random.default_rng(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    monitor = val or train
    if not val:
        log.warning("no validation patients; early stopping on the training set's loss")
    stopper = EarlyStopping(model, params.patience)
    history = []
    n_tiles = sum(min(params.model.fof_tiles, len(data.bags[p.patient_id])) for p in train)
    for epoch in range(1, params.epochs + 1):
        t0 = time.perf_counter()
        terms = _train_epoch(model, teacher, data, train, objective, markers, opt, params, device,
                             rng, generator)
        train_loss = terms.pop("train_loss")
        val_loss, pred, _ = evaluate(model, data, monitor, objective, params, device)
        metric = objective.metric(pred)
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_metric": metric,
                        "lr": float(opt.lr), "seconds": seconds, **{f"loss_{k}": v for k, v in terms.items()}})
        log.info("epoch %d/%d  train_loss %.4f (%s)  val_loss %.4f  val_%s %.3f  (%.2f s, %.0f training tiles/s)",
                 epoch, params.epochs, train_loss, " ".join(f"{k} {v:.3f}" for k, v in terms.items()), val_loss,
                 objective.metric_name, metric, seconds, n_tiles / max(seconds, 1e-9))
        if stopper.update(epoch, train_loss, val_loss):
            break
    return FitResult(pd.DataFrame(history), stopper.restore())
