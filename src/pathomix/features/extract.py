"""The extraction loop: DataLoader workers read uint8 tiles, the device resizes, normalises
and encodes them (AMP on CUDA). H&E → (N, D); mIF → (N, C, D), one grayscale pass per marker."""

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
from pathomix.features.tiles import TileDataset

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


@torch.inference_mode()
def extract_tiles(dataset: TileDataset, model: nn.Module, spec: EncoderSpec, params: ExtractParams,
                  n_markers: int = 0) -> tuple[np.ndarray, str]:
    """Encode every tile of ``dataset`` → (features float32, precision used)."""
    device = params.resolve_device()
    precision = params.resolve_precision(device)
    model = model.to(device).to(memory_format=torch.channels_last)
    transform = DeviceTransform(spec).to(device)
    grayscale = n_markers > 0
    shape = (len(dataset), n_markers, spec.dim) if grayscale else (len(dataset), spec.dim)
    out = np.zeros(shape, np.float32)
    if len(dataset) == 0:
        return out, precision
    workers = params.num_workers if len(dataset) > params.batch_size else 0  # one batch: no fork needed
    loader = DataLoader(dataset, batch_size=params.batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    autocast = (torch.autocast(device.type, dtype=PRECISIONS[precision])
                if precision != "fp32" else nullcontext())
    start, done = time.perf_counter(), 0
    for batch in tqdm(loader, desc=f"encode {dataset.ref.slide_id}", unit="batch", leave=False):
        b = len(batch)
        with autocast:
            feats = model(transform(batch.to(device, non_blocking=True), grayscale))
        feats = feats.float().reshape(b, n_markers, -1) if grayscale else feats.float()
        out[done:done + b] = feats.cpu().numpy()
        done += b
    seconds = time.perf_counter() - start
    log.info("%s: %d tiles in %.1f s (%.1f tiles/s, %s on %s)", dataset.ref.slide_id, done, seconds,
             done / max(seconds, 1e-9), precision, device)
    return out, precision
