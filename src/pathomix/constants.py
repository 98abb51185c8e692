"""Vocabularies shared by several stages, defined once (torch-free, fast to import).

The JSON schemas (workflow/schemas) state the same values for config and sheet validation;
tests/test_params.py checks that they agree with these.
"""

from __future__ import annotations

MODALITIES = ("he", "mif")              # slides.tsv `modality`: H&E, multiplex immunofluorescence
BAD_TILE_POLICIES = ("error", "skip")   # features.on_bad_tile: a tile whose image data cannot be read
SUBSPACES = ("tumour", "tme")           # gene subspaces (genes/subspaces.parquet, DMSF/KS-Fusion branches)
