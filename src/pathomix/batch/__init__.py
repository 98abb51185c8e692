"""Slide batches: tiling and extraction of many slides per job, for cohorts too large for one job per
slide (``slide_batches`` in the config). See :mod:`pathomix.batch.cli`."""
