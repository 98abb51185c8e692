"""Synthetic pyramidal H&E-like slides for the benchmarks (tiled JPEG TIFF with MPP, openslide-readable).

    from synthslide import write_slide
    write_slide("big.tif", 80_000, 60_000, mpp=0.25, seed=1)            # tissue blobs, holes, debris
    write_slide("full.tif", 12_000, 12_000, mpp=0.5, seed=2, tissue=0.9)  # one large blob: mostly tissue

Tissue is a union of lobed ellipses with a few background holes and small debris specks; the
layout is analytic, so any level is drawn without holding the level-0 image in memory. Tiles
entirely inside or outside tissue are JPEG-encoded once and reused; only boundary tiles are
drawn and encoded one by one, so an 80 000 x 60 000 slide is written in seconds. Levels are
downsampled by 4 (1, 4, 16, 64, ...) as in Aperio files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

TILE = 256
BACKGROUND = 242
SAMPLES = 16          # inside-tests per tile side when classifying a tile
QUALITY = 80


@dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float
    phase: float = 0.0
    lobes: float = 0.0   # relative amplitude of the boundary's wobble

    @property
    def reach(self) -> float:
        """The largest boundary radius relative to (rx, ry)."""
        return 1.0 + 1.5 * self.lobes

    def misses(self, x: np.ndarray, y: np.ndarray) -> bool:
        """True when the box spanned by ``x`` and ``y`` lies outside this shape's bounding box."""
        rx, ry = self.rx * self.reach, self.ry * self.reach
        return bool(x.max() < self.cx - rx or x.min() > self.cx + rx or y.max() < self.cy - ry
                    or y.min() > self.cy + ry)

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = (x - self.cx) / self.rx, (y - self.cy) / self.ry
        r2 = dx * dx + dy * dy
        if not self.lobes:
            return r2 < 1.0
        low = (2.0 - self.reach) ** 2
        out = r2 < low
        edge = (r2 >= low) & (r2 < self.reach**2)   # only these need the angle
        if edge.any():
            dxe, dye = np.broadcast_to(dx, r2.shape)[edge], np.broadcast_to(dy, r2.shape)[edge]
            theta = np.arctan2(dye, dxe)
            e = 1.0 + self.lobes * (np.sin(3 * theta + self.phase) + 0.5 * np.sin(7 * theta + 2 * self.phase))
            out[edge] = r2[edge] < e * e
        return out


@dataclass(frozen=True)
class Layout:
    """Tissue = union(blobs) minus union(holes), plus debris specks."""

    width: int
    height: int
    blobs: tuple[Ellipse, ...]
    holes: tuple[Ellipse, ...]
    debris: tuple[Ellipse, ...]

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast(x, y).shape, bool)
        for shapes, add in ((self.blobs, True), (self.holes, False), (self.debris, True)):
            for e in shapes:
                if e.misses(x, y):
                    continue
                if add:
                    out |= e.inside(x, y)
                else:
                    out &= ~e.inside(x, y)
        return out


def make_layout(width: int, height: int, mpp: float, seed: int, tissue: float | None = None) -> Layout:
    """Random tissue layout; ``tissue`` (e.g. 0.9) gives one blob covering about that fraction."""
    rng = np.random.default_rng(seed)
    um = 1.0 / mpp
    if tissue is not None:
        r = math.sqrt(tissue * 4 / math.pi) / 2
        blob = Ellipse(width / 2, height / 2, r * width * 1.08, r * height * 1.08, rng.uniform(0, 6), 0.04)
        return Layout(width, height, (blob,), (), ())
    blobs, holes, debris = [], [], []
    for _ in range(int(rng.integers(3, 7))):
        rx, ry = rng.uniform(0.08, 0.2) * width, rng.uniform(0.08, 0.2) * height
        cx, cy = rng.uniform(rx * 1.1, width - rx * 1.1), rng.uniform(ry * 1.1, height - ry * 1.1)
        blobs.append(Ellipse(cx, cy, rx, ry, rng.uniform(0, 6), rng.uniform(0.03, 0.12)))
        for _ in range(int(rng.integers(0, 3))):   # holes of 150-400 µm radius inside the blob
            hr = rng.uniform(150, 400) * um
            holes.append(Ellipse(cx + rng.uniform(-0.4, 0.4) * rx, cy + rng.uniform(-0.4, 0.4) * ry, hr, hr * 0.8))
    for _ in range(int(rng.integers(5, 15))):        # specks of 20-50 µm radius (below the area threshold)
        dr = rng.uniform(20, 50) * um
        debris.append(Ellipse(rng.uniform(0, width), rng.uniform(0, height), dr, dr))
    return Layout(width, height, tuple(blobs), tuple(holes), tuple(debris))


