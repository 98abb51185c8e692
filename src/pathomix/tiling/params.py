"""Tiling parameters: the ``tiling:`` subtree of config.yaml as a frozen dataclass."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathomix.errors import PathomixInputError

log = logging.getLogger(__name__)

BAD_TILE_POLICIES = ("error", "skip")
# keys of the config's `tiling:` subtree that choose *which* jobs run, not how a slide is tiled
_WORKFLOW_KEYS = frozenset({"magnifications"})


@dataclass(frozen=True)
class TilingParams:
    """How one slide is tiled; defaults equal config.yaml's ``tiling:`` section.

    Sizes: ``tile_px`` and ``overlap_px`` are pixels at the target magnification,
    ``mask_mpp`` is µm/px of the tissue mask, ``min_region_um2`` is µm².
    """

    tile_px: int = 256
    overlap_px: int = 0
    mask_mpp: float = 8.0
    min_tissue_fraction: float = 0.5
    min_region_um2: float = 20000.0
    on_bad_tile: str = "error"

    def __post_init__(self) -> None:
        problems = []
        if self.tile_px < 1:
            problems.append(f"tile_px={self.tile_px} must be >= 1")
        if not 0 <= self.overlap_px < self.tile_px:
            problems.append(f"overlap_px={self.overlap_px} must be in [0, tile_px)")
        if self.mask_mpp <= 0:
            problems.append(f"mask_mpp={self.mask_mpp} must be > 0")
        if not 0 <= self.min_tissue_fraction <= 1:
            problems.append(f"min_tissue_fraction={self.min_tissue_fraction} must be in [0, 1]")
        if self.min_region_um2 < 0:
            problems.append(f"min_region_um2={self.min_region_um2} must be >= 0")
        if self.on_bad_tile not in BAD_TILE_POLICIES:
            problems.append(f"on_bad_tile={self.on_bad_tile!r} must be one of {BAD_TILE_POLICIES}")
        if problems:
            raise PathomixInputError("config `tiling`: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TilingParams:
        """Build from the config's ``tiling:`` dict; workflow-only keys are ignored."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields) - _WORKFLOW_KEYS)
        if unknown:
            log.warning("config `tiling`: ignoring unknown key(s) %s", unknown)
        kwargs = {}
        for name in fields:
            if name in values and values[name] is not None:
                default = getattr(cls, name)
                try:
                    kwargs[name] = type(default)(values[name])
                except (TypeError, ValueError) as e:
                    raise PathomixInputError(
                        f"config `tiling.{name}`={values[name]!r} is not a {type(default).__name__}"
                    ) from e
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> TilingParams:
        """Build from JSON text, or from the path of a JSON file."""
        text = text.strip()
        if text and not text.startswith("{") and Path(text).is_file():
            text = Path(text).read_text()
        try:
            values = json.loads(text or "{}")
        except json.JSONDecodeError as e:
            raise PathomixInputError(f"--params is not valid JSON ({e}): {text[:200]!r}") from e
        if not isinstance(values, dict):
            raise PathomixInputError(
                f"--params must be a JSON object (the config's `tiling:`), got {text[:200]!r}"
            )
        return cls.from_mapping(values)
