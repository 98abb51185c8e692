"""Batched JPEG decoding of tile regions on the device (``features.gpu_decode``).

DataLoader workers hand over compressed TIFF tiles (:class:`~pathomix.io.jpegtiles.RegionStreams`, packed
per chunk into one byte tensor by :class:`PackedStreams`); the main process decodes every distinct tile of a
chunk in one ``torchvision.io.decode_jpeg`` call (nvjpeg, batched, on CUDA; libjpeg-turbo on the CPU, which
is how the tests run it), stitches the tiles each region covers, crops, and resizes to the tile size on the
device (bilinear with antialiasing, as PIL's resize in :meth:`~pathomix.io.slide.Slide.read_tile`).

A tile that fails to decode (corrupt data) marks the regions that need it as failed; the caller reads those
again the CPU way, so their error message and ``on_bad_tile`` handling are today's.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pathomix.io.jpegtiles import RegionStreams

log = logging.getLogger(__name__)

_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"   # 0.29: "moving to TorchCodec"


@dataclass(frozen=True)
class Layout:
    """Where one region lies in the grid of its tiles: ``tiles`` index :attr:`PackedStreams.offsets`."""

    tiles: tuple[int, ...]
    cols: int
    tile: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]


@dataclass(frozen=True)
class PackedStreams:
    """The distinct tiles of one chunk's regions in one uint8 tensor (one shared-memory block between the
    DataLoader worker and the main process, not one per tile), and each region's :class:`Layout`."""

    data: torch.Tensor                 # uint8 (total bytes,)
    offsets: tuple[int, ...]           # stream j is data[offsets[j]:offsets[j + 1]]
    layouts: tuple[Layout, ...]

    @classmethod
    def pack(cls, regions: list[RegionStreams]) -> PackedStreams:
        """Pack regions, each tile stored once however many regions cover it."""
        index: dict[tuple[int, int], int] = {}
        streams: list[bytes] = []
        layouts = []
        for r in regions:
            ids = []
            for key, stream in zip(r.keys, r.streams, strict=True):
                if key not in index:
                    index[key] = len(streams)
                    streams.append(stream)
                ids.append(index[key])
            layouts.append(Layout(tuple(ids), r.cols, r.tile, r.offset, r.size))
        offsets = [0]
        for s in streams:
            offsets.append(offsets[-1] + len(s))
        data = torch.frombuffer(bytearray(b"".join(streams)), dtype=torch.uint8) if streams else \
            torch.zeros(0, dtype=torch.uint8)
        return cls(data, tuple(offsets), tuple(layouts))

    def streams(self) -> list[torch.Tensor]:
        return [self.data[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def decode_streams(streams: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG streams to uint8 (3, h, w) on ``device``, in one batched call; when the batch fails, one by
    one, so only the corrupt streams come back as None."""
    if not streams:
        return []
    try:
        return list(_decode(streams, device))
    except RuntimeError as e:
        log.debug("batched JPEG decode failed (%s); decoding %d tiles one by one", e, len(streams))
    out: list[torch.Tensor | None] = []
    for s in streams:
        try:
            out.append(_decode(s, device))
        except RuntimeError as e:
            log.debug("a JPEG tile failed to decode: %s", e)
            out.append(None)
    return out


def _decode(data: torch.Tensor | list[torch.Tensor], device: torch.device):
    """``decode_jpeg`` to RGB, without torchvision 0.29's deprecation warning on every call (its image IO moves
    to TorchCodec; see the report of issue 21)."""
    from torchvision.io import ImageReadMode, decode_jpeg  # here: importing torchvision costs ~1 s a job

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def assemble(layout: Layout, decoded: list[torch.Tensor | None], out: torch.Tensor) -> bool:
    """Stitch ``layout``'s region from its decoded tiles into ``out`` (3, h, w); False when a tile is missing
    (failed to decode) or has the wrong size."""
    th, tw = layout.tile
    oy, ox = layout.offset
    h, w = layout.size
    for k, j in enumerate(layout.tiles):
        tile = decoded[j]
        if tile is None or tuple(tile.shape) != (3, th, tw):
            return False
        gy, gx = (k // layout.cols) * th, (k % layout.cols) * tw       # the tile's place in the grid
        y0, y1 = max(oy, gy), min(oy + h, gy + th)
        x0, x1 = max(ox, gx), min(ox + w, gx + tw)
        out[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox] = tile[:, y0 - gy:y1 - gy, x0 - gx:x1 - gx]
    return True


def decode_regions(packed: PackedStreams, tile_px: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (uint8 (n, 3, tile_px, tile_px) on ``device``, ok (n,) bool on the CPU) for the chunk's regions.

    Regions of one chunk share a size (one slide, one level); each is resized to ``tile_px`` when it differs.
    A region whose tiles did not all decode is zero with ``ok`` False."""
    n = len(packed.layouts)
    decoded = decode_streams(packed.streams(), device)
    sizes = {layout.size for layout in packed.layouts}
    if len(sizes) != 1:
        raise ValueError(f"regions of one chunk must share a size, got {sorted(sizes)}")
    h, w = sizes.pop()
    regions = torch.empty((n, 3, h, w), dtype=torch.uint8, device=device)
    ok = torch.tensor([assemble(layout, decoded, regions[i]) for i, layout in enumerate(packed.layouts)],
                      dtype=torch.bool)
    if not ok.all():
        regions[~ok.to(device)] = 0
    return resize_uint8(regions, tile_px), ok


def resize_uint8(batch: torch.Tensor, px: int) -> torch.Tensor:
    """uint8 (n, 3, h, w) → uint8 (n, 3, px, px), bilinear with antialiasing (like PIL's BILINEAR resize)."""
    if batch.shape[-2:] == (px, px):
        return batch
    x = F.interpolate(batch.float(), size=(px, px), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)
