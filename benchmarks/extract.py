"""Feature extraction throughput, measured side by side in one run (DESIGN: no timed asserts).

    python benchmarks/extract.py                                   # the demo's slides (run the workflow first)
    python benchmarks/extract.py --synthetic 8 --side 27000 --encoder resnet50_trunc --workers 16 --batch 512

(a) model-only bound: the encoder on tiles already on the device (uint8), same transform,
    precision and batch size as (b);
(r) reading only: the DataLoader alone (workers with their own slide handles read, decode and hand
    over chunks of tiles); the decode bound of this machine;
(b) ours end to end: ``extract_slides`` (one DataLoader over every slide: workers start once and read
    the next slide early; two pinned staging buffers, device-side resize/normalise, channels-last,
    AMP on CUDA), plus each feature-store write; (b1) the same with one loader per slide
    (``extract_tiles``), as a workflow job per slide runs it;
(c) a CLAM-style loop on the first ``--clam-tiles`` tiles: one process reads a tile, converts it
    with PIL + per-tile normalisation, stacks a batch and runs the model (same precision as ours,
    so the ratio measures the pipeline, not fp16 vs fp32).
Prints tiles/s for each, the ratios b/a and b/c, the per-slide fixed cost (open + tissue mask +
coords store, and the feature-store write) and slides/hour for tiling + extraction of the slides.
``--cli`` also times ``python -m pathomix.features`` as the workflow runs it (one process per slide:
interpreter start, imports, CUDA context, encoder build) for the first two slides.

``--synthetic N`` writes N synthetic pyramidal JPEG TIFFs (``synthslide.py``, 0.5 µm/px, mostly
tissue: ``--side`` 27 000 px gives about 10 000 tiles of 256 px at 20x) and tiles them first.
Numbers depend on the machine: record the device with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")   # no progress bars in the printed numbers

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from pathomix.features.encoders import build_encoder  # noqa: E402
from pathomix.features.extract import READ_CHUNK, BatchEncoder, ExtractParams, extract_slides, extract_tiles  # noqa: E402
from pathomix.features.tiles import SlideChunks, SlideRef, TileDataset  # noqa: E402
from pathomix.io.h5store import read_coords, write_features  # noqa: E402
from pathomix.io.sheets import read_slides  # noqa: E402
from pathomix.io.slide import open_slide  # noqa: E402
from pathomix.paths import tiles as tiles_path  # noqa: E402
from pathomix.tiling import TilingParams, tile_slide  # noqa: E402
from pathomix.tiling.stage import write_outputs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthslide import write_slide  # noqa: E402

MPP = 0.5


def demo_datasets(args: argparse.Namespace) -> list[TileDataset]:
    sheet = read_slides(args.slides)
    out = []
    for row in sheet[sheet.modality == "he"].itertuples():
        coords, attrs = read_coords(tiles_path(args.results, args.mag, row.slide_id))
        ref = SlideRef(row.slide_id, row.path, "he", None if pd.isna(row.mpp) else row.mpp)
        out.append(TileDataset(ref, coords, int(attrs["patch_size_level0"]), int(attrs["patch_size"])))
    return out[: args.max_slides]


def _write(job: tuple[Path, int, int]) -> None:
    path, side, seed = job
    if not path.exists():
        write_slide(path, side, side, mpp=MPP, seed=seed, tissue=0.9)


def synthetic_datasets(work: Path, args: argparse.Namespace) -> tuple[list[TileDataset], float]:
    """Write and tile ``args.synthetic`` slides; → (datasets, mean seconds to open + mask + write coords)."""
    jobs = [(work / f"S{i:03d}.tif", args.side, 100 + i) for i in range(args.synthetic)]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        list(pool.map(_write, jobs))
    logging.warning("wrote %d synthetic slides in %.0f s", len(jobs), time.perf_counter() - start)
    out, seconds = [], []
    for path, _, _ in jobs:
        t0 = time.perf_counter()
        slide_id, store = path.stem, work / "tiles" / f"{path.stem}.h5"
        with open_slide(path, modality="he", slide_id=slide_id) as slide:
            result = tile_slide(slide, MPP, TilingParams(), "20x")
            write_outputs(slide, result, store, work / "qc" / f"{slide_id}.png")
        seconds.append(time.perf_counter() - t0)
        coords, attrs = read_coords(store)
        out.append(TileDataset(SlideRef(slide_id, str(path), "he"), coords, int(attrs["patch_size_level0"]),
                               int(attrs["patch_size"])))
    return out, float(np.mean(seconds))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def model_only(encode: BatchEncoder, tiles: torch.Tensor, batch: int, min_tiles: int = 16384,
               max_seconds: float = 5.0) -> float:
    """Tiles/s of transform + encoder + copy of the features to the host, tiles already on the device;
    passes over ``tiles`` until ``min_tiles`` were encoded or ``max_seconds`` passed."""
    n, start = 0, time.perf_counter()
    while n < min_tiles and time.perf_counter() - start < max_seconds:
        for i in range(0, len(tiles), batch):
            encode(tiles[i:i + batch])
            n += len(tiles[i:i + batch])
    _sync(encode.device)
    return n / (time.perf_counter() - start)


def ours(sets: list[TileDataset], encode: BatchEncoder, spec, params: ExtractParams,
         work: Path) -> tuple[float, float, float]:
    """All slides through one loader (``extract_slides``), each store written as its slide completes;
    → (tiles/s, total seconds incl. store writes, mean seconds per feature-store write)."""
    writes = []
    start = time.perf_counter()
    for d, result in zip(sets, extract_slides(sets, encode.model, spec, params, encoder=encode), strict=True):
        t1 = time.perf_counter()
        write_features(work / "features" / f"{d.ref.slide_id}.h5", d.coords, {"patch_size": d.tile_px},
                       result.features, {"encoder": spec.name, "encoder_weights_sha256": "random-init",
                                         "precision": result.precision})
        writes.append(time.perf_counter() - t1)
    total = time.perf_counter() - start
    return sum(len(d) for d in sets) / (total - sum(writes)), total, float(np.mean(writes))


def per_slide(sets: list[TileDataset], encode: BatchEncoder, spec, params: ExtractParams) -> float:
    """Tiles/s with one loader per slide (``extract_tiles``: workers start for every slide), as one
    workflow job per slide runs it."""
    start = time.perf_counter()
    for d in sets:
        extract_tiles(d, encode.model, spec, params, encoder=encode)
    return sum(len(d) for d in sets) / (time.perf_counter() - start)


def read_only(sets: list[TileDataset], params: ExtractParams) -> float:
    """Tiles/s of the loader alone (workers reading, decoding and handing over chunks; nothing encoded)."""
    for d in sets:
        d.prepare()
    loader = DataLoader(SlideChunks(sets, READ_CHUNK), batch_size=None, num_workers=params.num_workers,
                        prefetch_factor=4 if params.num_workers else None)
    start, n = time.perf_counter(), 0
    for chunk in loader:
        n += len(chunk)
    for d in sets:
        d.close()
    return n / (time.perf_counter() - start)


@torch.inference_mode()
def clam_style(encode: BatchEncoder, spec, sets: list[TileDataset], batch: int, max_tiles: int) -> float:
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    n, start = 0, time.perf_counter()
    for ds in sets:
        slide = ds.ref.open()
        buf = []
        for x, y in ds.coords[: max_tiles - n]:
            img = Image.fromarray(slide.read_tile(int(x), int(y), ds.size_level0, ds.tile_px))
            img = img.resize((spec.input_px, spec.input_px), Image.BILINEAR)
            t = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)
            buf.append((t - mean) / std)
            if len(buf) == batch:
                encode.model(torch.stack(buf).to(encode.device).contiguous(memory_format=torch.channels_last))
                n, buf = n + len(buf), []
        if buf:
            encode.model(torch.stack(buf).to(encode.device))
            n += len(buf)
        slide.close()
        if n >= max_tiles:
            break
    _sync(encode.device)
    return n / (time.perf_counter() - start)


def cli_seconds(sets: list[TileDataset], params: ExtractParams, work: Path) -> list[float]:
    """Wall seconds of ``python -m pathomix.features`` per slide, as one workflow job runs it."""
    out = []
    for d in sets[:2]:
        cmd = [sys.executable, "-m", "pathomix.features", "--slide-id", d.ref.slide_id, "--path", d.ref.path,
               "--tiles", str(work / "tiles" / f"{d.ref.slide_id}.h5"),
               "--out", str(work / "cli" / f"{d.ref.slide_id}.h5"),
               "--params", json.dumps({k: getattr(params, k)
                                       for k in ("encoder", "batch_size", "num_workers", "compile")})]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=dict(os.environ, PATHOMIX_LOGLEVEL="WARNING"))
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", default="demo_data/slides.tsv")
    ap.add_argument("--results", default="results")
    ap.add_argument("--mag", default="20x")
    ap.add_argument("--max-slides", type=int, default=8)
    ap.add_argument("--synthetic", type=int, default=0, help="write and tile this many synthetic slides instead")
    ap.add_argument("--side", type=int, default=27000, help="synthetic slide side, px at 0.5 µm/px")
    ap.add_argument("--workdir", type=Path, default=None, help="keep synthetic slides and stores here")
    ap.add_argument("--encoder", default="resnet18_trunc")
    ap.add_argument("--batch", default="64", help="batch size, or auto (from free GPU memory)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder (features.compile)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the main process (default: torch's; the workflow passes the rule's threads)")
    ap.add_argument("--bound-tiles", type=int, default=4096, help="tiles preloaded on the device for (a)")
    ap.add_argument("--clam-tiles", type=int, default=2048, help="tiles read by the CLAM-style loop (c)")
    ap.add_argument("--cli", action="store_true", help="also time the per-slide CLI process on two slides")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch if args.batch == "auto" else int(args.batch)
    params = ExtractParams(encoder=args.encoder, batch_size=batch, num_workers=args.workers,
                           precision=args.precision, compile=args.compile)
    device = params.resolve_device()
    model, spec, _ = build_encoder(args.encoder, None, allow_random_init=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        (work / "features").mkdir(parents=True, exist_ok=True)
        tiling_s = float("nan")
        if args.synthetic:
            sets, tiling_s = synthetic_datasets(work, args)
        else:
            sets = demo_datasets(args)
        n = sum(len(d) for d in sets)
        encode = BatchEncoder(model, spec, params, 0, sets[0].tile_px)
        first = sets[0]
        with first.ref.open() as slide:
            preload = torch.stack([first.read(slide, i % len(first)) for i in range(min(args.bound_tiles, n))])
        preload = preload.to(device)
        bs = encode.batch_size
        t0 = time.perf_counter()
        for size in sorted({bs, *(1 << k for k in range(bs.bit_length()))} - {0}):  # warm-up: cuDNN autotune,
            model_only(encode, preload[:size], size, 2 * size)                     # AMP casts, compile per bucket
        warm = time.perf_counter() - t0
        a = model_only(encode, preload, bs)
        r = read_only(sets, params)
        b, total_s, write_s = ours(sets, encode, spec, params, work)
        b1 = per_slide(sets, encode, spec, params)
        c = clam_style(encode, spec, sets, bs, args.clam_tiles)
        cli = cli_seconds(sets, params, work) if args.cli else []
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    name += f" ({torch.get_num_threads()} torch threads in the main process)"
    slide_s = total_s / len(sets) + (tiling_s if args.synthetic else 0.0)
    print(f"device: {name}; {os.cpu_count()} CPU cores; encoder {args.encoder} ({params.resolve_precision(device)}); "
          f"batch {encode.batch_size}{' (auto)' if args.batch == 'auto' else ''}; {args.workers} workers; "
          f"{len(sets)} slides, {n} tiles at {args.mag}; compile {args.compile} (warm-up {warm:.1f} s)")
    print(f"(a) model only     {a:9.1f} tiles/s")
    print(f"(r) reading only   {r:9.1f} tiles/s  (the loader alone: {args.workers} workers, nothing encoded)")
    print(f"(b) ours           {b:9.1f} tiles/s  (all slides through one loader: next slide read early)")
    print(f"(b1) ours per slide{b1:9.1f} tiles/s  (a loader per slide, as one workflow job per slide)")
    print(f"(c) CLAM-style     {c:9.1f} tiles/s  (first {min(args.clam_tiles, n)} tiles)")
    print(f"b/a = {b / a:.2f}   b/c = {b / c:.2f}   b1/a = {b1 / a:.2f}   r/a = {r / a:.2f}")
    print(f"per-slide fixed cost: open + mask + coords store {tiling_s:.2f} s; feature-store write {write_s:.3f} s")
    print(f"tiling + extraction: {slide_s:.2f} s per slide ({n / len(sets):.0f} tiles) -> "
          f"{3600 / slide_s:.0f} slides/hour in one process")
    if cli:
        print("per-slide CLI process (python -m pathomix.features): "
              + ", ".join(f"{s:.1f} s" for s in cli) + f" -> {3600 / np.mean(cli):.0f} slides/hour")


if __name__ == "__main__":
    main()
