"""The extraction loop: DataLoader workers read uint8 tiles, the device resizes, normalises
and encodes them (AMP on CUDA). H&E → (N, D); mIF → (N, C, D), one grayscale pass per marker.

Workers hand over small chunks (:data:`READ_CHUNK` tiles), so every worker has a share of even a
small slide; the main process gathers chunks into encoder batches in two staging buffers (pinned
on CUDA): one fills while the device encodes the other, and features come back through a
non-blocking copy collected one batch later. ``batch_size: auto`` sizes batches from free GPU
memory; ``compile: true`` runs the encoder through ``torch.compile`` (worth it for long jobs only:
compiling takes tens of seconds).

A tile whose image data cannot be read (``features.on_bad_tile``) fails the slide with the reader's
message (``error``, the default) or is left out and reported (``skip``); a blank stand-in tile is
never encoded.

``gpu_decode`` (``auto``: on CUDA): for slides whose JPEG tiles can be handed out compressed
(:mod:`pathomix.io.jpegtiles`), workers only read the bytes and the main process decodes each chunk in one
batched call on the device (:mod:`pathomix.features.jpegdecode`); a tile that fails to decode is read again
the CPU way, so it fails or is skipped with the reader's message as before."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pathomix.constants import BAD_TILE_POLICIES
from pathomix.devices import resolve_device
from pathomix.errors import PathomixInputError
from pathomix.features.encoders import EncoderSpec
from pathomix.features.jpegdecode import PackedStreams, decode_regions
from pathomix.features.tiles import CheckedTiles, Chunk, SlideChunks, TileDataset

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
READ_CHUNK = 32          # tiles per DataLoader item
AUTO_BATCH = (64, 1024)  # ``batch_size: auto``: on CPU the first, on CUDA at most the second
# the device decoder must give the CPU reader's pixels on a slide's first streamable tile, within this
# mean |difference| (JPEG decoders differ by about 1; a wrong colour transform by about 45)
DECODE_CHECK_MEAN = 4.0
DECODE_CHECK_TILES = 8   # tiles tried for that check before giving up on streams for the slide


@dataclass(frozen=True)
class ExtractParams:
    """The config's ``features:`` subtree; defaults equal config.yaml (tests/test_params.py checks)."""

    encoder: str = "resnet18_trunc"
    # a checkpoint path (one encoder) or {encoder: path}; an encoder without one is looked up in the local
    # Hugging Face cache, offline (pathomix.features.weights.resolve_weights)
    weights: str | Mapping[str, str | None] | None = None
    # no weights given or found: run randomly initialised (True; loud warning, "random-init" in the stores) or
    # fail (False, the package default; the demo's config.yaml sets True)
    allow_random_init: bool = False
    batch_size: int | str = 64      # or "auto": from free GPU memory (see auto_batch_size)
    num_workers: int = 2
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    on_bad_tile: str = "error"      # error | skip: a tile whose image data cannot be read (BAD_TILE_POLICIES)
    # decode JPEG tiles in batches on the device: auto (on CUDA, for eligible slides) | true | false (workers decode)
    gpu_decode: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.on_bad_tile not in BAD_TILE_POLICIES:
            raise PathomixInputError(f"config `features.on_bad_tile`={self.on_bad_tile!r} must be one of "
                                     f"{list(BAD_TILE_POLICIES)}")
        if not (isinstance(self.gpu_decode, bool) or self.gpu_decode == "auto"):
            raise PathomixInputError(f"config `features.gpu_decode`={self.gpu_decode!r} must be one of "
                                     "auto, true, false")

    def decode_on_device(self, device: torch.device) -> bool:
        """Whether eligible slides' JPEG tiles are decoded on ``device`` (``gpu_decode``; auto: on CUDA)."""
        return device.type == "cuda" if self.gpu_decode == "auto" else bool(self.gpu_decode)

    def resolve_device(self) -> torch.device:
        return resolve_device(self.device)

    def resolve_precision(self, device: torch.device) -> str:
        if self.precision != "auto":
            return self.precision
        return "fp16" if device.type == "cuda" else "fp32"


