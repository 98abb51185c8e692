"""Synthetic H&E slides: Beer–Lambert stain mixing of eosin stroma and haematoxylin nuclei.

The H&E separates IDH-wild-type glioblastoma from the IDH-mutant gliomas strongly, and the
two IDH-mutant classes from each other only through small regions (the genes do the opposite,
see :mod:`pathomix.demo.cohort`), so that histology + genes beats either alone:

* glioblastoma: very dense, dark, pleomorphic nuclei, pale-pink necrotic patches with
  nuclear debris, darker overall;
* astrocytoma and oligodendroglioma share one lower-grade look (moderately dense nuclei on
  pale pink stroma); only a patchy ``SIGNATURE_FRACTION`` of the viable tissue shows the
  class: sparse elongated nuclei on fibrillary stroma (astrocytoma), or dense round nuclei
  with a clear perinuclear halo ("fried egg") on lavender stroma (oligodendroglioma).

The patient's latent survival risk and the grade raise nuclear density a little.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from pathomix.demo.shapes import (
    NoiseBank,
    downsample2,
    sample_points,
    smooth_noise,
    stamp_ellipses,
    tissue_mask,
)
from pathomix.io.atomic import atomic_path

HE_MPP = 0.5
# Typical optical-density vectors of haematoxylin and eosin (Macenko et al. 2009), RGB order.
HEMA_OD = np.array([0.5626, 0.7201, 0.4062], np.float32)
EOSIN_OD = np.array([0.2159, 0.8012, 0.5581], np.float32)
BACKGROUND = 240.0


@dataclass(frozen=True)
class Style:
    """Look of one WHO-2021 class."""

    density: float  # nuclei per 10^4 px² of viable tissue at 0.5 µm/px
    axes: tuple[float, float]  # mean nuclear semi-axes (long, short), px
    pleomorphism: float  # sd of the log nuclear size
    hema: float  # nuclear haematoxylin OD
    bg_eosin: float  # stroma eosin OD
    bg_hema: float  # stroma haematoxylin OD (lavender tint)
    halo: float  # clear perinuclear halo width, px (0 = none)
    necrosis: float  # fraction of tissue that is necrotic
    fibril: float  # strength of the fibrillary texture


STYLES: dict[str, Style] = {
    "lower_grade": Style(8.0, (7.0, 4.4), 0.15, 1.1, 0.48, 0.11, 0.0, 0.0, 0.15),
    "astrocytoma": Style(6.5, (8.5, 3.4), 0.15, 1.08, 0.52, 0.07, 0.0, 0.0, 0.24),
    "oligodendroglioma": Style(10.0, (6.0, 5.4), 0.10, 1.15, 0.40, 0.16, 2.5, 0.0, 0.10),
    "glioblastoma": Style(20.0, (6.5, 5.0), 0.35, 1.55, 0.78, 0.14, 0.0, 0.2, 0.12),
}
# class → (style of the whole slide, style of its signature regions or None)
CLASS_LOOK: dict[str, tuple[str, str | None]] = {
    "astrocytoma": ("lower_grade", "astrocytoma"),
    "oligodendroglioma": ("lower_grade", "oligodendroglioma"),
    "glioblastoma": ("glioblastoma", None),
}
SIGNATURE_FRACTION = 0.12  # share of the viable tissue that shows an IDH-mutant class's signature


@dataclass(frozen=True)
class SlideSpec:
    """What to draw: the slide's class, the patient's latent risk and grade, and its size."""

    slide_id: str
    patient_id: str
    diagnosis: str
    risk: float
    grade: int
    width: int
    height: int
    n_blobs: int


def _stroma(
    rng: np.random.Generator, bank: NoiseBank, shape: tuple[int, int], style: Style
) -> tuple[np.ndarray, np.ndarray]:
    """Eosin and haematoxylin OD of the tissue background, with coarse and fibrillary texture."""
    tint = rng.lognormal(0.0, 0.12, size=2).astype(np.float32)
    coarse = smooth_noise(rng, shape, 40.0, factor=8)
    texture = 0.15 * coarse + style.fibril * bank.fibre(rng, shape) + 0.06 * bank.normal(rng, shape)
    eosin = (style.bg_eosin * tint[0]) * np.clip(1.0 + texture, 0.2, None)
    hema = (style.bg_hema * tint[1]) * np.clip(1.0 + 0.2 * coarse, 0.2, None)
    return eosin, hema


def _necrosis(rng: np.random.Generator, tissue: np.ndarray, fraction: float) -> np.ndarray:
    """Smooth patches covering about ``fraction`` of the tissue."""
    if fraction <= 0:
        return np.zeros_like(tissue)
    field = smooth_noise(rng, tissue.shape, 60.0, factor=8)
    threshold = np.quantile(field[::4, ::4][tissue[::4, ::4]], 1.0 - fraction * rng.uniform(0.7, 1.3))
    return tissue & (field > threshold)


def _nuclei(
    rng: np.random.Generator, viable: np.ndarray, style: Style, spec: SlideSpec
) -> tuple[np.ndarray, ...]:
    """Centres, semi-axes, orientations and haematoxylin load of the nuclei."""
    density = style.density * np.exp(0.18 * spec.risk) * (1.0 + 0.12 * (spec.grade - 2))
    density *= rng.lognormal(0.0, 0.12)
    n = int(density * viable.sum() / 1e4)
    regional = np.exp(0.5 * smooth_noise(rng, viable.shape, 90.0, factor=8))  # heterogeneous cellularity
    cy, cx = sample_points(rng, viable, n, weights=regional)
    size = rng.lognormal(0.0, style.pleomorphism, n)
    a = np.clip(style.axes[0] * size * rng.lognormal(0, 0.08, n), 1.5, 14.0)
    b = np.clip(style.axes[1] * size * rng.lognormal(0, 0.08, n), 1.5, 14.0)
    theta = rng.uniform(0, np.pi, n)
    load = style.hema * rng.lognormal(0.0, 0.12, n)
    return cy, cx, a.astype(np.float32), b.astype(np.float32), theta.astype(np.float32), load


def _debris(rng: np.random.Generator, necrotic: np.ndarray, out: np.ndarray) -> None:
    """Karyorrhectic dots scattered over necrosis."""
    n = int(10.0 * necrotic.sum() / 1e4)
    cy, cx = sample_points(rng, necrotic, n)
    r = rng.uniform(0.8, 1.8, n).astype(np.float32)
    stamp_ellipses(out, cy, cx, r, r, np.zeros(n, np.float32), rng.uniform(0.6, 1.2, n))


def _add_nuclei(
    rng: np.random.Generator, bank: NoiseBank, spec: SlideSpec, style: Style, viable: np.ndarray,
    necrotic: np.ndarray, eosin: np.ndarray, hema: np.ndarray,
) -> np.ndarray:
    """Stamp nuclei of ``style`` in ``viable`` (and halos, debris) into the stain maps; returns
    the new haematoxylin map."""
    cy, cx, a, b, theta, load = _nuclei(rng, viable, style, spec)
    if style.halo > 0:
        halo = np.zeros(eosin.shape, np.float32)
        stamp_ellipses(halo, cy, cx, a + style.halo, b + style.halo, theta, np.ones(len(cy), np.float32))
        eosin *= 1.0 - 0.85 * halo
        hema *= 1.0 - 0.9 * halo
    nuc = np.zeros(eosin.shape, np.float32)
    stamp_ellipses(nuc, cy, cx, a, b, theta, load)
    _debris(rng, necrotic, nuc)
    eosin[nuc > 0] *= 0.5
    return np.maximum(hema, nuc * (1.0 + 0.18 * bank.normal(rng, nuc.shape)))


def _to_rgb(rng: np.random.Generator, bank: NoiseBank, eosin: np.ndarray, hema: np.ndarray) -> np.ndarray:
    """Beer–Lambert: RGB = background · exp(−OD), plus a little sensor noise, as uint8."""
    rgb = np.empty((*eosin.shape, 3), np.uint8)
    for c in range(3):
        chan = BACKGROUND * np.exp(-(eosin * EOSIN_OD[c] + hema * HEMA_OD[c]))
        rgb[..., c] = np.clip(chan + 2.5 * bank.normal(rng, eosin.shape) + 0.5, 0, 255)
    return rgb


def _signature_regions(rng: np.random.Generator, viable: np.ndarray, fraction: float) -> np.ndarray:
    """Smooth patches covering about ``fraction`` of the viable tissue."""
    field = smooth_noise(rng, viable.shape, 50.0, factor=8)
    threshold = np.quantile(field[::4, ::4][viable[::4, ::4]], 1.0 - fraction)
    return viable & (field > threshold)


def render_he(spec: SlideSpec, rng: np.random.Generator, bank: NoiseBank) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3) level-0 image and its boolean tissue mask."""
    base_name, signature_name = CLASS_LOOK[spec.diagnosis]
    base = STYLES[base_name]
    shape = (spec.height, spec.width)
    tissue = tissue_mask(rng, shape, coverage=rng.uniform(0.55, 0.65), n_blobs=spec.n_blobs)
    eosin, hema = _stroma(rng, bank, shape, base)
    necrotic = _necrosis(rng, tissue, base.necrosis)
    eosin[necrotic] = 0.42 * (1.0 + 0.1 * bank.normal(rng, (int(necrotic.sum()),)))
    hema[necrotic] = 0.02
    viable = tissue & ~necrotic
    if signature_name is None:
        hema = _add_nuclei(rng, bank, spec, base, viable, necrotic, eosin, hema)
    else:
        signature = STYLES[signature_name]
        region = _signature_regions(rng, viable, SIGNATURE_FRACTION)
        sig_eosin, sig_hema = _stroma(rng, bank, shape, signature)
        eosin[region], hema[region] = sig_eosin[region], sig_hema[region]
        hema = _add_nuclei(rng, bank, spec, base, viable & ~region, necrotic, eosin, hema)
        hema = _add_nuclei(rng, bank, spec, signature, region, np.zeros_like(region), eosin, hema)
    eosin[~tissue] = 0.0
    hema[~tissue] = 0.0
    return _to_rgb(rng, bank, eosin, hema), tissue


def pyramid(img: np.ndarray, min_size: int = 256) -> list[np.ndarray]:
    """Level 0 and its factor-2 reductions, until the largest side is ≤ ``min_size``."""
    levels = [img]
    while max(levels[-1].shape[:2]) > min_size:
        levels.append(downsample2(levels[-1]))
    return levels


def write_pyramidal_tiff(path: Path, img: np.ndarray, mpp: float = HE_MPP, quality: int = 85) -> int:
    """Write a tiled JPEG pyramid that openslide opens as generic-tiff with ``openslide.mpp-x``.

    Written to a temporary sibling and renamed, so an existing file is whole. Returns the
    number of levels.
    """
    levels = pyramid(img)
    ppcm = 1e4 / mpp
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for i, level in enumerate(levels):
            tif.write(
                level,
                tile=(256, 256),
                compression="jpeg",
                compressionargs={"level": quality},
                photometric="rgb",
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )
    return len(levels)
