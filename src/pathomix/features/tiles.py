"""Tile reading for extraction: a Dataset whose workers each hold their own slide handle.

Tiles leave the workers as uint8 (K, S, S): K = 3 (RGB) for H&E, K = number of markers for
mIF (autofluorescence subtracted, each marker scaled by its slide-level 99.5th percentile).
Normalisation to the encoder's mean/std happens on the device, so only bytes cross PCIe.

:class:`CheckedTiles` wraps a :class:`TileDataset` for the extraction loop: a tile whose image
data cannot be read comes back as a blank tile with ``ok=False`` and the reader's message, so
the main process (not a DataLoader worker) decides to fail or skip (``features.on_bad_tile``).

With ``features.gpu_decode`` on, a dataset whose slide is eligible (:meth:`TileDataset.enable_streams`) hands
out compressed JPEG tiles instead (:class:`~pathomix.features.jpegdecode.PackedStreams`): workers only read
bytes, and the main process decodes them in batches on the device. Tiles the streams cannot give (a position
off the level's pixel grid, a region leaving the level) are read the usual way in the same chunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pathomix.errors import PathomixInputError
from pathomix.features.jpegdecode import PackedStreams
from pathomix.io.jpegtiles import JpegTiles, RegionStreams, open_jpeg_tiles
from pathomix.io.slide import Slide, open_slide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideRef:
    """Everything needed to (re)open a slide in a worker process."""

    slide_id: str
    path: str
    modality: str = "he"
    mpp: float | None = None
    channels_sheet: str | None = None

    def open(self) -> Slide:
        return open_slide(Path(self.path), modality=self.modality, mpp=self.mpp, slide_id=self.slide_id,
                          channels_sheet=self.channels_sheet)


def mif_scales(slide: Slide, mask_mpp: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """→ (marker channel indices, autofluorescence index or -1, per-marker 99.5th percentile).

    Percentiles are measured on a thumbnail after autofluorescence subtraction, so every tile
    of a slide is scaled the same way.
    """
    af = np.flatnonzero(slide.autofluorescence)
    markers = np.flatnonzero(~np.asarray(slide.autofluorescence, bool))
    thumb = slide.thumbnail(max(mask_mpp, slide.mpp))
    a = af[0] if len(af) else -1
    # one marker at a time: a large panel's thumbnail is not copied whole again (benchmarks/mif_memory.py)
    scale = np.array([np.percentile(_subtract_af(thumb, markers[k:k + 1], a), 99.5) for k in range(len(markers))])
    return markers, a, np.maximum(scale, 1e-6).astype(np.float32)


def _subtract_af(img: np.ndarray, markers: np.ndarray, af: int) -> np.ndarray:
    out = img[markers].astype(np.float32)
    if af >= 0:
        out = np.clip(out - img[af][None].astype(np.float32), 0, None)
    return out


class TileDataset(Dataset):
    """Reads tile ``i`` (level-0 top-left ``coords[i]``) resized to ``tile_px``."""

    def __init__(self, ref: SlideRef, coords: np.ndarray, size_level0: int, tile_px: int):
        self.ref, self.coords = ref, np.asarray(coords)
        self.size_level0, self.tile_px = int(size_level0), int(tile_px)
        self._slide: Slide | None = None
        self._mif: tuple[np.ndarray, int, np.ndarray] | None = None
        self.streams = False                       # hand out JPEG streams (enable_streams)
        self._jpeg: JpegTiles | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def prepare(self) -> None:
        """Open the slide once in the calling process, so an unusable slide fails here with its own
        message (not inside a DataLoader worker), and fix the mIF scales every worker shares."""
        with self.ref.open() as slide:
            if self.ref.modality == "mif" and self._mif is None:
                self._mif = mif_scales(slide)

    def close(self) -> None:
        """Release this process's slide handle (workers release theirs when they exit)."""
        if self._jpeg is not None:
            self._jpeg.close()
            self._jpeg = None
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def level(self, slide: Slide) -> tuple[int, int]:
        """(level, region side in level pixels) that :meth:`Slide.read_tile` reads every tile from."""
        level = slide.best_level(self.size_level0 / self.tile_px)
        return level, max(1, round(self.size_level0 / slide.level_downsamples[level]))

    def enable_streams(self) -> str:
        """Hand out JPEG streams (:meth:`region_streams`) if this slide's read level is eligible
        (:mod:`pathomix.io.jpegtiles`); '' when enabled, else why not."""
        if self.ref.modality != "he":
            return "mIF images are read channel by channel"
        with self.ref.open() as slide:
            jpeg, why = open_jpeg_tiles(slide)
            if jpeg is None:
                return why
            level, _ = self.level(slide)
            jpeg.close()
        if level not in jpeg.levels:
            return f"its read level {level} is not JPEG-tiled (eligible levels: {list(jpeg.levels)})"
        self.streams = True
        return ""

    def region_streams(self, i: int) -> RegionStreams | None:
        """Tile ``i``'s region as JPEG streams, or None when it must be read the usual way."""
        slide = self.handle()
        if self._jpeg is None:
            self._jpeg, why = open_jpeg_tiles(slide)
            if self._jpeg is None:   # eligible when enabled, so the file changed: read the usual way
                log.debug("slide %s: no JPEG streams (%s)", self.ref.slide_id, why)
                self.streams = False
                return None
        x, y = self.coords[i]
        level, n = self.level(slide)
        try:
            return self._jpeg.region(level, int(x), int(y), n, n)
        except (OSError, ValueError, IndexError) as e:
            log.debug("slide %s: tile %d not read as JPEG streams (%s)", self.ref.slide_id, i, e)
            return None

    def handle(self) -> Slide:
        if self._slide is None:  # opened lazily, so each DataLoader worker has its own handle
            self._slide = self.ref.open()
            if self.ref.modality == "mif" and self._mif is None:
                self._mif = mif_scales(self._slide)
        return self._slide

    def tile_shape(self) -> tuple[int, int, int]:
        """(K, S, S) of the tiles this dataset yields."""
        channels = 3 if self.ref.modality == "he" else len(self._mif[0]) if self._mif else 0
        return channels, self.tile_px, self.tile_px

    def read(self, slide: Slide, i: int) -> torch.Tensor:
        """Tile ``i`` as uint8 (K, S, S); raises :class:`PathomixInputError` if its data is corrupt."""
        x, y = self.coords[i]
        tile = slide.read_tile(int(x), int(y), self.size_level0, self.tile_px)
        if self._mif is None:
            return torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))
        markers, af, scale = self._mif
        sub = _subtract_af(tile, markers, af) / scale[:, None, None]
        return torch.from_numpy(np.clip(sub * 255.0, 0, 255).astype(np.uint8))

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.read(self.handle(), i)


