"""Deformable cross-attention from a query token to the 2-D tile grid of a bag (KS-Fusion).

1. :func:`scatter_to_grid` places the patch tokens ``(B, N, H)`` on a grid using their positions
   ``(B, N, 2)`` in tile units (``pos_{mag}``): one cell per tile while the bag's extent fits in
   ``size × size`` cells, otherwise the positions are scaled down (same factor on both axes) and a
   cell holds the mean of its tiles. Empty cells are zero and marked in ``occupancy``.
2. :func:`reference_points`: a regular lattice of at most ``points × points`` reference points
   spread over the bag's extent (fewer on a grid with fewer cells per side, so a small bag is
   sampled at its cells exactly).
3. :class:`DeformableCrossAttention`: an offset network reads the query and the grid feature at
   each reference point and predicts a bounded offset (``offset_scale`` lattice spacings,
   ``tanh``; zero at initialisation); the grid is sampled bilinearly there
   (:func:`sample_grid`, ``torch.nn.functional.grid_sample``) and the query attends to the K
   samples (:class:`~pathomix.models.blocks.CrossAttention`, empty cells masked by the sampled
   occupancy).
4. :func:`splat_to_tiles` maps the attention over the samples back to the tiles (the adjoint of
   the bilinear sampling, then a cell's weight split evenly among its tiles), for the heatmaps.

Coordinates are (x, y) in cell units; ``grid_sample`` gets them normalised with
``align_corners=True``, so cell centres are sampled exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pathomix.models.blocks import CrossAttention


@dataclass(frozen=True)
class TileGrid:
    """Patch tokens on a 2-D grid: ``features`` (B, H, Hg, Wg) (mean token per cell, zero when
    empty), ``occupancy`` (B, 1, Hg, Wg) (1 where a cell holds a tile), ``cell`` (B, N) flat cell
    index of every tile and ``count`` (B, Hg·Wg) tiles per cell."""

    features: torch.Tensor
    occupancy: torch.Tensor
    cell: torch.Tensor
    count: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.features.shape[-2]), int(self.features.shape[-1])


def grid_cells(pos: torch.Tensor, size: int) -> torch.Tensor:
    """Tile positions (B, N, 2) → integer cells (B, N, 2) (x, y) in ``[0, size)``: shifted to start at
    0 and, when a bag's extent exceeds ``size`` cells, scaled down by one factor for both axes."""
    p = pos - pos.amin(dim=1, keepdim=True)
    span = p.amax(dim=(1, 2)).clamp_min(1.0)  # (B,) the larger extent
    scale = ((size - 1) / span).clamp(max=1.0)
    return torch.round(p * scale[:, None, None]).long().clamp(0, size - 1)