class DeviceTransform(nn.Module):
    """uint8 (B, K, S, S) → normalised float (B·K or B, 3, P, P) on the device."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.size = spec.input_px
        # crop_pct < 1 (e.g. GigaPath: Resize(256) + CenterCrop(224)): resize to size / crop_pct, crop the centre
        self.resize = round(spec.input_px / spec.crop_pct)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, batch: torch.Tensor, grayscale: bool) -> torch.Tensor:
        x = batch.float().div_(255.0)
        if grayscale:  # each marker becomes its own 3-channel grayscale image
            x = x.reshape(-1, 1, *x.shape[-2:]).expand(-1, 3, -1, -1)
        if x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", antialias=True,
                              align_corners=False)
        if self.resize != self.size:
            top = (self.resize - self.size) // 2
            x = x[..., top:top + self.size, top:top + self.size]
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


def _loader(chunks: SlideChunks, params: ExtractParams) -> DataLoader:
    workers = params.num_workers if len(chunks) > 1 else 0  # one chunk: no fork needed
    return DataLoader(chunks, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None)


def _bad_tiles(slide_id: str, ok: torch.Tensor, errors: list[str], on_bad_tile: str) -> str:
    """Fail on an unreadable tile (``error``) or log them and return the first message (``skip``)."""
    messages = [m for m, good in zip(errors, ok.tolist(), strict=True) if not good]
    if on_bad_tile == "error":
        raise PathomixInputError(
            f"{messages[0]}; or, to leave unreadable tiles out and list them in the feature store's "
            "`skipped_coords`, set `features.on_bad_tile: skip` in the config (--on-bad-tile skip)"
        )
    for message in messages:
        log.debug("slide %s: skipping a tile: %s", slide_id, message)
    return messages[0]


def extract_tiles(dataset: TileDataset, model: nn.Module, spec: EncoderSpec, params: ExtractParams,
                  n_markers: int = 0, on_bad_tile: str | None = None, encoder: BatchEncoder | None = None
                  ) -> Extracted:
    """Encode every readable tile of ``dataset``; unreadable tiles raise or are skipped (``on_bad_tile``,
    by default ``params.on_bad_tile``).

    ``encoder`` reuses a :class:`BatchEncoder` across calls (one compile, one batch-size probe)."""
    return next(extract_slides([dataset], model, spec, params, n_markers, on_bad_tile, encoder))


@torch.inference_mode()
def extract_slides(datasets: list[TileDataset], model: nn.Module, spec: EncoderSpec, params: ExtractParams,
                   n_markers: int = 0, on_bad_tile: str | None = None,
                   encoder: BatchEncoder | None = None) -> Iterator[Extracted]:
    """:func:`extract_tiles` for several slides through one DataLoader (:class:`SlideChunks`): workers start
    once, and the next slide is read while the current one finishes. Yields one result per dataset, in order."""
    on_bad_tile = params.on_bad_tile if on_bad_tile is None else on_bad_tile  # None: the params' policy
    if on_bad_tile not in BAD_TILE_POLICIES:
        raise ValueError(f"on_bad_tile={on_bad_tile!r} must be one of {BAD_TILE_POLICIES}")
    feature_shape = (n_markers, spec.dim) if n_markers else (spec.dim,)
    busy = [d for d in datasets if len(d)]
    for d in busy:
        d.prepare()  # an unusable slide fails here, with its own message
    if busy and encoder is None:
        encoder = BatchEncoder(model, spec, params, n_markers, busy[0].tile_px)
    if busy and params.decode_on_device(encoder.device):
        for d in busy:
            choose_decoder(d, encoder.device)
    precision = encoder.precision if encoder else params.resolve_precision(params.resolve_device())
    streamed = _stream(busy, encoder, feature_shape, params, on_bad_tile)
    for d in datasets:
        yield next(streamed) if len(d) else Extracted(np.zeros((0, *feature_shape), np.float32), np.ones(0, bool),
                                                      precision)


def _stream(busy: list[TileDataset], encoder: BatchEncoder, feature_shape: tuple[int, ...], params: ExtractParams,
            on_bad_tile: str) -> Iterator[Extracted]:
    """One result per (non-empty) dataset of ``busy``, in order, each as soon as the loader moves past it."""
    runs = (_SlideRun(d, encoder, feature_shape) for d in busy)
    current = None
    try:
        desc = f"encode {busy[0].ref.slide_id}" if len(busy) == 1 else f"encode {len(busy)} slides"
        for chunk in tqdm(_loader(SlideChunks(busy, READ_CHUNK), params), unit="chunk", desc=desc, leave=False):
            if current is None or busy[chunk.slide] is not current.dataset:   # the loader moved on to the next slide
                if current is not None:
                    yield current.finish()
                current = next(runs)
            current.add(chunk, on_bad_tile)
        if current is not None:
            yield current.finish()
    finally:
        for d in busy:
            d.close()


def choose_decoder(dataset: TileDataset, device: torch.device) -> bool:
    """Turn on JPEG streams for ``dataset`` when its slide is eligible and the device decoder gives the CPU
    reader's pixels on its first streamable tile; log which path the slide takes. → whether streams are on."""
    slide_id = dataset.ref.slide_id
    why = dataset.enable_streams()
    if not why:
        why = _decoder_check(dataset, device)
        dataset.close()          # no handle may be inherited by the DataLoader's workers
        dataset.streams = not why
    if why:
        log.info("slide %s: JPEG tiles decoded in the workers (%s)", slide_id, why)
        return False
    log.info("slide %s: JPEG tiles decoded in batches on %s (gpu_decode)", slide_id, device)
    return True


