"""Tile images for the models that learn from pixels (``fof``): each patient's H&E tiles at one
magnification, read from the slides at the positions of the tiling stage's coords stores
(``tiles/{mag}/{slide}.h5``), resized to the model's input size.

Nothing is cached: an epoch reads the tiles it samples (``train.fof_tiles`` per training
patient) through a DataLoader whose workers (``train.fof_workers``) each keep their own slide
handles (at most :data:`MAX_OPEN` open per process). Evaluation reads up to
``train.fof_eval_tiles`` tiles per patient, spread evenly over its tiles, so it is deterministic.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from pathomix.errors import PathomixInputError
from pathomix.features.encoders import IMAGENET_MEAN, IMAGENET_STD
from pathomix.features.tiles import SlideRef, TileDataset
from pathomix.io.h5store import read_coords
from pathomix.io.sheets import read_slides

log = logging.getLogger(__name__)

MAX_OPEN = 32  # slide handles one process keeps open


@dataclass(frozen=True)
class ImageBag:
    """One patient's tiles: ``slide`` indexes :attr:`TileImages.sets`, ``tile_index`` the row in that
    slide's coords store (the same row as in its feature store), ``slide_ids`` names the slide."""

    slide: np.ndarray  # (N,) int
    tile_index: np.ndarray  # (N,) int64
    slide_ids: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return len(self.tile_index)

    def spread(self, k: int) -> np.ndarray:
        """Up to ``k`` positions spread evenly over the bag (all when it has at most ``k``)."""
        if len(self) <= k:
            return np.arange(len(self))
        return np.unique(np.linspace(0, len(self) - 1, k).round().astype(int))


class TileImages(Dataset):
    """Item ``(k, i)`` → tile ``i`` of slide ``k`` as uint8 (3, px, px)."""

    def __init__(self, sets: Sequence[TileDataset]) -> None:
        self.sets = list(sets)
        self._open: OrderedDict[int, None] = OrderedDict()

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        k, i = int(item[0]), int(item[1])
        self._open[k] = None
        self._open.move_to_end(k)
        while len(self._open) > MAX_OPEN:
            self.sets[self._open.popitem(last=False)[0]].close()
        return self.sets[k][i]


class _Picks(Dataset):
    def __init__(self, images: TileImages, picks: np.ndarray) -> None:
        self.images, self.picks = images, picks

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        return self.images[self.picks[j, :2]], j


def batches(images: TileImages, picks: np.ndarray, batch_size: int, workers: int
            ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Tiles ``picks`` (M, ≥2: slide, row, ...) in order, as (uint8 (B, 3, px, px), row numbers of ``picks``)."""
    yield from DataLoader(_Picks(images, picks), batch_size=batch_size, shuffle=False, num_workers=workers)


def normalise(tiles: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) → float32 on ``device`` with the ImageNet mean and std."""
    x = tiles.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips and 90° rotations per tile (tissue has no orientation)."""
    flips = torch.randint(0, 2, (len(x), 3), generator=generator).bool().tolist()
    out = []
    for t, (h, v, r) in zip(x, flips, strict=True):
        t = t.flip(-1) if h else t
        t = t.flip(-2) if v else t
        out.append(t.transpose(-1, -2) if r else t)
    return torch.stack(out)


def store_index(stores: Iterable[str | Path]) -> dict[tuple[str, str], Path]:
    """Coords stores ``.../{mag}/{slide_id}.h5``, or folders holding ``{mag}/{slide_id}.h5`` (the tiles
    folder: a long list of stores would not fit on one command line) → {(mag, slide_id): path}."""
    files = [f for s in map(Path, stores) for f in (sorted(s.glob("*/*.h5")) if s.is_dir() else [s])]
    return {(f.parent.name, f.name.removesuffix(".h5")): f for f in files}


def load_image_bags(slides_sheet: Path, stores: Iterable[str | Path], patients: Sequence[str], mag: str,
                    image_px: int) -> tuple[TileImages, dict[str, ImageBag]]:
    """The H&E tiles of ``patients`` at ``mag`` → (reader, {patient: bag}); patients without a tile are absent.

    Every H&E slide of these patients must have its coords store at ``mag`` among ``stores``."""
    sheet = read_slides(slides_sheet, check_files=False)
    he = sheet[(sheet.modality == "he") & sheet.patient_id.astype(str).isin(set(patients))]
    index = store_index(stores)
    sets: list[TileDataset] = []
    parts: dict[str, list[tuple[int, int, str]]] = {}
    for slide_id, row in he.sort_index().iterrows():
        store = index.get((mag, str(slide_id)))
        if store is None:
            raise PathomixInputError(f"slide {slide_id}: no coords store at {mag} among the tile stores given; "
                                     f"run the tiling stage with magnification {mag} (tiling.magnifications)")
        coords, attrs = read_coords(store)
        if not len(coords):
            continue
        size0 = attrs.get("patch_size_level0")
        if not size0:
            raise PathomixInputError(f"coords store {store} has no patch_size_level0 attribute; re-run tiling")
        mpp = None if pd.isna(row.mpp) else float(row.mpp)
        sets.append(TileDataset(SlideRef(str(slide_id), str(row.path), "he", mpp), coords, int(size0), image_px))
        parts.setdefault(str(row.patient_id), []).append((len(sets) - 1, len(coords), str(slide_id)))
    bags = {pid: ImageBag(slide=np.concatenate([np.full(n, k) for k, n, _ in ps]),
                          tile_index=np.concatenate([np.arange(n, dtype=np.int64) for _, n, _ in ps]),
                          slide_ids=np.concatenate([np.full(n, s, dtype=object) for _, n, s in ps]))
            for pid, ps in parts.items()}
    log.info("tile images: %d H&E slides of %d patients, %d tiles at %s, read at %d px",
             len(sets), len(bags), sum(len(b) for b in bags.values()), mag, image_px)
    return TileImages(sets), bags
