"""Feature extraction throughput, measured side by side in one run (DESIGN: no timed asserts).

    python benchmarks/extract.py [--slides demo_data/slides.tsv] [--results results] [--encoder resnet18_trunc]

(a) model-only bound: the encoder on tiles already in memory (uint8, same transform);
(b) ours end to end: ``extract_tiles`` (DataLoader workers, device-side resize/normalise);
(c) a CLAM-style loop: one process reads a tile, converts it with PIL/torchvision-style
    per-tile transforms, stacks a batch and runs the model.
Prints tiles/s for each and the ratios b/a and b/c. Needs the demo's tiles (run the
workflow once). Numbers depend on the machine: record the device with them.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pathomix.features.encoders import build_encoder
from pathomix.features.extract import DeviceTransform, ExtractParams, extract_tiles
from pathomix.features.tiles import SlideRef, TileDataset
from pathomix.io.h5store import read_coords
from pathomix.io.sheets import read_slides
from pathomix.paths import tiles as tiles_path


def datasets(args: argparse.Namespace) -> list[TileDataset]:
    sheet = read_slides(args.slides)
    out = []
    for row in sheet[sheet.modality == "he"].itertuples():
        coords, attrs = read_coords(tiles_path(args.results, args.mag, row.slide_id))
        ref = SlideRef(row.slide_id, row.path, "he", None if pd.isna(row.mpp) else row.mpp)
        out.append(TileDataset(ref, coords, int(attrs["patch_size_level0"]), int(attrs["patch_size"])))
    return out[: args.max_slides]


@torch.inference_mode()
def model_only(model, spec, tiles: torch.Tensor, device, batch: int) -> float:
    transform = DeviceTransform(spec).to(device)
    start = time.perf_counter()
    for i in range(0, len(tiles), batch):
        model(transform(tiles[i:i + batch].to(device), False))
    return len(tiles) / (time.perf_counter() - start)


@torch.inference_mode()
def clam_style(model, spec, sets: list[TileDataset], device, batch: int) -> float:
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    n, start = 0, time.perf_counter()
    for ds in sets:
        slide = ds.ref.open()
        buf = []
        for x, y in ds.coords:
            img = Image.fromarray(slide.read_tile(int(x), int(y), ds.size_level0, ds.tile_px))
            img = img.resize((spec.input_px, spec.input_px), Image.BILINEAR)
            t = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)
            buf.append((t - mean) / std)
            if len(buf) == batch:
                model(torch.stack(buf).to(device))
                n, buf = n + len(buf), []
        if buf:
            model(torch.stack(buf).to(device))
            n += len(buf)
        slide.close()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", default="demo_data/slides.tsv")
    ap.add_argument("--results", default="results")
    ap.add_argument("--mag", default="20x")
    ap.add_argument("--encoder", default="resnet18_trunc")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-slides", type=int, default=8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = ExtractParams(encoder=args.encoder, batch_size=args.batch, num_workers=args.workers)
    device = params.resolve_device()
    model, spec, _ = build_encoder(args.encoder, None)
    model = model.to(device)
    sets = datasets(args)
    n = sum(len(d) for d in sets)
    preload = torch.stack([d[i] for d in sets for i in range(len(d))])
    model_only(model, spec, preload[: args.batch], device, args.batch)  # warm-up
    a = model_only(model, spec, preload, device, args.batch)
    start = time.perf_counter()
    for d in sets:
        extract_tiles(d, model, spec, params)
    b = n / (time.perf_counter() - start)
    c = clam_style(model, spec, sets, device, args.batch)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; encoder {args.encoder}; {len(sets)} slides, {n} tiles at {args.mag}")
    print(f"(a) model only     {a:8.1f} tiles/s")
    print(f"(b) ours           {b:8.1f} tiles/s")
    print(f"(c) CLAM-style     {c:8.1f} tiles/s")
    print(f"b/a = {b / a:.2f}   b/c = {b / c:.2f}")


if __name__ == "__main__":
    main()
