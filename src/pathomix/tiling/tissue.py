"""Tissue masks on a low-resolution thumbnail (scikit-image).

H&E: HSV saturation with an Otsu threshold, restricted to pixels that are neither white
nor black. mIF: the sum of the normalised log1p non-autofluorescence channels, Otsu.
The Otsu threshold is fitted on the image area-reduced 2x (:func:`half`) and applied at full
resolution. Both: closing + opening, holes smaller than ``min_region_um2`` filled, regions smaller
than it removed. A nearly uniform image (blank glass, empty channel) has no tissue.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import numpy as np
from PIL import Image
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.morphology import disk

from pathomix.tiling.morph import binary_closing, binary_opening

log = logging.getLogger(__name__)

MIN_SPREAD = 0.05        # signal p99 - p1 below this (on a 0..1 scale) = uniform image, no tissue
MIN_SATURATION = 0.05    # H&E: tissue is at least this saturated, whatever Otsu says
WHITE_LEVEL = 235        # H&E: a pixel whose darkest channel is above this is background
BLACK_VALUE = 0.15       # H&E: HSV value below this is ink, dirt or scanner black
MORPH_RADIUS_UM = 16.0   # closing/opening radius
MIN_MASK_PX = 4          # thumbnails smaller than this (either side) have no usable mask


@functools.cache
def _he_tables() -> tuple[np.ndarray, np.ndarray]:
    """skimage's HSV saturation, and the H&E validity test, for every uint8 (max, min) channel pair.

    Both flat (65 536,), indexed by ``max << 8 | min``. Saturation depends only on a pixel's largest
    and smallest channel and value only on the largest, so a look-up gives exactly what ``rgb2hsv``
    gives, without its float64 image and hue.
    """
    high, low = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    hsv = rgb2hsv(np.stack([high, low, low], axis=-1))   # entries with low > high are never looked up
    valid = (low <= WHITE_LEVEL) & (hsv[..., 2] >= BLACK_VALUE)
    return hsv[..., 1].ravel(), valid.ravel()


def _he_index(rgb: np.ndarray) -> np.ndarray:
    """uint16 ``max << 8 | min`` of the channels of an (h, w, 3) uint8 image."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(r, g), b).astype(np.uint16)
    high <<= 8
    high |= np.minimum(np.minimum(r, g), b)
    return high