def _decoder_check(dataset: TileDataset, device: torch.device) -> str:
    """'' when the device decodes one of the slide's first tiles like the CPU reader, else why not."""
    for i in range(min(len(dataset), DECODE_CHECK_TILES)):
        region = dataset.region_streams(i)
        if region is None:
            continue
        try:
            reference = dataset.read(dataset.handle(), i)
        except PathomixInputError:
            continue          # a corrupt tile says nothing about the decoder
        decoded, ok = decode_regions(PackedStreams.pack([region]), dataset.tile_px, device)
        if not ok.all():
            continue
        diff = (decoded[0].cpu().float() - reference.float()).abs().mean().item()
        if diff > DECODE_CHECK_MEAN:
            return (f"the device decoder differs from the CPU reader by a mean {diff:.1f} per pixel on tile {i} "
                    "(colour transform?)")
        return ""
    return f"none of its first {DECODE_CHECK_TILES} tiles lies on a JPEG level's pixel grid"


class _SlideRun:
    """One slide's progress through the loader: which tiles were readable, and their features."""

    def __init__(self, dataset: TileDataset, encoder: BatchEncoder, feature_shape: tuple[int, ...]) -> None:
        self.dataset, self.precision = dataset, encoder.precision
        self.pipeline = _Pipeline(encoder, dataset.tile_shape(), feature_shape, on_device=dataset.streams)
        self.ok = np.ones(len(dataset), bool)
        self.done, self.first_error, self.start = 0, "", time.perf_counter()
        self.on_device = 0

    def add(self, chunk: Chunk, on_bad_tile: str) -> None:
        tiles, good, errors = self._gather(chunk)
        if not good.all():
            self.first_error = self.first_error or _bad_tiles(self.dataset.ref.slide_id, good, errors, on_bad_tile)
            tiles = tiles[good]
        self.ok[self.done:self.done + len(good)] = good.numpy()
        self.done += len(good)
        self.pipeline.add(tiles)

    def _gather(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """All tiles of ``chunk`` in order (on the device when it holds streams), which are readable, and the
        reader's messages. Regions whose streams fail to decode are read the CPU way here, so a corrupt tile
        fails or is skipped with the same message as without streams."""
        if chunk.streams is None:
            return chunk.tiles, chunk.ok, chunk.messages
        device = self.pipeline.encoder.device
        decoded, decoded_ok = decode_regions(chunk.streams, self.dataset.tile_px, device)
        tiles = torch.empty((len(chunk), *self.dataset.tile_shape()), dtype=torch.uint8, device=device)
        on_cpu = chunk.on_cpu
        tiles[on_cpu] = chunk.tiles.to(device)
        tiles[~on_cpu] = decoded
        ok, messages = chunk.ok.clone(), list(chunk.messages)
        streamed = torch.nonzero(~on_cpu).flatten()
        self.on_device += int(decoded_ok.sum())
        checked = CheckedTiles(self.dataset)
        for pos in streamed[~decoded_ok].tolist():
            tile, ok[pos], messages[pos] = checked[chunk.start + pos]
            tiles[pos] = tile.to(device)
        return tiles, ok, messages

    def finish(self) -> Extracted:
        features = self.pipeline.finish()
        if self.dataset.streams:
            log.info("slide %s: %d tiles decoded on %s, %d read the CPU way", self.dataset.ref.slide_id,
                     self.on_device, self.pipeline.encoder.device, len(self.ok) - self.on_device)
        _log_speed(self.dataset.ref.slide_id, int(self.ok.sum()), time.perf_counter() - self.start, self.precision,
                   self.pipeline.encoder.device)
        return Extracted(features, self.ok, self.precision, self.first_error)


def padded_size(n: int, batch_size: int) -> int:
    """The batch size ``n`` tiles are encoded at: the next power of two, at most ``batch_size``.

    The backends (oneDNN on CPU, cuDNN) keep compiled kernels per input shape; a slide's last,
    partial batch would otherwise bring a new shape, and the cache grew by ~150 KiB per slide
    in a long-running process (benchmarks/memory.py). Buckets bound the shapes to
    log2(batch_size) + 2 and cost at most twice the work of one partial batch per slide.
    """
    return min(max(batch_size, n), 1 << max(n - 1, 0).bit_length())


def auto_batch_size(model: nn.Module, transform: nn.Module, device: torch.device, autocast, input_shape,
                    grayscale: bool) -> int:
    """Largest power of two ≤ ``AUTO_BATCH[1]`` whose activations fit in half the free GPU memory,
    from the peak memory of one probe batch of 16; ``AUTO_BATCH[0]`` on the CPU."""
    if device.type != "cuda":
        return AUTO_BATCH[0]
    probe = 16
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with autocast:
        model(transform(torch.zeros((probe, *input_shape), dtype=torch.uint8, device=device), grayscale))
    torch.cuda.synchronize(device)
    per_tile = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    free, _ = torch.cuda.mem_get_info(device)
    fit = max(1, int(0.5 * free // per_tile))
    size = min(AUTO_BATCH[1], 1 << (fit.bit_length() - 1))
    log.info("batch_size auto: %d (%.1f MiB per tile, %.1f GiB free)", size, per_tile / 2**20, free / 2**30)
    return size


class _Pending:
    """Features of one submitted batch; ``result()`` waits for their copy to the host."""

    def __init__(self, host: torch.Tensor, event: torch.cuda.Event | None) -> None:
        self.host, self.event = host, event

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


class BatchEncoder:
    """uint8 batch on the host → float32 features (B, D) or (B, C, D) on the host.

    ``submit`` queues a batch on the device and returns at once on CUDA; calling the encoder
    waits for the result."""

    def __init__(self, model: nn.Module, spec: EncoderSpec, params: ExtractParams, n_markers: int = 0,
                 tile_px: int | None = None):
        device = params.resolve_device()
        self.precision = precision = params.resolve_precision(device)
        self.model = model.to(device).to(memory_format=torch.channels_last)
        if params.compile:
            self.model = torch.compile(self.model)
        self.transform = DeviceTransform(spec).to(device)
        self.device, self.n_markers = device, n_markers
        self.autocast = (torch.autocast(device.type, dtype=PRECISIONS[precision])
                         if precision != "fp32" else nullcontext())
        if params.batch_size == "auto":
            px = tile_px or spec.input_px
            shape = (n_markers or 3, px, px)
            self.batch_size = auto_batch_size(self.model, self.transform, device, self.autocast, shape, n_markers > 0)
        else:
            self.batch_size = int(params.batch_size)

    def submit(self, batch: torch.Tensor) -> _Pending:
        b, grayscale = len(batch), self.n_markers > 0
        size = padded_size(b, self.batch_size)
        if size > b:   # blank tiles fill the bucket; their rows are dropped below
            batch = torch.cat([batch, batch.new_zeros((size - b, *batch.shape[1:]))])
        with self.autocast:
            feats = self.model(self.transform(batch.to(self.device, non_blocking=True), grayscale))
        feats = (feats.float().reshape(size, self.n_markers, -1) if grayscale else feats.float())[:b]
        if self.device.type != "cuda":
            return _Pending(feats, None)
        host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
        host.copy_(feats, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return _Pending(host, event)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.submit(batch).result()


class _Pipeline:
    """Readable tiles in, in order → their features out, in order.

    Two staging buffers of one batch each (pinned on CUDA, or on the device for tiles decoded there): one
    fills from the loader while the device encodes the other. A buffer is refilled only after the batch that
    used it came back."""

    def __init__(self, encoder: BatchEncoder, tile_shape: tuple[int, int, int], feature_shape: tuple[int, ...],
                 on_device: bool = False) -> None:
        pinned = encoder.device.type == "cuda" and not on_device
        self.feature_shape = feature_shape
        self.encoder, self.size = encoder, encoder.batch_size
        # tiles decoded on the device are staged there (no round trip through the host)
        where = {"device": encoder.device} if on_device else {"pin_memory": pinned}
        self.buffers = [torch.empty((self.size, *tile_shape), dtype=torch.uint8, **where) for _ in range(2)]
        self.slot, self.fill = 0, 0
        self.pending: deque[_Pending] = deque()
        self.done: list[np.ndarray] = []

    def add(self, tiles: torch.Tensor) -> None:
        while len(tiles):
            n = min(len(tiles), self.size - self.fill)
            self.buffers[self.slot][self.fill:self.fill + n] = tiles[:n]
            self.fill, tiles = self.fill + n, tiles[n:]
            if self.fill == self.size:
                self._submit()

    def _submit(self) -> None:
        self.pending.append(self.encoder.submit(self.buffers[self.slot][:self.fill]))
        self.slot, self.fill = 1 - self.slot, 0
        if len(self.pending) == len(self.buffers):   # the next buffer's batch must be back first
            self.done.append(self.pending.popleft().result())

    def finish(self) -> np.ndarray:
        if self.fill:
            self._submit()
        while self.pending:
            self.done.append(self.pending.popleft().result())
        return np.concatenate(self.done) if self.done else np.zeros((0, *self.feature_shape), np.float32)


def _log_speed(slide_id: str, n: int, seconds: float, precision: str, device: torch.device) -> None:
    log.info("%s: %d tiles in %.1f s (%.1f tiles/s, %s on %s)", slide_id, n, seconds,
             n / max(seconds, 1e-9), precision, device)
