"""JPEG tile decoding for extraction, side by side in one run (issue 21: ``features.gpu_decode``).

    python benchmarks/decode.py                         # synthetic 8 000² slide, CPU rows only
    python benchmarks/decode.py --device cuda           # adds the CUDA (nvjpeg) rows
    python benchmarks/decode.py --slide ../shared/data/wsi/CMU-1-Small-Region.svs

One process, one thread (the work of one DataLoader worker, or of the main process), over the same tiles:

(w) today's worker: ``TileDataset.read`` per tile (tifffile decode of the covered TIFF tiles, stitch, crop);
(s) the streams worker: bytes only (``TileDataset.region_streams`` + ``PackedStreams.pack`` per chunk);
(d) batched decode of those chunks on each device (``decode_regions``: ``decode_jpeg`` on a list, stitch and
    crop on the device; CUDA synchronised per chunk);
(s+d) both in one process, as extraction on the CPU runs it when ``gpu_decode: true`` (the sum of their times).

Prints tiles/s of each (best of ``--repeats``) and the ratios against (w). On CUDA the work moves: workers only
run (s) and the GPU runs (d), so the worker-side ratio s/w is what multiplies the decode bound of the DataLoader.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pathomix.features.extract import READ_CHUNK  # noqa: E402
from pathomix.features.jpegdecode import PackedStreams, decode_regions  # noqa: E402
from pathomix.features.tiles import SlideRef, TileDataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthslide import write_slide  # noqa: E402

log = logging.getLogger("benchmarks.decode")


def grid(width: int, height: int, size: int, offset: int, limit: int) -> np.ndarray:
    """Level-0 top-left corners of ``size`` tiles, shifted by ``offset`` px (0: aligned to 256-px TIFF tiles)."""
    coords = [(x, y) for y in range(offset, height - size + 1, size) for x in range(offset, width - size + 1, size)]
    return np.array(coords[:limit], dtype=np.int64)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def worker_today(dataset: TileDataset) -> float:
    """(w) tiles/s: each tile read and decoded on the CPU, as the DataLoader workers do today."""
    slide = dataset.handle()
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset.read(slide, i)
    return rate(len(dataset), time.perf_counter() - start)


def read_streams(dataset: TileDataset, chunk: int) -> tuple[float, list[PackedStreams]]:
    """(s) tiles/s of the bytes-only worker, and the packed chunks it produced."""
    start = time.perf_counter()
    packed = []
    for j in range(0, len(dataset), chunk):
        regions = [dataset.region_streams(i) for i in range(j, min(j + chunk, len(dataset)))]
        if any(r is None for r in regions):
            raise SystemExit("a tile is not eligible for streams: use a JPEG-tiled slide and an on-grid level")
        packed.append(PackedStreams.pack(regions))
    return rate(len(dataset), time.perf_counter() - start), packed


def decode(packed: list[PackedStreams], tile_px: int, device: torch.device) -> float:
    """(d) tiles/s of the batched decode (one ``decode_jpeg`` call per chunk, stitched and cropped)."""
    n = sum(len(p.layouts) for p in packed)
    start = time.perf_counter()
    for p in packed:
        decode_regions(p, tile_px, device)
    sync(device)
    return rate(n, time.perf_counter() - start)


def measure(dataset: TileDataset, chunk: int, devices: list[torch.device], repeats: int) -> dict[str, float]:
    """Best tiles/s of each row over ``repeats`` rounds; the rows alternate within a round, so load from other
    processes on a shared machine hits them alike."""
    _, packed = read_streams(dataset, chunk)
    for device in devices:                        # warm-up (CUDA: nvjpeg handles, kernels)
        decode_regions(packed[0], dataset.tile_px, device)
        sync(device)
    best: dict[str, float] = {}
    for _ in range(repeats):
        rows = {"w": worker_today(dataset), "s": read_streams(dataset, chunk)[0]}
        rows.update({f"d:{device.type}": decode(packed, dataset.tile_px, device) for device in devices})
        for key, value in rows.items():
            best[key] = max(best.get(key, 0.0), value)
    best["unique"] = sum(len(p.offsets) - 1 for p in packed)
    best["calls"] = len(packed)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", type=Path, default=None, help="a JPEG-tiled slide; default: a synthetic one")
    ap.add_argument("--side", type=int, default=8000, help="synthetic slide side, px at 0.5 µm/px")
    ap.add_argument("--tile", type=int, default=256, help="tile side at level 0 and at the output")
    ap.add_argument("--offset", type=int, default=0, help="shift the tile grid (unaligned reads)")
    ap.add_argument("--max-tiles", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=READ_CHUNK, help="tiles per decode call (extraction: READ_CHUNK)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: also the nvjpeg rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.slide
        if path is None:
            path = Path(tmp) / "synth.tif"
            write_slide(path, args.side, args.side, mpp=0.5, seed=3, tissue=0.9)
        ref = SlideRef("bench", str(path))
        with ref.open() as slide:
            width, height = slide.dimensions
        dataset = TileDataset(ref, grid(width, height, args.tile, args.offset, args.max_tiles), args.tile, args.tile)
        why = dataset.enable_streams()
        if why:
            raise SystemExit(f"{path}: not eligible for gpu_decode ({why})")
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if args.device == "cuda" else [])
        best = measure(dataset, args.chunk, devices, args.repeats)
        today, streams = best["w"], best["s"]
        log.info("%s: %d tiles of %d px (offset %d), %d TIFF tiles decoded in %d calls, torch threads %d, best of %d",
                 path.name, len(dataset), args.tile, args.offset, best["unique"], best["calls"], args.threads,
                 args.repeats)
        log.info("(w) today's worker, per-tile CPU decode:      %8.0f tiles/s", today)
        log.info("(s) streams worker, bytes only:               %8.0f tiles/s   s/w = %.1f", streams, streams / today)
        for device in devices:
            d = best[f"d:{device.type}"]
            both = 1.0 / (1.0 / streams + 1.0 / d)
            log.info("(d) batched decode_jpeg on %-4s:               %8.0f tiles/s   d/w = %.2f", device.type, d,
                     d / today)
            log.info("(s+d) bytes + batched decode on %-4s, 1 proc: %8.0f tiles/s   (s+d)/w = %.2f", device.type,
                     both, both / today)
        dataset.close()


if __name__ == "__main__":
    main()
