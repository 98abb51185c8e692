"""Shared drawing helpers for the demo images: seeded RNGs, smooth noise, tissue blobs, ellipses.

Everything is vectorised numpy/scipy so that a whole demo cohort renders in seconds.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

# RNG stream ids: one independent stream per kind of content, so that e.g. changing the
# number of mIF images does not change the H&E slides.
STREAM_CLINICAL = 1
STREAM_GENES = 2
STREAM_HE = 3
STREAM_MIF = 4


def rng_for(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """An independent, reproducible generator for (seed, stream, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


@functools.lru_cache(maxsize=16)
def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Left source index and right-neighbour weight of bilinear interpolation (centres aligned)."""
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.minimum(np.floor(x).astype(np.intp), max(n_in - 2, 0))
    return i0, (x - i0).astype(np.float32)


def upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Separable bilinear upsampling of a 2-D array (at least 2×2) to ``shape``, float32."""
    small = small.astype(np.float32, copy=False)
    c0, cw = _interp_weights(shape[1], small.shape[1])
    cols = small[:, c0] * (1.0 - cw) + small[:, c0 + 1] * cw
    r0, rw = _interp_weights(shape[0], small.shape[0])
    top = cols[r0]
    top += (cols[r0 + 1] - top) * rw[:, None]
    return top


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, factor: int = 1
) -> np.ndarray:
    """Zero-mean, unit-sd gaussian-filtered noise of ``shape`` (float32).

    The noise is drawn on a grid ``factor`` times coarser and upsampled bilinearly, which
    makes large ``sigma`` cheap; ``sigma`` is in full-resolution pixels.
    """
    small = (max(2, -(-shape[0] // factor)), max(2, -(-shape[1] // factor)))
    field = ndi.gaussian_filter(rng.standard_normal(small, dtype=np.float32), sigma / factor, mode="wrap")
    field = (field - field.mean()) / max(float(field.std()), 1e-6)
    return upsample(field, shape) if factor > 1 else field


class NoiseBank:
    """Pre-drawn noise that slides crop from, so per-pixel noise costs no random draws.

    ``white`` is standard normal; ``fibres`` is anisotropic (streaks along x), both unit sd.
    Crops are taken at random offsets from the caller's generator, so content stays
    reproducible for a fixed seed.
    """

    def __init__(self, seed: int, size: int = 4_800_000, fibre_shape: tuple[int, int] = (1536, 2048)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
        self.white = rng.standard_normal(size, dtype=np.float32)
        fibres = ndi.gaussian_filter(rng.standard_normal(fibre_shape, dtype=np.float32), (0.7, 4.5))
        self.fibres = fibres / float(fibres.std())

    def normal(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """A read-only standard-normal array of ``shape`` (a view into the bank)."""
        n = int(np.prod(shape))
        off = int(rng.integers(0, len(self.white) - n + 1))
        return self.white[off : off + n].reshape(shape)

    def fibre(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        """Fibrillary texture of ``shape``, streaks along x or y at random."""
        transpose = bool(rng.random() < 0.5)
        h, w = (shape[1], shape[0]) if transpose else shape
        y = int(rng.integers(0, self.fibres.shape[0] - h + 1))
        x = int(rng.integers(0, self.fibres.shape[1] - w + 1))
        crop = self.fibres[y : y + h, x : x + w]
        return crop.T if transpose else crop


@functools.lru_cache(maxsize=2)
def noise_bank(seed: int) -> NoiseBank:
    """The process-wide noise bank for ``seed``."""
    return NoiseBank(seed)


def _bump_field(rng: np.random.Generator, shape: tuple[int, int], n_blobs: int, margin: float) -> np.ndarray:
    """Sum of ``n_blobs`` random elongated gaussian bumps placed inside the margin."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros(shape, np.float32)
    weights = [1.0] if n_blobs == 1 else [1.0, rng.uniform(0.55, 0.8)]
    slots = [(0.5, 0.5)] if n_blobs == 1 else [(0.3, 0.5), (0.72, 0.5)]
    for weight, (fx, fy) in zip(weights, slots, strict=True):
        cx = (fx + rng.uniform(-0.04, 0.04)) * w
        cy = (fy + rng.uniform(-0.04, 0.04)) * h
        rx = weight * (w - 2 * margin) / (2.2 * n_blobs) * rng.uniform(0.85, 1.15)
        ry = weight * (h - 2 * margin) / 2.2 * rng.uniform(0.85, 1.15)
        theta = rng.uniform(-0.4, 0.4)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        field += weight * np.exp(-0.5 * ((u / rx) ** 2 + (v / ry) ** 2))
    return field


def _taper(shape: tuple[int, int], margin: float, ramp: float) -> np.ndarray:
    """0 within ``margin`` of the border, rising smoothly to 1 over ``ramp`` pixels."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dist = np.minimum.reduce([yy, xx, shape[0] - 1 - yy, shape[1] - 1 - xx])
    t = np.clip((dist - margin) / max(ramp, 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _clean(low: np.ndarray) -> np.ndarray:
    """Fill holes and drop specks (< 2 % of the image) of a boolean mask."""
    mask = ndi.binary_fill_holes(low)
    labels, n = ndi.label(mask)
    if n > 1:
        sizes = ndi.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = np.isin(labels, np.flatnonzero(sizes >= 0.02 * mask.size) + 1)
    return mask


def tissue_mask(
    rng: np.random.Generator,
    shape: tuple[int, int],
    coverage: float,
    n_blobs: int = 1,
    margin: int = 32,
    factor: int = 8,
) -> np.ndarray:
    """Boolean mask of one or two smooth irregular tissue blobs covering about ``coverage``.

    The blob field (bumps + smooth noise) is built on a grid ``factor`` times coarser,
    thresholded at the quantile that gives ``coverage`` and cleaned there (holes filled,
    specks removed); the cleaned field is upsampled bilinearly and thresholded again for
    smooth edges. A band of ``margin`` pixels at the borders stays background.
    """
    h, w = shape
    small = (h // factor, w // factor)
    m = margin / factor
    field = _bump_field(rng, small, n_blobs, m) + 0.14 * smooth_noise(rng, small, 8.0)
    field -= 0.4 * (1.0 - _taper(small, m, 0.12 * min(small)))
    threshold = float(np.quantile(field, 1.0 - coverage))
    keep = _clean(field > threshold)
    eps = 1e-3
    field = np.where(keep, np.maximum(field, threshold + eps), np.minimum(field, threshold - eps))
    mask = upsample(field, shape) > threshold
    mask[:margin] = mask[-margin:] = False
    mask[:, :margin] = mask[:, -margin:] = False
    return mask


def stamp_ellipses(
    out: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    theta: np.ndarray,
    values: np.ndarray,
    inner: float = 0.0,
    chunk: int = 4096,
) -> None:
    """Draw filled ellipses (semi-axes ``a`` along ``theta``, ``b`` across) into ``out``.

    Each pixel keeps the maximum of its current value and the values of the ellipses that
    cover it. ``inner`` > 0 draws rings: the part of each ellipse outside the ellipse scaled
    by ``inner``. All nuclei are drawn at once from one stencil of offsets.
    """
    if len(cy) == 0:
        return
    r = int(np.ceil(max(float(a.max()), float(b.max()))))
    dy, dx = (g.ravel().astype(np.float32) for g in np.mgrid[-r : r + 1, -r : r + 1])
    h, w = out.shape
    for s in range(0, len(cy), chunk):
        sl = slice(s, s + chunk)
        cos, sin = np.cos(theta[sl])[:, None], np.sin(theta[sl])[:, None]
        u = (dx * cos + dy * sin) / a[sl, None]
        v = (-dx * sin + dy * cos) / b[sl, None]
        rr = u * u + v * v
        hit = (rr <= 1.0) & (rr >= inner * inner)
        yy = (np.round(cy[sl]).astype(np.int64)[:, None] + dy.astype(np.int64))[hit]
        xx = (np.round(cx[sl]).astype(np.int64)[:, None] + dx.astype(np.int64))[hit]
        vals = np.broadcast_to(values[sl, None], hit.shape)[hit]
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        np.maximum.at(out, (yy[ok], xx[ok]), vals[ok].astype(out.dtype))


def sample_points(
    rng: np.random.Generator, region: np.ndarray, n: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random (y, x) positions, float, inside the boolean ``region``.

    Uniform, or with density proportional to the non-negative ``weights`` map when given.
    """
    idx = np.flatnonzero(region)
    if len(idx) == 0 or n <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    if weights is None:
        pick = rng.choice(idx, size=n, replace=True)
    else:
        cdf = np.cumsum(weights.ravel()[idx], dtype=np.float64)
        pick = idx[np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), len(idx) - 1)]
    y, x = np.divmod(pick, region.shape[1])
    jitter = rng.uniform(-0.5, 0.5, size=(2, n))
    return (y + jitter[0]).astype(np.float32), (x + jitter[1]).astype(np.float32)


def tile_count(mask: np.ndarray, tile: int, min_fraction: float = 0.5) -> int:
    """Number of non-overlapping ``tile``-px tiles of ``mask`` with at least ``min_fraction`` tissue."""
    h, w = (mask.shape[0] // tile) * tile, (mask.shape[1] // tile) * tile
    if h == 0 or w == 0:
        return 0
    frac = mask[:h, :w].reshape(h // tile, tile, w // tile, tile).mean(axis=(1, 3))
    return int((frac >= min_fraction).sum())


def downsample2(img: np.ndarray) -> np.ndarray:
    """Halve a uint8 (H, W[, C]) image by 2×2 box averaging (odd last row/column dropped)."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    total = img[0:h:2, 0:w:2].astype(np.uint16) + img[1:h:2, 0:w:2] + img[0:h:2, 1:w:2] + img[1:h:2, 1:w:2]
    return ((total + 2) // 4).astype(np.uint8)
