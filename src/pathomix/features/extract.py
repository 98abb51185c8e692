"""The extraction loop: DataLoader workers read uint8 tiles, the device resizes, normalises
and encodes them (AMP on CUDA). H&E → (N, D); mIF → (N, C, D), one grayscale pass per marker.

A tile whose image data cannot be read (``tiling.on_bad_tile``) fails the slide with the reader's
message (``error``, the default) or is left out and reported (``skip``); a blank stand-in tile is
never encoded."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pathomix.features.encoders import EncoderSpec
from pathomix.features.tiles import CheckedTiles, TileDataset
from pathomix.io.errors import PathomixInputError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BAD_TILE_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class ExtractParams:
    encoder: str = "resnet50_trunc"
    weights: str | None = None
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"
    precision: str = "auto"

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_precision(self, device: torch.device) -> str:
        if self.precision != "auto":
            return self.precision
        return "fp16" if device.type == "cuda" else "fp32"


class DeviceTransform(nn.Module):
    """uint8 (B, K, S, S) → normalised float (B·K or B, 3, P, P) on the device."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.size = spec.input_px
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, batch: torch.Tensor, grayscale: bool) -> torch.Tensor:
        x = batch.float().div_(255.0)
        if grayscale:  # each marker becomes its own 3-channel grayscale image
            x = x.reshape(-1, 1, *x.shape[-2:]).expand(-1, 3, -1, -1)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class Extracted:
    """What :func:`extract_tiles` returns."""

    features: np.ndarray               # float32, one row per readable tile, in dataset order
    ok: np.ndarray                     # bool (N,): which tiles of the dataset were readable
    precision: str                     # the precision used
    first_error: str = ""              # the reader's message for the first unreadable tile

    @property
    def n_skipped(self) -> int:
        return int((~self.ok).sum())


def _loader(tiles: CheckedTiles, params: ExtractParams, device: torch.device) -> DataLoader:
    workers = params.num_workers if len(tiles) > params.batch_size else 0  # one batch: no fork needed
    return DataLoader(tiles, batch_size=params.batch_size, num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


def _bad_tiles(slide_id: str, ok: torch.Tensor, errors: list[str], on_bad_tile: str) -> str:
    """Fail on an unreadable tile (``error``) or log them and return the first message (``skip``)."""
    messages = [m for m, good in zip(errors, ok.tolist(), strict=True) if not good]
    if on_bad_tile == "error":
        raise PathomixInputError(
            f"{messages[0]}; or, to leave unreadable tiles out and list them in the feature store's "
            "`skipped_coords`, set `tiling.on_bad_tile: skip` in the config (--on-bad-tile skip)"
        )
    for message in messages:
        log.debug("slide %s: skipping a tile: %s", slide_id, message)
    return messages[0]


@torch.inference_mode()
def extract_tiles(dataset: TileDataset, model: nn.Module, spec: EncoderSpec, params: ExtractParams,
                  n_markers: int = 0, on_bad_tile: str = "error") -> Extracted:
    """Encode every readable tile of ``dataset``; unreadable tiles raise or are skipped (``on_bad_tile``)."""
    if on_bad_tile not in BAD_TILE_POLICIES:
        raise ValueError(f"on_bad_tile={on_bad_tile!r} must be one of {BAD_TILE_POLICIES}")
    device = params.resolve_device()
    precision = params.resolve_precision(device)
    grayscale = n_markers > 0
    shape = (len(dataset), n_markers, spec.dim) if grayscale else (len(dataset), spec.dim)
    out, ok = np.zeros(shape, np.float32), np.ones(len(dataset), bool)
    if len(dataset) == 0:
        return Extracted(out, ok, precision)
    dataset.prepare()  # an unusable slide fails here, with its own message
    encode = _Encoder(model, spec, device, precision, n_markers, params.batch_size)
    start, done, first_error = time.perf_counter(), 0, ""
    try:
        for tiles, good, errors in tqdm(_loader(CheckedTiles(dataset), params, device),
                                        desc=f"encode {dataset.ref.slide_id}", unit="batch", leave=False):
            if not good.all():
                first_error = first_error or _bad_tiles(dataset.ref.slide_id, good, errors, on_bad_tile)
            ok[done:done + len(tiles)] = good.numpy()
            if good.all():  # the common case keeps the pinned batch
                out[done:done + len(tiles)] = encode(tiles)
            elif good.any():
                out[done:done + len(tiles)][good.numpy()] = encode(tiles[good])
            done += len(tiles)
    finally:
        dataset.close()
    _log_speed(dataset.ref.slide_id, int(ok.sum()), time.perf_counter() - start, precision, device)
    return Extracted(out[ok], ok, precision, first_error)


def padded_size(n: int, batch_size: int) -> int:
    """The batch size ``n`` tiles are encoded at: the next power of two, at most ``batch_size``.

    The backends (oneDNN on CPU, cuDNN) keep compiled kernels per input shape; a slide's last,
    partial batch would otherwise bring a new shape, and the cache grew by ~150 KiB per slide
    in a long-running process (benchmarks/memory.py). Buckets bound the shapes to
    log2(batch_size) + 2 and cost at most twice the work of one partial batch per slide.
    """
    return min(max(batch_size, n), 1 << max(n - 1, 0).bit_length())


class _Encoder:
    """uint8 batch on the host → float32 features (B, D) or (B, C, D) on the host."""

    def __init__(self, model: nn.Module, spec: EncoderSpec, device: torch.device, precision: str,
                 n_markers: int, batch_size: int):
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.transform = DeviceTransform(spec).to(device)
        self.device, self.n_markers, self.batch_size = device, n_markers, batch_size
        self.autocast = (torch.autocast(device.type, dtype=PRECISIONS[precision])
                         if precision != "fp32" else nullcontext())

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        b, grayscale = len(batch), self.n_markers > 0
        size = padded_size(b, self.batch_size)
        if size > b:   # blank tiles fill the bucket; their rows are dropped below
            batch = torch.cat([batch, batch.new_zeros((size - b, *batch.shape[1:]))])
        with self.autocast:
            feats = self.model(self.transform(batch.to(self.device, non_blocking=True), grayscale))
        feats = feats.float().reshape(size, self.n_markers, -1) if grayscale else feats.float()
        return feats[:b].cpu().numpy()


def _log_speed(slide_id: str, n: int, seconds: float, precision: str, device: torch.device) -> None:
    log.info("%s: %d tiles in %.1f s (%.1f tiles/s, %s on %s)", slide_id, n, seconds,
             n / max(seconds, 1e-9), precision, device)
