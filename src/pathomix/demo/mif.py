"""Synthetic multiplex immunofluorescence (mIF): 6 markers + 1 autofluorescence channel.

Cells sit in one tissue blob (background ≈ 0). Every cell has a DAPI nucleus; tumour cells
are SOX2+ (nuclear) with GFAP+ cytoplasm (weaker in oligodendroglioma), a risk-dependent
fraction of them is Ki67+; macrophages are CD68+ (cytoplasm) and cytotoxic T cells CD8+
(membrane ring). Ki67 and CD68 fractions rise with the patient's latent survival risk, CD8
falls with it. A smooth, broad autofluorescence signal is *added* to every marker channel
(with a per-channel gain) and also stored alone as the last channel, so subtracting it
helps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from pathomix.demo.shapes import NoiseBank, sample_points, smooth_noise, stamp_ellipses, tissue_mask
from pathomix.io.atomic import atomic_path

MIF_MPP = 0.5
MIF_SIZE = 512
CHANNELS = ("DAPI", "GFAP", "Ki67", "CD68", "CD8", "SOX2", "Autofluorescence")
AF_INDEX = CHANNELS.index("Autofluorescence")
AF_GAIN = np.array([0.6, 0.9, 0.7, 1.0, 0.8, 0.6], np.float32)  # AF leaking into each marker
GFAP_LEVEL = {"astrocytoma": 1.0, "oligodendroglioma": 0.35, "glioblastoma": 0.8}
KI67_OFFSET = {"astrocytoma": -1.6, "oligodendroglioma": -1.3, "glioblastoma": -0.4}


@dataclass(frozen=True)
class MifSpec:
    """What to draw: the slide id, the patient's class and latent survival risk."""

    slide_id: str
    diagnosis: str
    risk: float


def cell_fractions(diagnosis: str, risk: float) -> dict[str, float]:
    """Expected cell-type fractions: CD68 and Ki67 up with risk, CD8 down."""
    cd68 = float(np.clip(0.12 * np.exp(0.45 * risk), 0.02, 0.35))
    cd8 = float(np.clip(0.10 * np.exp(-0.6 * risk), 0.01, 0.3))
    ki67 = float(1.0 / (1.0 + np.exp(-(KI67_OFFSET[diagnosis] + 0.9 * risk))))
    return {"cd68": cd68, "cd8": cd8, "ki67_of_tumour": ki67}


def _cells(rng: np.random.Generator, tissue: np.ndarray, spec: MifSpec) -> dict[str, np.ndarray]:
    """Cell centres, a type per cell (0 tumour, 1 macrophage, 2 T cell) and Ki67 status."""
    n = int(rng.uniform(22.0, 28.0) * tissue.sum() / 1e4)
    cy, cx = sample_points(rng, tissue, n)
    f = cell_fractions(spec.diagnosis, spec.risk)
    kind = rng.choice(3, size=n, p=[1.0 - f["cd68"] - f["cd8"], f["cd68"], f["cd8"]])
    ki67 = (kind == 0) & (rng.random(n) < f["ki67_of_tumour"])
    return {"cy": cy, "cx": cx, "kind": kind, "ki67": ki67, "theta": rng.uniform(0, np.pi, n)}


def _draw(
    shape: tuple[int, int], cells: dict[str, np.ndarray], sel: np.ndarray, axes: tuple[float, float],
    level: np.ndarray, inner: float = 0.0,
) -> np.ndarray:
    """One channel: ellipses of ``axes`` for the selected cells with intensities ``level``."""
    out = np.zeros(shape, np.float32)
    n = int(sel.sum())
    a = np.full(n, axes[0], np.float32)
    b = np.full(n, axes[1], np.float32)
    stamp_ellipses(out, cells["cy"][sel], cells["cx"][sel], a, b, cells["theta"][sel].astype(np.float32),
                   level[sel], inner=inner)
    return out


def _markers(rng: np.random.Generator, cells: dict[str, np.ndarray], spec: MifSpec) -> np.ndarray:
    """(6, H, W) float32 true marker signal before autofluorescence and noise."""
    shape = (MIF_SIZE, MIF_SIZE)
    n = len(cells["cy"])
    bright = rng.lognormal(0.0, 0.25, n).astype(np.float32)
    tumour, macro, tcell = (cells["kind"] == k for k in range(3))
    everyone = np.ones(n, bool)
    return np.stack([
        _draw(shape, cells, everyone, (4.0, 3.5), 1800 * bright),
        _draw(shape, cells, tumour, (10.0, 5.0), 1400 * GFAP_LEVEL[spec.diagnosis] * bright),
        _draw(shape, cells, cells["ki67"], (3.6, 3.2), 2600 * bright),
        _draw(shape, cells, macro, (7.5, 6.5), 2000 * bright),
        _draw(shape, cells, tcell, (5.5, 5.0), 2200 * bright, inner=0.7),
        _draw(shape, cells, tumour, (3.8, 3.4), 1600 * bright),
    ])


def _autofluorescence(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """Smooth, broad, non-negative signal over the tissue."""
    soft = ndi.gaussian_filter(tissue.astype(np.float32), 8.0)
    level = rng.uniform(500, 900)
    return soft * np.clip(level * (1.0 + 0.45 * smooth_noise(rng, tissue.shape, 50.0, factor=4)), 0, None)


def render_mif(spec: MifSpec, rng: np.random.Generator, bank: NoiseBank) -> tuple[np.ndarray, np.ndarray]:
    """(7, 512, 512) uint16 CYX image (last channel = autofluorescence) and its tissue mask."""
    tissue = tissue_mask(rng, (MIF_SIZE, MIF_SIZE), coverage=rng.uniform(0.65, 0.75), n_blobs=1,
                         margin=24, factor=4)
    cells = _cells(rng, tissue, spec)
    markers = ndi.gaussian_filter(_markers(rng, cells, spec), (0, 1.0, 1.0))  # optical blur
    af = _autofluorescence(rng, tissue)
    signal = np.concatenate([markers + AF_GAIN[:, None, None] * af, af[None]], axis=0)
    # shot noise (gaussian approximation of Poisson) plus read noise
    noisy = signal + 3.0 + np.sqrt(signal + 3.0 + 16.0) * bank.normal(rng, signal.shape)
    return np.clip(np.round(noisy), 0, 65535).astype(np.uint16), tissue


def write_ome_tiff(path: Path, data: np.ndarray, mpp: float = MIF_MPP) -> None:
    """Write a tiled, zlib-compressed OME-TIFF with channel names and physical pixel size."""
    metadata = {
        "axes": "CYX",
        "Channel": {"Name": list(CHANNELS)},
        "PhysicalSizeX": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp,
        "PhysicalSizeYUnit": "µm",
    }
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, ome=True, photometric="minisblack", tile=(256, 256),
                         compression="zlib", metadata=metadata)
