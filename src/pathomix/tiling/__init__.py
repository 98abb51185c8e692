"""Tiling stage: tissue mask → tile grid → CLAM/TRIDENT-compatible coords store + QC image.

Run as ``python -m pathomix.tiling --slide-id ID --path PATH --modality he|mif --mag 20x [10x]
--target-mpp 0.5 [1.0] [--mpp F] [--channels-sheet TSV] --params JSON --out OUT.h5 [..] --qc QC.png [..]``
(one value per magnification; the tissue mask is shared).
"""

from pathomix.tiling.params import TilingParams
from pathomix.tiling.stage import TilingResult, Tissue, detect_tissue, main, tile_slide

__all__ = ["TilingParams", "TilingResult", "Tissue", "detect_tissue", "main", "tile_slide"]
