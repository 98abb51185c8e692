"""Training throughput of the DMSF teacher (and student) on bags of 10 000 tokens, and where the time goes.

    python benchmarks/train_speed.py [--patients 32] [--tiles 10000] [--dim 1024] [--epochs 3]

Synthetic patients (random features; bags of ``--tiles`` tokens at 20x and a quarter of that at
10x, as the tile grid gives; genes split into HVG/tumour/TME subspaces) are trained with the
real epoch loop (``pathomix.train.loop._train_epoch``: Adam, aux losses, branch losses, CGC),
``max_tiles`` = ``--tiles`` so no bag is subsampled. Printed per model: slides/s per epoch
(median over epochs after the first), and the split of one step into host→device copy,
forward, backward (+ CGC's extra backward passes) and optimiser step, timed with
synchronisation on CUDA. Record the device with the numbers.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch

from pathomix.models import MODELS, wsi_key
from pathomix.models.spec import ModelParams
from pathomix.tasks import get_task
from pathomix.train.cgc import branch_losses
from pathomix.train.data import Patient
from pathomix.train.loop import _coordinator, _train_epoch, batch_inputs, stage_on_device
from pathomix.train.objectives import make_objective
from pathomix.train.optim import Adam
from pathomix.train.params import TrainParams, resolve_device

GENES = {"genes": 600, "genes_tumour": 250, "genes_tme": 250}


def patients(n: int, tiles: int, dim: int, seed: int = 0) -> list[Patient]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        genes = torch.randn(GENES["genes"], generator=g)
        inputs = {wsi_key("20x"): torch.randn(tiles, dim, generator=g),
                  wsi_key("10x"): torch.randn(max(1, tiles // 4), dim, generator=g),
                  "genes": genes, "genes_tumour": genes[:250], "genes_tme": genes[250:500]}
        out.append(Patient(f"P{i:03d}", "train", {"y": i % 3}, inputs))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_split(model, objective, params: TrainParams, pts: list[Patient], device: torch.device) -> dict[str, float]:
    """Mean seconds per step of each phase, each phase synchronised on its own."""
    opt = Adam(model.parameters(), lr=params.lr)
    coordinator = _coordinator(model, objective, params)
    times = {"copy": [], "forward": [], "backward": [], "step": []}
    model.train()
    for p in pts:
        t0 = time.perf_counter()
        x = batch_inputs(p, device, params.max_tiles)
        _sync(device)
        t1 = time.perf_counter()
        out = model(x)
        loss = objective.loss(out["logits"], p.target) + sum(out["aux"].values())
        _sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if coordinator is not None:
            coordinator.backward(loss, out, p.target)
        else:
            (loss + sum(branch_losses(objective, out, p.target).values())).backward()
        _sync(device)
        t3 = time.perf_counter()
        opt.step()
        _sync(device)
        t4 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[k].append(v)
    return {k: float(np.median(v[1:] or v)) for k, v in times.items()}


def run(name: str, cgc: bool, args: argparse.Namespace, device: torch.device) -> None:
    task = get_task("diagnosis")
    params = TrainParams(max_tiles=args.tiles, cgc=cgc, model=ModelParams(hidden=args.hidden))
    dims = {"wsi": args.dim, **GENES}
    torch.manual_seed(0)
    model = MODELS[name].build(dims, task, params.model).to(device)
    objective = make_objective(task, [{"y": 0}, {"y": 1}, {"y": 2}], device)
    pts = patients(args.patients, args.tiles, args.dim)
    staged = stage_on_device(pts, device) if args.stage else False
    opt = Adam(model.parameters(), lr=params.lr)
    coordinator = _coordinator(model, objective, params)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    epochs = []   # the student is timed without its teacher's distillation term
    for epoch in range(1, args.epochs + 1):
        _sync(device)
        t0 = time.perf_counter()
        _train_epoch(model, pts, objective, opt, params, device, rng, gen, None, epoch, coordinator)
        _sync(device)
        epochs.append(time.perf_counter() - t0)
    rate = len(pts) / statistics.median(epochs[1:] or epochs)
    split = step_split(model, objective, params, pts[: min(8, len(pts))], device)
    total = sum(split.values())
    mem = f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
    print(f"{name:13s} cgc={'on ' if cgc and coordinator else 'off'} bags {'on GPU' if staged else 'on host'} "
          f"{rate:7.2f} slides/s "
          f"({args.tiles} + {args.tiles // 4} tokens, D={args.dim}); step {1000 * total:.1f} ms = "
          + ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in split.items()) + mem)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=32)
    ap.add_argument("--tiles", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stage", action=argparse.BooleanOptionalAction, default=True,
                    help="keep the bags on the GPU (what fit() does when they fit); --no-stage copies every step")
    ap.add_argument("--models", nargs="+", default=["dmsf_teacher", "dmsf_student", "abmil"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.patients} patients per epoch, {args.epochs} epochs")
    for model in args.models:
        run(model, True, args, device)
        if model == "dmsf_teacher":
            run(model, False, args, device)


if __name__ == "__main__":
    main()
