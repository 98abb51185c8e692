"""Training stage: one model × task × fold per call (``python -m pathomix.train``).

Reads the feature manifest, HVG genes, folds and clinical sheet; writes ``checkpoint.pt``,
``history.parquet``, ``predictions.parquet``, (H&E and mIF tile models) ``attention.parquet`` and
(mIF models) ``marker_attention.parquet`` under
``models/{model}/{task}/fold{k}/`` (DESIGN.md §4). See :mod:`pathomix.train.cli`.
"""

from pathomix.train.cli import main
from pathomix.train.params import DistillParams, TrainParams

__all__ = ["DistillParams", "TrainParams", "main"]
