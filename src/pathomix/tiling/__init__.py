"""Tiling stage: tissue mask → tile grid → CLAM/TRIDENT-compatible coords store + QC image.

Run as ``python -m pathomix.tiling --slide-id ID --path PATH --modality he|mif --mag 20x
--target-mpp 0.5 [--mpp F] [--channels-sheet TSV] --params JSON --out OUT.h5 --qc QC.png``.
"""

from pathomix.tiling.params import TilingParams
from pathomix.tiling.stage import TilingResult, main, tile_slide

__all__ = ["TilingParams", "TilingResult", "main", "tile_slide"]