class CheckedTiles(Dataset):
    """``(tile, ok, message)`` per tile: an unreadable tile is a blank tile with ``ok=False`` and the
    reader's error message. Only the tile read is guarded; a slide that cannot be opened still raises.

    After a read error an openslide handle fails every later read, so the handle is reopened.
    """

    def __init__(self, tiles: TileDataset):
        self.tiles = tiles

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool, str]:
        slide = self.tiles.handle()
        try:
            return self.tiles.read(slide, i), True, ""
        except PathomixInputError as err:
            self.tiles.close()  # openslide's errors are sticky: the next tile gets a fresh handle
            return torch.zeros(self.tiles.tile_shape(), dtype=torch.uint8), False, str(err)


@dataclass(frozen=True)
class Chunk:
    """One DataLoader item: tiles ``start``..``start + n`` of slide ``slide``.

    ``on_cpu`` (n,) says which were read (decoded) in the worker: they are ``tiles``, in order; the others are
    JPEG streams in ``streams``, in order, for the main process to decode on the device. ``ok`` and
    ``messages`` (n,) are :class:`CheckedTiles`' for the CPU-read tiles (streams are checked when decoded)."""

    slide: int
    start: int
    tiles: torch.Tensor
    ok: torch.Tensor
    messages: list[str]
    on_cpu: torch.Tensor
    streams: PackedStreams | None = None

    def __len__(self) -> int:
        return len(self.ok)


class SlideChunks(Dataset):
    """Item ``i`` = chunk ``i`` of the tiles of several slides, in order, as a :class:`Chunk`. A chunk never
    spans two slides, so one DataLoader (batch_size=None) streams slide after slide: its workers start once and
    read the next slide while the last chunks of the current one are encoded. A worker closes a slide's handle
    when it moves on to a later slide."""

    def __init__(self, datasets: list[TileDataset], chunk: int) -> None:
        self.sets = [CheckedTiles(d) for d in datasets]
        self.chunks = [(k, j, min(j + chunk, len(d))) for k, d in enumerate(datasets) for j in range(0, len(d), chunk)]
        self._open: set[int] = set()

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Chunk:
        k, start, stop = self.chunks[i]
        for done in [o for o in self._open if o < k]:
            self.sets[done].tiles.close()
            self._open.discard(done)
        self._open.add(k)
        checked = self.sets[k]
        on_cpu, tiles, ok, messages, regions = [], [], [], [], []
        for j in range(start, stop):
            region = checked.tiles.region_streams(j) if checked.tiles.streams else None
            on_cpu.append(region is None)
            if region is None:
                tile, good, message = checked[j]
                tiles.append(tile)
            else:
                good, message = True, ""   # checked when decoded
                regions.append(region)
            ok.append(good)
            messages.append(message)
        stacked = (torch.stack(tiles) if tiles
                   else torch.zeros((0, *checked.tiles.tile_shape()), dtype=torch.uint8))
        return Chunk(k, start, stacked, torch.tensor(ok), messages, torch.tensor(on_cpu),
                     PackedStreams.pack(regions) if regions else None)