def he_signal(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(saturation in 0..1, valid pixels) of an (h, w, 3) uint8 RGB thumbnail."""
    if rgb.dtype != np.uint8:
        hsv = rgb2hsv(rgb)
        return hsv[..., 1], (rgb.min(axis=2) <= WHITE_LEVEL) & (hsv[..., 2] >= BLACK_VALUE)
    index = _he_index(rgb)
    saturation, valid = _he_tables()
    return saturation.take(index), valid.take(index)


def half(image: np.ndarray) -> np.ndarray:
    """The (h, w) or (h, w, 3) image area-reduced 2x: each pixel the mean of a 2x2 block (Pillow's
    ``reduce`` for uint8 RGB; otherwise in numpy, an odd last row or column dropped).

    Otsu's threshold is fitted on this, not on the mask-resolution pixels, because their spread
    depends on how the slide's level was resampled: a converter's sharp (aliased) 16x level has a
    broader saturation histogram than a box filter of level 0 with the same mean colour, which moved
    Otsu from 0.19 to 0.22 on the DICOM conversion of CMU-1-Small-Region and cost 4 of 34 tiles at
    20x. At 2x the mask's pixel size the thresholds fitted on its six levels lie within 0.006
    (0.177–0.183; the SVS's 0.179).
    """
    if image.dtype == np.uint8 and image.ndim == 3:
        return np.asarray(Image.fromarray(image).reduce(2))
    h, w = image.shape[0] // 2, image.shape[1] // 2
    return image[:2 * h, :2 * w].reshape(h, 2, w, 2, *image.shape[2:]).mean(axis=(1, 3))


def _fit_image(image: np.ndarray) -> np.ndarray:
    """What the threshold is fitted on: :func:`half` of the image, or the image itself when that
    would be smaller than a usable mask."""
    return half(image) if min(image.shape[:2]) >= 2 * MIN_MASK_PX else image


def _sorted_counts(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(values, kind="stable")
    return values[order], np.cumsum(counts[order])


def _order_stat(sorted_values: np.ndarray, cum: np.ndarray, k: int) -> float:
    """The k-th smallest (0-based, clipped to the range) of the multiset given by values and counts."""
    k = min(max(k, 0), int(cum[-1]) - 1)
    return float(sorted_values[np.searchsorted(cum, k, side="right")])


def _spread_below(values: np.ndarray, counts: np.ndarray, signal: Callable[[], np.ndarray]) -> bool:
    """``p99 - p1 < MIN_SPREAD`` of the multiset, as ``np.percentile`` decides it.

    A linear-interpolated percentile lies between the order statistics around its index; when
    those brackets settle the comparison, no full-size sort is needed. Otherwise ``signal()``
    materialises the pixels and np.percentile decides.
    """
    sv, cum = _sorted_counts(values, counts)
    n = int(cum[-1])
    bounds = []
    for q in (0.99, 0.01):
        i = int(math.floor((n - 1) * q))
        bounds.append((_order_stat(sv, cum, i - 1), _order_stat(sv, cum, i + 2)))
    (lo99, hi99), (lo1, hi1) = bounds
    if lo99 - hi1 >= MIN_SPREAD * (1 + 1e-9):
        return False
    if hi99 - lo1 < MIN_SPREAD * (1 - 1e-9):
        return True
    return bool(np.subtract(*np.percentile(signal(), [99, 1])) < MIN_SPREAD)


def _otsu_counts(values: np.ndarray, counts: np.ndarray) -> float:
    """skimage's ``threshold_otsu`` of the multiset: the same 256-bin histogram over its range."""
    hist, edges = np.histogram(values, bins=256, weights=counts)
    return float(threshold_otsu(hist=(hist.astype(np.int64), (edges[:-1] + edges[1:]) / 2.0)))


def _he_foreground(rgb: np.ndarray) -> np.ndarray:
    """``_otsu_foreground(*he_signal(rgb), floor=MIN_SATURATION, fit=he_signal(_fit_image(rgb))[0])``
    for uint8 RGB, via the pixels' (max, min) pairs: at most 65 536 distinct saturations, so the
    percentiles, the Otsu histogram and the threshold are computed on counts instead of on a float64
    image."""
    fit = _he_index(_fit_image(rgb))
    saturation, valid = _he_tables()
    counts = np.bincount(fit.ravel(), minlength=len(saturation))
    present = np.flatnonzero(counts)
    values, weights = saturation[present], counts[present]
    if _spread_below(values, weights, lambda: saturation.take(fit)):
        return np.zeros(rgb.shape[:2], bool)
    threshold = max(_otsu_counts(values, weights), MIN_SATURATION)
    return (valid & (saturation > threshold)).take(_he_index(rgb))


def mif_signal(stack: np.ndarray, autofluorescence: list[bool] | None = None) -> np.ndarray:
    """Sum of per-channel normalised log1p intensities of the non-AF channels, scaled to 0..1."""
    flags = np.asarray(autofluorescence if autofluorescence is not None else [False] * len(stack), bool)
    if flags.all():
        log.warning("every mIF channel is flagged autofluorescence; the tissue mask uses all of them")
        flags[:] = False
    x = np.log1p(np.clip(stack[~flags].astype(np.float32), 0, None))
    scale = np.percentile(x.reshape(len(x), -1), 99, axis=1) if x.size else np.ones(len(x))
    scale[scale <= 0] = 1.0
    total = np.clip(x / scale[:, None, None], 0, 1).sum(axis=0)
    peak = float(total.max()) if total.size else 0.0
    return total / peak if peak > 0 else total


def _otsu_foreground(signal: np.ndarray, valid: np.ndarray, floor: float = 0.0,
                     fit: np.ndarray | None = None) -> np.ndarray:
    """``valid & (signal > Otsu)``; the threshold (and the uniform-image test) is fitted on every
    pixel (tissue and glass) of ``fit``, by default ``_fit_image(signal)``."""
    fit = _fit_image(signal) if fit is None else fit
    if np.subtract(*np.percentile(fit, [99, 1])) < MIN_SPREAD:
        return np.zeros(signal.shape, bool)
    threshold = max(float(threshold_otsu(fit)), floor)
    return valid & (signal > threshold)


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Remove connected regions (8-connectivity) with fewer than ``min_px`` pixels."""
    labels = label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    if keep[1:].all():   # nothing to remove (the usual case): the mask is its own answer
        return mask.copy()
    return keep[labels]


def clean_mask(mask: np.ndarray, mask_mpp: float, min_region_um2: float) -> np.ndarray:
    """Closing + opening, fill small holes, remove small regions (sizes in µm)."""
    radius = max(1, round(MORPH_RADIUS_UM / mask_mpp))
    footprint = disk(radius).astype(bool)
    padded = np.pad(mask, radius + 1, mode="edge")   # edge padding: tissue at the border stays
    padded = binary_opening(binary_closing(padded, footprint), footprint)
    mask = padded[radius + 1:-radius - 1, radius + 1:-radius - 1]
    min_px = min_region_um2 / mask_mpp**2
    if min_px > 1:
        mask = ~_drop_small(~mask, min_px)
        mask = _drop_small(mask, min_px)
    return mask


def tissue_mask(thumb: np.ndarray, modality: str, mask_mpp: float, min_region_um2: float,
                autofluorescence: list[bool] | None = None) -> np.ndarray:
    """Boolean (h, w) tissue mask of a thumbnail at ``mask_mpp`` µm/px.

    ``thumb`` is (h, w, 3) uint8 RGB for ``modality="he"``, (C, h, w) float for ``"mif"``.
    """
    shape = thumb.shape[:2] if modality == "he" else thumb.shape[1:]
    if min(shape) < MIN_MASK_PX:
        return np.zeros(shape, bool)
    if modality == "he" and thumb.dtype == np.uint8:
        raw = _he_foreground(thumb)
    elif modality == "he":
        signal, valid = he_signal(thumb)
        raw = _otsu_foreground(signal, valid, floor=MIN_SATURATION, fit=he_signal(_fit_image(thumb))[0])
    else:
        signal = mif_signal(thumb, autofluorescence)
        raw = _otsu_foreground(signal, np.ones(signal.shape, bool))
    return clean_mask(raw, mask_mpp, min_region_um2)
