"""Peak memory of tiling and feature extraction on a large mIF panel (issue 19, item 6: "large panels stay flat").

    python benchmarks/mif_memory.py [--channels 20] [--side 14000] [--tile 256] [--workdir DIR] [--keep]
        [--workers 0] [--max-tiles 0]

1. A child process writes a synthetic pyramidal OME-TIFF: ``--channels`` x ``--side``² uint16, uncompressed,
   tiled ``--tile`` px, 4 SubIFD levels (2x … 16x), 0.5 µm/px, OME channel names (the last is ``AF``), a
   tissue disc with per-channel texture. Tiles are generated one at a time, so the writer stays small too.
   20 x 14 000² px is 7.8 GB of level-0 pixels (10.5 GB with the pyramid).
2. This process tiles it (``pathomix.tiling.stage.run``, 20x = 0.5 µm/px, 256 px) and extracts features
   from every tile (``pathomix.features.cli.main``, the test-only ``bench_tiny`` encoder of memory.py at
   32 px, so the run is about reading, not the encoder), with ``--workers`` DataLoader workers.

Printed: file size, seconds per phase, and peak RSS of this process per phase (sampled every 50 ms with psutil,
plus ``ru_maxrss``); with workers, the peak RSS summed over the process tree. Target: < 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import tifffile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import Sampler, register_tiny  # noqa: E402

MPP = 0.5
GIB, MIB = 2**30, 2**20


def tiles(channels: int, side: int, tile: int, factor: int, seed: int = 0):
    """The tiles of one pyramid level (``factor`` = its downsample), channel after channel, row-major."""
    n = side // factor
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 2000, (channels, tile, tile), dtype=np.uint16)
    yy, xx = np.mgrid[:tile, :tile]
    for c in range(channels):
        level = 200 if c == channels - 1 else 400 + 150 * (c % 7)
        for ty in range(0, n, tile):
            for tx in range(0, n, tile):
                y, x = (ty + yy) * factor - side / 2, (tx + xx) * factor - side / 2
                inside = (x * x + 1.4 * y * y) < (0.4 * side) ** 2
                yield np.where(inside, texture[c] // (1 + c % 3) + level, 20).astype(np.uint16)


def write(path: Path, channels: int, side: int, tile: int) -> None:
    names = [f"marker{c:02d}" for c in range(channels - 1)] + ["AF"]
    kw = {"tile": (tile, tile), "photometric": "minisblack", "dtype": np.uint16}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(tiles(channels, side, tile, 1), shape=(channels, side, side), subifds=4, metadata={
            "axes": "CYX", "Channel": {"Name": names}, "PhysicalSizeX": MPP, "PhysicalSizeY": MPP}, **kw)
        for k in (2, 4, 8, 16):
            tw.write(tiles(channels, side, tile, k), shape=(channels, side // k, side // k), subfiletype=1, **kw)


def phase(name: str, fn) -> tuple[float, int]:
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    sampler.stop()
    print(f"{name}: {seconds:.1f} s, peak RSS {sampler.peak_rss / MIB:.0f} MiB (process), "
          f"{sampler.peak_tree_rss / MIB:.0f} MiB (summed over the process tree)", flush=True)
    return seconds, sampler.peak_rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=20)
    p.add_argument("--side", type=int, default=14000)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the image (default: delete it at the end)")
    p.add_argument("--write-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_only:
        write(args.write_only, args.channels, args.side, args.tile)
        return
    from pathomix.features import cli as features_cli
    from pathomix.tiling.params import TilingParams
    from pathomix.tiling.stage import TilePaths, run

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mif-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    image = work / "panel.ome.tif"
    try:
        if not image.exists():
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--write-only", str(image), "--channels", str(args.channels),
                            "--side", str(args.side), "--tile", str(args.tile)], check=True)
            print(f"write: {time.perf_counter() - start:.1f} s (child process)")
        print(f"image: {image.stat().st_size / GIB:.2f} GiB, {args.channels} x {args.side}² uint16, "
              f"tiled {args.tile}, 5 levels", flush=True)
        store, qc = work / "tiles.h5", work / "qc.png"
        paths = TilePaths("panel", image, "mif", ("20x",), (MPP,), (store,), (qc,))
        phase("tiling", lambda: run(TilingParams(), paths))
        import h5py

        with h5py.File(store) as h:
            print(f"tiles: {h['coords'].shape[0]} at 20x, channels {list(h['coords'].attrs['channels'])[:3]}…")
        register_tiny(32)
        params = {"encoder": "bench_tiny", "batch_size": 64, "num_workers": args.workers, "device": "cpu"}
        argv = ["--slide-id", "panel", "--path", str(image), "--modality", "mif", "--tiles", str(store),
                "--out", str(work / "features.h5"), "--params", json.dumps(params), "--threads", "2"]

        def extract() -> None:
            if features_cli.main(argv):
                sys.exit("extraction failed")

        phase("extraction", extract)
        with h5py.File(work / "features.h5") as h:
            print(f"features: {h['features'].shape} {h['features'].dtype}")
        print(f"ru_maxrss over the whole run (this process): "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