def _textures(rng: np.random.Generator, n: int = 6) -> list[np.ndarray]:
    """Pink/purple tissue tiles with dark nuclei-like dots."""
    out = []
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    for _ in range(n):
        base = np.array([rng.uniform(190, 220), rng.uniform(110, 150), rng.uniform(160, 200)], np.float32)
        img = np.broadcast_to(base, (TILE, TILE, 3)).copy()
        img += rng.normal(0, 2, (TILE, TILE, 1)).astype(np.float32)
        for _ in range(60):
            cx, cy, r = rng.uniform(0, TILE), rng.uniform(0, TILE), rng.uniform(3, 7)
            dot = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            img[dot] = (90, 50, 130)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _encode(tile: np.ndarray) -> bytes:
    return imagecodecs.jpeg8_encode(tile, level=QUALITY)   # YCbCr JFIF: what openslide expects for RGB TIFFs


def _level_tiles(layout: Layout, down: int, shape: tuple[int, int], textures: list[np.ndarray],
                 encoded: list[bytes], background: np.ndarray, blank: bytes) -> Iterator[bytes]:
    """Encoded tiles of one level, row-major."""
    h, w = shape
    nty, ntx = -(-h // TILE), -(-w // TILE)
    step = TILE * down / SAMPLES
    offs = (np.arange(SAMPLES) + 0.5) * step
    pix = (np.arange(TILE) + 0.5) * down
    for ty in range(nty):
        y0 = ty * TILE * down
        xs = (np.arange(ntx)[:, None] * TILE * down + offs[None, :]).ravel()
        ys = y0 + offs
        inside = layout.inside(xs[None, :], ys[:, None]).reshape(SAMPLES, ntx, SAMPLES)
        full, empty = inside.all(axis=(0, 2)), ~inside.any(axis=(0, 2))
        for tx in range(ntx):
            k = (tx * 7 + ty * 13) % len(textures)
            if full[tx]:
                yield encoded[k]
            elif empty[tx]:
                yield blank
            else:
                m = layout.inside(tx * TILE * down + pix[None, :], y0 + pix[:, None])
                yield _encode(np.where(m[..., None], textures[k], background))


def write_slide(path: str | Path, width: int, height: int, mpp: float = 0.25, seed: int = 0,
                tissue: float | None = None) -> Layout:
    """Write a pyramidal JPEG TIFF (levels 1, 4, 16, ... until the long side is <= 2048 px)."""
    rng = np.random.default_rng(seed)
    layout = make_layout(width, height, mpp, seed, tissue)
    textures = _textures(rng)
    encoded = [_encode(t) for t in textures]
    background = np.clip(BACKGROUND + rng.normal(0, 1.5, (TILE, TILE, 1)), 0, 255).astype(np.uint8)
    background = np.repeat(background, 3, axis=2)
    blank = _encode(background)
    ppcm = 1e4 / mpp
    down = 1
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        while True:
            shape = (-(-height // down), -(-width // down))
            tif.write(_level_tiles(layout, down, shape, textures, encoded, background, blank),
                      shape=(*shape, 3), dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                      photometric="rgb", resolution=(ppcm / down, ppcm / down), resolutionunit="CENTIMETER",
                      subfiletype=0 if down == 1 else 1, metadata=None)
            if max(shape) <= 2048:
                break
            down *= 4
    tmp.replace(path)
    return layout


def true_mask(layout: Layout, shape: tuple[int, int]) -> np.ndarray:
    """The layout's tissue (blobs minus holes, without debris) on an (h, w) grid over the slide."""
    h, w = shape
    x = (np.arange(w) + 0.5) * layout.width / w
    y = (np.arange(h) + 0.5) * layout.height / h
    return Layout(layout.width, layout.height, layout.blobs, layout.holes, ()).inside(x[None, :], y[:, None])
