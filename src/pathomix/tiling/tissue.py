"""Tissue masks on a low-resolution thumbnail (scikit-image).

H&E: HSV saturation with an Otsu threshold, restricted to pixels that are neither white
nor black. mIF: the sum of the normalised log1p non-autofluorescence channels, Otsu.
Both: closing + opening, holes smaller than ``min_region_um2`` filled, regions smaller
than it removed. A nearly uniform image (blank glass, empty channel) has no tissue.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.morphology import disk

log = logging.getLogger(__name__)

MIN_SPREAD = 0.05        # signal p99 - p1 below this (on a 0..1 scale) = uniform image, no tissue
MIN_SATURATION = 0.05    # H&E: tissue is at least this saturated, whatever Otsu says
WHITE_LEVEL = 235        # H&E: a pixel whose darkest channel is above this is background
BLACK_VALUE = 0.15       # H&E: HSV value below this is ink, dirt or scanner black
MORPH_RADIUS_UM = 16.0   # closing/opening radius
MIN_MASK_PX = 4          # thumbnails smaller than this (either side) have no usable mask


def he_signal(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(saturation in 0..1, valid pixels) of an (h, w, 3) uint8 RGB thumbnail."""
    hsv = rgb2hsv(rgb)
    valid = (rgb.min(axis=2) <= WHITE_LEVEL) & (hsv[..., 2] >= BLACK_VALUE)
    return hsv[..., 1], valid


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


def _otsu_foreground(signal: np.ndarray, valid: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """``valid & (signal > Otsu)``; the threshold is fitted on every pixel (tissue and glass)."""
    if np.subtract(*np.percentile(signal, [99, 1])) < MIN_SPREAD:
        return np.zeros(signal.shape, bool)
    threshold = max(float(threshold_otsu(signal)), floor)
    return valid & (signal > threshold)


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Remove connected regions (8-connectivity) with fewer than ``min_px`` pixels."""
    labels = label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def clean_mask(mask: np.ndarray, mask_mpp: float, min_region_um2: float) -> np.ndarray:
    """Closing + opening, fill small holes, remove small regions (sizes in µm)."""
    radius = max(1, round(MORPH_RADIUS_UM / mask_mpp))
    footprint = disk(radius).astype(bool)
    padded = np.pad(mask, radius + 1, mode="edge")   # edge padding: tissue at the border stays
    padded = ndi.binary_opening(ndi.binary_closing(padded, footprint), footprint)
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
    if modality == "he":
        signal, valid = he_signal(thumb)
        raw = _otsu_foreground(signal, valid, floor=MIN_SATURATION)
    else:
        signal = mif_signal(thumb, autofluorescence)
        raw = _otsu_foreground(signal, np.ones(signal.shape, bool))
    return clean_mask(raw, mask_mpp, min_region_um2)
