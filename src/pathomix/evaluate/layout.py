"""Figure names of the evaluation, in one place for the rules and the stage code.

Light on purpose (no matplotlib, no torch): the Snakefile imports it to declare every figure
in advance, and the stage writes exactly these names. The paths themselves are built in
``pathomix.paths`` (re-exported here for the stage code that reads them from this module).
"""

from __future__ import annotations

from pathomix.paths import (  # noqa: F401 (re-exported)
    HEATMAP_GRID,
    MARKER_ATTENTION,
    cohorts,
    comparison,
    eval_dir,
    gene_view,
    heatmap_exports,
    heatmaps,
    provenance,
)

# task kind → the per model × task figures the evaluate stage draws
FIGURES_BY_KIND: dict[str, tuple[str, ...]] = {
    "classification": ("roc", "calibration", "training"),
    "survival": ("km", "training"),
}
MARKER_FIGURE = "markers"  # mIF models (MARKER_ATTENTION next to predictions): attention per marker, any task kind


def figure_names(model: str, task: str, task_kind: str, mif: bool = False) -> dict[str, str]:
    """figure kind → file name (in ``eval/figures/``) for one model × task; ``mif`` models (those
    that write ``marker_attention.parquet``) also get the per-marker attention figure."""
    kinds = FIGURES_BY_KIND[task_kind] + ((MARKER_FIGURE,) if mif else ())
    return {k: f"{model}_{task}_{k}.png" for k in kinds}
