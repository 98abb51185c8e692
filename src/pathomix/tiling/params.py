"""Tiling parameters: the ``tiling:`` subtree of config.yaml as a frozen dataclass."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pathomix.errors import PathomixInputError
from pathomix.params import load_params, read_json_object

log = logging.getLogger(__name__)

# keys of the config's `tiling:` subtree that choose *which* jobs run, not how a slide is tiled
WORKFLOW_KEYS = ("magnifications",)
# moved to `features.on_bad_tile` (only extraction reads it); the Snakefile translates an old config
MOVED_KEYS = {"on_bad_tile": "features.on_bad_tile"}
MIN_TILE_PX = 16  # = config.schema.yaml's tiling.tile_px minimum


@dataclass(frozen=True)
class TilingParams:
    """How one slide is tiled; defaults equal config.yaml's ``tiling:`` section.

    Sizes: ``tile_px`` and ``overlap_px`` are pixels at the target magnification,
    ``mask_mpp`` is µm/px of the tissue mask, ``min_region_um2`` is µm². The mask is made from the
    pyramid level closest to ``mask_mpp`` (of two equally close, the coarser: a 4x pyramid at
    0.25 µm/px reads its 64x level for the 32x mask), box-reduced to it or upsampled to it.
    """

    tile_px: int = 256
    overlap_px: int = 0
    mask_mpp: float = 8.0
    min_tissue_fraction: float = 0.5
    min_region_um2: float = 20000.0

    def __post_init__(self) -> None:
        problems = []
        if self.tile_px < MIN_TILE_PX:
            problems.append(f"tile_px={self.tile_px} must be >= {MIN_TILE_PX}")
        if not 0 <= self.overlap_px < self.tile_px:
            problems.append(f"overlap_px={self.overlap_px} must be in [0, tile_px)")
        if self.mask_mpp <= 0:
            problems.append(f"mask_mpp={self.mask_mpp} must be > 0")
        if not 0 <= self.min_tissue_fraction <= 1:
            problems.append(f"min_tissue_fraction={self.min_tissue_fraction} must be in [0, 1]")
        if self.min_region_um2 < 0:
            problems.append(f"min_region_um2={self.min_region_um2} must be >= 0")
        if problems:
            raise PathomixInputError("config `tiling`: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | str) -> TilingParams:
        """Build from the config's ``tiling:`` subtree (a dict, or JSON text / a JSON file's path).
        ``magnifications`` (the Snakefile's) is dropped; ``on_bad_tile`` (moved to ``features:``) is
        dropped with a warning; any other unknown key is an error."""
        values = read_json_object(values, "tiling")
        for key, new in MOVED_KEYS.items():
            if key in values:
                log.warning("config `tiling.%s` is now `%s`; ignored by tiling", key, new)
                values.pop(key)
        return load_params(cls, values, where="tiling", drop=WORKFLOW_KEYS)

    @classmethod
    def from_json(cls, text: str) -> TilingParams:
        """Build from JSON text, or from the path of a JSON file."""
        return cls.from_mapping(text)
