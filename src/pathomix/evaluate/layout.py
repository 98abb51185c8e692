"""File names of the evaluation outputs, in one place for the rules and the stage code.

Light on purpose (no matplotlib, no torch): the Snakefile imports it to declare every figure
in advance, and the stage writes exactly these names.
"""

from __future__ import annotations

from pathlib import Path

from pathomix import paths as P

# task kind → the per model × task figures the evaluate stage draws
FIGURES_BY_KIND: dict[str, tuple[str, ...]] = {
    "classification": ("roc", "calibration", "training"),
    "survival": ("km", "training"),
}
MARKER_FIGURE = "markers"  # mIF models (marker_attention.parquet): attention per marker, any task kind
MARKER_ATTENTION = "marker_attention.parquet"  # written by the training stage next to predictions.parquet


def eval_dir(results: str | Path) -> Path:
    return P.metrics(results).parent


def figure_names(model: str, task: str, task_kind: str, mif: bool = False) -> dict[str, str]:
    """figure kind → file name (in ``eval/figures/``) for one model × task; ``mif`` models (those
    that write ``marker_attention.parquet``) also get the per-marker attention figure."""
    kinds = FIGURES_BY_KIND[task_kind] + ((MARKER_FIGURE,) if mif else ())
    return {k: f"{model}_{task}_{k}.png" for k in kinds}


def comparison(results: str | Path, ext: str) -> Path:
    return eval_dir(results) / f"comparison.{ext}"


def cohorts(results: str | Path, ext: str) -> Path:
    return eval_dir(results) / f"cohorts.{ext}"


def heatmaps(results: str | Path) -> Path:
    """Folder of the heatmap grids ``{model}__{head}.png`` (one per WSI model × attention head)."""
    return eval_dir(results) / "heatmaps"


def heatmap_exports(results: str | Path) -> Path:
    """Folder of one overlay PNG per slide × model × task × head × magnification (not in the report)."""
    return eval_dir(results) / "heatmap_slides"


def gene_view(results: str | Path) -> Path:
    return eval_dir(results) / "genes.png"


def provenance(results: str | Path, ext: str) -> Path:
    return eval_dir(results) / f"provenance.{ext}"


HEATMAP_GRID = "{model}__{head}.png"