def raster_positions(batch: int, n: int, device: torch.device | None = None) -> torch.Tensor:
    """Positions (B, N, 2) that lay a bag without coordinates out row by row on a square grid."""
    side = max(1, math.ceil(math.sqrt(n)))
    i = torch.arange(n, device=device)
    return torch.stack([i % side, i // side], dim=-1).float().expand(batch, n, 2)


def scatter_to_grid(tokens: torch.Tensor, pos: torch.Tensor, size: int) -> TileGrid:
    """Average the tokens (B, N, H) of each grid cell; see :func:`grid_cells`."""
    b, n, h = tokens.shape
    cells = grid_cells(pos, size)
    hg, wg = int(cells[..., 1].max()) + 1, int(cells[..., 0].max()) + 1
    flat = cells[..., 1] * wg + cells[..., 0]  # (B, N)
    sums = tokens.new_zeros(b, hg * wg, h).scatter_add(1, flat[..., None].expand(b, n, h), tokens)
    count = tokens.new_zeros(b, hg * wg).scatter_add(1, flat, tokens.new_ones(b, n))
    mean = sums / count.clamp_min(1.0)[..., None]
    features = mean.transpose(1, 2).reshape(b, h, hg, wg)
    occupancy = (count > 0).to(tokens.dtype).view(b, 1, hg, wg)
    return TileGrid(features, occupancy, flat, count)


def reference_points(hg: int, wg: int, points: int, device: torch.device | None = None) -> torch.Tensor:
    """A regular lattice (K, 2) (x, y) of ``min(points, wg) × min(points, hg)`` points spanning the grid."""
    xs = torch.linspace(0, wg - 1, min(points, wg), device=device)
    ys = torch.linspace(0, hg - 1, min(points, hg), device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def sample_grid(grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``grid`` (B, C, Hg, Wg) at ``points`` (B, K, 2) (x, y) in cell units →
    (B, K, C); outside the grid counts as zero."""
    hg, wg = grid.shape[-2:]
    if hg == 1 or wg == 1:  # a single row/column: pad a zero cell so that normalisation is defined
        grid = F.pad(grid, (0, int(wg == 1), 0, int(hg == 1)))
        hg, wg = grid.shape[-2:]
    norm = points * (2.0 / points.new_tensor([wg - 1, hg - 1])) - 1.0
    out = F.grid_sample(grid, norm[:, None], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, :, 0].transpose(1, 2)  # (B, K, C)


def splat_to_tiles(weights: torch.Tensor, points: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Attention over samples (B, K) at ``points`` (B, K, 2) → attention over the tiles (B, N), summing
    to 1: each sample's weight goes to its four neighbouring cells with the bilinear weights of
    :func:`sample_grid`, and a cell's weight is split evenly among its tiles."""
    hg, wg = grid.shape
    b = weights.shape[0]
    x0, y0 = points[..., 0].floor(), points[..., 1].floor()
    fx, fy = points[..., 0] - x0, points[..., 1] - y0
    cells = weights.new_zeros(b, hg * wg)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        inside = (xi >= 0) & (xi < wg) & (yi >= 0) & (yi < hg)
        idx = (yi.clamp(0, hg - 1) * wg + xi.clamp(0, wg - 1)).long()
        cells = cells.scatter_add(1, idx, weights * w * inside)
    per_tile = torch.gather(cells / grid.count.clamp_min(1.0), 1, grid.cell)
    total = per_tile.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(per_tile, 1.0 / per_tile.shape[-1])
    return torch.where(total > 0, per_tile / total.clamp_min(1e-12), uniform)


class DeformableCrossAttention(nn.Module):
    """A query token (B, H) attends to K deformable samples of a :class:`TileGrid`.

    ``forward`` returns ``(out (B, H), weights (B, K), points (B, K, 2))``: the attention output,
    the attention over the samples and where they were taken (cell units)."""

    def __init__(self, dim: int, points: int, offset_scale: float, n_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.points, self.offset_scale = points, offset_scale
        self.offsets = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 2), nn.Tanh())
        nn.init.zeros_(self.offsets[2].weight)  # start from the regular lattice
        nn.init.zeros_(self.offsets[2].bias)
        self.attend = CrossAttention(dim, n_heads, dropout)

    def sampling_points(self, query: torch.Tensor, grid: TileGrid) -> torch.Tensor:
        """Reference lattice + predicted offsets (B, K, 2), offsets bounded by ``offset_scale``
        lattice spacings."""
        hg, wg = grid.shape
        ref = reference_points(hg, wg, self.points, query.device)  # (K, 2)
        spacing = ref.new_tensor([(wg - 1) / max(min(self.points, wg) - 1, 1) if wg > 1 else 1.0,
                                  (hg - 1) / max(min(self.points, hg) - 1, 1) if hg > 1 else 1.0])
        ref = ref.expand(query.shape[0], -1, -1)
        local = sample_grid(grid.features, ref)  # (B, K, H)
        cue = torch.cat([query[:, None].expand_as(local), local], dim=-1)
        return ref + self.offsets(cue) * (self.offset_scale * spacing)

    def forward(self, query: torch.Tensor, grid: TileGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        points = self.sampling_points(query, grid)
        values = sample_grid(grid.features, points)  # (B, K, H)
        occupied = sample_grid(grid.occupancy, points)[..., 0]  # (B, K) in [0, 1]
        out, weights = self.attend(query[:, None], values, bias=torch.log(occupied.clamp_min(1e-6))[:, None])
        return out[:, 0], weights[:, 0], points
