"""Peak memory of feature extraction on a >= 100 000-tile slide, and RSS across 50 slides in one process.

    python benchmarks/memory.py [--big 12800] [--tile-px 32] [--slides 50] [--small 2400]
        [--encoder bench_tiny] [--batch 256] [--workers 2] [--workdir DIR]

What runs is the CLI's path, in this process: ``pathomix.features.cli.main`` per slide
(``build_encoder`` → ``TileDataset`` → ``extract_tiles`` with DataLoader workers →
``write_features``). The slides are synthetic pyramidal JPEG TIFFs at 0.5 µm/px, mostly tissue
(``synthslide.py``), tiled first in a child process with ``python -m pathomix.tiling`` at
``--tile-px`` px and 0.5 µm/px (32 px by default: 100 000+ tiles from a 12 800² px image).

So that 100 000 tiles fit in minutes on 2 CPU cores, the default encoder ``bench_tiny`` is a
**test-only encoder registered here** (two strided 3x3 convolutions + average pool, 64-d, input
32 px: no resize); ``--encoder resnet18_trunc`` runs the real one (resizes to 224 px: slow on CPU).

Memory is sampled every 50 ms: RSS of this process, and PSS (proportional set size: shared pages
counted once) of this process plus its DataLoader workers. Printed: peak RSS of this process,
peak PSS of the process tree, peak RSS summed over the tree (an upper bound), then the RSS of
this process after each of the ``--slides`` slides and its least-squares slope (MiB per slide)
over all slides and over the last half (after the allocator's one-off steps); ``--malloc-trim``
also returns freed heap to the system after each slide and prints RSS after that.
Targets (issue "Speed"): peak < 4 GiB, no growth.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")   # no progress bars in the printed numbers

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pathomix.features import cli as features_cli  # noqa: E402
from pathomix.features.encoders import ENCODERS, EncoderSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthslide import write_slide  # noqa: E402

MPP = 0.5
MIB = 2**20


class TinyEncoder(nn.Module):
    """Test-only encoder: (B, 3, 32, 32) → (B, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 64, 3, 2, 1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def register_tiny(input_px: int) -> None:
    ENCODERS["bench_tiny"] = EncoderSpec("bench_tiny", 64, input_px, TinyEncoder,
                                         description="benchmarks/memory.py only: 2 convs, 64-d")


class Sampler(threading.Thread):
    """Peak RSS of this process, and peak PSS / RSS summed over it and its children."""

    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc, self.period = psutil.Process(), period
        self.peak_rss = self.peak_tree_pss = self.peak_tree_rss = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        rss = self.proc.memory_info().rss
        tree_rss, tree_pss = rss, self.proc.memory_full_info().pss
        for child in self.proc.children(recursive=True):
            try:
                tree_rss += child.memory_info().rss
                tree_pss += child.memory_full_info().pss
            except psutil.Error:   # a worker that just exited
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_tree_rss = max(self.peak_tree_rss, tree_rss)
        self.peak_tree_pss = max(self.peak_tree_pss, tree_pss)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def prepare(work: Path, args: argparse.Namespace) -> list[tuple[str, Path, Path]]:
    """Write the slides and their coords stores; → [(slide_id, slide path, coords store)]."""
    specs = [("big", args.big, args.big, 1)]
    rng = np.random.default_rng(7)
    for i in range(args.slides):   # sizes vary so that any per-slide leak would vary too
        w, h = (int(args.small * f) for f in rng.uniform(0.75, 1.25, 2))
        specs.append((f"S{i:02d}", w, h, 100 + i))
    out = []
    params = json.dumps({"tile_px": args.tile_px, "mask_mpp": 8.0, "min_tissue_fraction": 0.5,
                         "min_region_um2": 20000})
    for slide_id, w, h, seed in specs:
        path, store = work / f"{slide_id}.tif", work / "tiles" / f"{slide_id}.h5"
        if not path.exists():
            write_slide(path, w, h, mpp=MPP, seed=seed, tissue=0.9)
        if not store.exists():
            subprocess.run([sys.executable, "-m", "pathomix.tiling", "--slide-id", slide_id, "--path", str(path),
                            "--modality", "he", "--mag", "20x", "--target-mpp", str(MPP), "--params", params,
                            "--out", str(store), "--qc", str(work / "qc" / f"{slide_id}.png")],
                           check=True, env=dict(os.environ, PATHOMIX_LOGLEVEL="WARNING"))
        out.append((slide_id, path, store))
    return out


def extract(slide_id: str, path: Path, store: Path, work: Path, args: argparse.Namespace) -> float:
    """One slide through the CLI's code path; → seconds."""
    params = {"encoder": args.encoder, "batch_size": args.batch, "num_workers": args.workers, "device": "cpu"}
    start = time.perf_counter()
    rc = features_cli.main(["--slide-id", slide_id, "--path", str(path), "--modality", "he", "--tiles", str(store),
                            "--out", str(work / "features" / f"{slide_id}.h5"), "--params", json.dumps(params),
                            "--threads", str(args.threads)])
    if rc:
        sys.exit(f"extraction of {slide_id} failed ({rc})")
    return time.perf_counter() - start


def slope(y: np.ndarray) -> float:
    return float(np.polyfit(np.arange(len(y)), y, 1)[0]) if len(y) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=int, default=12800, help="side of the big slide, px at 0.5 µm/px")
    ap.add_argument("--small", type=int, default=2400, help="typical side of the --slides slides, px")
    ap.add_argument("--slides", type=int, default=50)
    ap.add_argument("--tile-px", type=int, default=32)
    ap.add_argument("--encoder", default="bench_tiny")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CLI's --threads)")
    ap.add_argument("--malloc-trim", action="store_true",
                    help="after each slide also call glibc's malloc_trim(0) and print RSS after it")
    ap.add_argument("--workdir", type=Path, default=None, help="keep slides and stores here (default: temp)")
    args = ap.parse_args()
    os.environ.setdefault("PATHOMIX_LOGLEVEL", "WARNING")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pathomix.features.encoders").setLevel(logging.ERROR)   # random-init, said below
    register_tiny(args.tile_px)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        (work / "features").mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        slides = prepare(work, args)
        print(f"prepared {len(slides)} slides in {time.perf_counter() - start:.0f} s (generation + tiling, "
              "child processes)")
        gc.collect()
        base = psutil.Process().memory_info().rss
        sampler = Sampler()
        sampler.start()
        slide_id, path, store = slides[0]
        n_big = _n_tiles(store)
        seconds = extract(slide_id, path, store, work, args)
        sampler.sample()
        big = (sampler.peak_rss, sampler.peak_tree_pss, sampler.peak_tree_rss)
        print(f"device: CPU ({torch.get_num_threads()} torch threads), encoder {args.encoder} (random init), "
              f"batch {args.batch}, {args.workers} workers")
        print(f"big slide: {n_big} tiles of {args.tile_px} px in {seconds:.0f} s ({n_big / seconds:.0f} tiles/s); "
              f"RSS before {base / MIB:.0f} MiB; peak RSS {big[0] / MIB:.0f} MiB (this process), peak PSS "
              f"{big[1] / MIB:.0f} MiB (process + workers), peak RSS summed over them {big[2] / MIB:.0f} MiB")
        after, trimmed, tiles = [], [], 0
        for slide_id, path, store in slides[1:]:
            tiles += _n_tiles(store)
            extract(slide_id, path, store, work, args)
            gc.collect()
            after.append(psutil.Process().memory_info().rss / MIB)
            if args.malloc_trim:   # freed heap glibc keeps is not a leak: hand it back and measure again
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                trimmed.append(psutil.Process().memory_info().rss / MIB)
        sampler.stop()
        rss = np.array(after)
    if len(rss):
        print(f"{len(rss)} slides ({tiles} tiles) in one process: RSS after each (MiB): "
              + " ".join(f"{v:.0f}" for v in rss))
        half = len(rss) // 2
        print(f"RSS slope {slope(rss):+.3f} MiB/slide over all, {slope(rss[half:]):+.3f} MiB/slide over the last "
              f"{len(rss) - half}; first {rss[0]:.0f}, slide {half + 1} {rss[half]:.0f}, last {rss[-1]:.0f}, "
              f"max {rss.max():.0f} MiB")
        if trimmed:
            t = np.array(trimmed)
            print("RSS after malloc_trim(0) (MiB): " + " ".join(f"{v:.0f}" for v in t)
                  + f"; slope {slope(t):+.3f} MiB/slide over all, {slope(t[half:]):+.3f} over the last {len(t) - half}")
    print(f"overall peak RSS {sampler.peak_rss / MIB:.0f} MiB (this process), peak PSS "
          f"{sampler.peak_tree_pss / MIB:.0f} MiB (with workers); target < 4096 MiB")


def _n_tiles(store: Path) -> int:
    import h5py

    with h5py.File(store, "r") as h:
        return int(h["coords"].shape[0])


if __name__ == "__main__":
    main()
