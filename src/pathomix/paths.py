"""The one place where result paths are built (DESIGN.md §4).

Both the Snakemake rules and the stage code call these, so a layout change is made once.
Magnifications are written like ``20x``; folds like ``fold0``.
"""

from __future__ import annotations

from pathlib import Path

# ---- file names of a training job (models/{model}/{task}/fold{k}/), written by pathomix.train
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.parquet"
PREDICTIONS = "predictions.parquet"
ATTENTION = "attention.parquet"  # H&E and mIF tile models: attention of the test patients' tiles
MARKER_ATTENTION = "marker_attention.parquet"  # mIF models: attention per marker
GENE_IMPORTANCE = "gene_importance.parquet"  # gene-subspace models
SELECTION = "selection.json"  # train.select: the candidate a selection chose in this task and fold
# the outputs every training job declares (rule train and train_joint_<model>)
MODEL_OUTPUTS = {"checkpoint": CHECKPOINT, "history": HISTORY, "predictions": PREDICTIONS}
# ---- file names of the evaluation (eval/)
METRICS = "metrics.parquet"
SUMMARY = "summary.csv"
SUMMARY_FIGURE = "summary.png"
ENCODER_FIGURE = "encoders.png"  # in figures(): several encoders, pooled AUC / C-index per model × encoder
HEATMAP_GRID = "{model}__{head}.png"  # in heatmaps(): one grid per WSI model × attention head


def mag_name(mag: str | float) -> str:
    """``20`` or ``"20"`` or ``"20x"`` → ``"20x"``."""
    s = str(mag).rstrip("x")
    return f"{float(s):g}x"


def tiles(results: str | Path, mag: str, slide_id: str) -> Path:
    return Path(results) / "tiles" / mag_name(mag) / f"{slide_id}.h5"


def tile_qc(results: str | Path, mag: str, slide_id: str) -> Path:
    return Path(results) / "tiles" / mag_name(mag) / "qc" / f"{slide_id}.png"


def tile_batch(results: str | Path, batch: int | str) -> Path:
    """Marker of a tiling batch job (large cohorts): the slides and stores it covers."""
    return Path(results) / "tiles" / "batches" / f"{batch}.parquet"


def feature_batch(results: str | Path, encoder: str, batch: int | str) -> Path:
    """Marker of an extraction batch job (large cohorts)."""
    return Path(results) / "features" / encoder / "batches" / f"{batch}.parquet"


def features(results: str | Path, encoder: str, mag: str, slide_id: str) -> Path:
    return Path(results) / "features" / encoder / mag_name(mag) / f"{slide_id}.h5"


def manifest(results: str | Path, encoder: str) -> Path:
    return Path(results) / "features" / encoder / "manifest.parquet"


def results_of_manifest(manifest_path: str | Path) -> Path:
    """The results folder a manifest's store paths are relative to (inverse of :func:`manifest`)."""
    return Path(manifest_path).parents[2]


def hvg(results: str | Path, fold: int | str) -> Path:
    """The fold's highly variable genes, selected on its training patients (every patient's values)."""
    return Path(results) / "genes" / f"fold{fold}" / "hvg.parquet"


def subspaces(results: str | Path, fold: int | str) -> Path:
    return Path(results) / "genes" / f"fold{fold}" / "subspaces.parquet"


def folds(results: str | Path) -> Path:
    return Path(results) / "splits" / "folds.parquet"


def model_dir(results: str | Path, model: str, task: str, fold: int | str) -> Path:
    """``models/{model}/{task}/fold{k}``; ``model`` is a trained name: the model (a variant) with the first
    encoder, ``{model}@{encoder}`` with a further one (pathomix.catalog.variants: model instances)."""
    return Path(results) / "models" / model / task / f"fold{fold}"


def model_file(results: str | Path, model: str, task: str, fold: int | str, name: str) -> Path:
    """One file of a training job, e.g. ``model_file(results, "abmil", "diagnosis", 0, CHECKPOINT)``."""
    return model_dir(results, model, task, fold) / name


def eval_dir(results: str | Path) -> Path:
    return Path(results) / "eval"


def metrics(results: str | Path) -> Path:
    return eval_dir(results) / METRICS


def summary(results: str | Path) -> Path:
    """The long numeric CSV of the pooled metrics (one row per model × task × metric)."""
    return eval_dir(results) / SUMMARY


def figures(results: str | Path) -> Path:
    return eval_dir(results) / "figures"


def summary_figure(results: str | Path) -> Path:
    return figures(results) / SUMMARY_FIGURE


def comparison(results: str | Path, ext: str) -> Path:
    return eval_dir(results) / f"comparison.{ext}"


def selection(results: str | Path, ext: str) -> Path:
    """train.select: what each selection chose per task and fold, with the candidates' validation scores."""
    return eval_dir(results) / f"selection.{ext}"


def encoders(results: str | Path, ext: str) -> Path:
    """Several encoders: the encoder × model × task table (csv, html)."""
    return eval_dir(results) / f"encoders.{ext}"


def cohorts(results: str | Path, ext: str) -> Path:
    return eval_dir(results) / f"cohorts.{ext}"


def heatmaps(results: str | Path) -> Path:
    """Folder of the heatmap grids ``HEATMAP_GRID`` (one per WSI model × attention head)."""
    return eval_dir(results) / "heatmaps"


def heatmap_exports(results: str | Path) -> Path:
    """Folder of one overlay PNG per slide × model × task × head × magnification (not in the report)."""
    return eval_dir(results) / "heatmap_slides"


def gene_view(results: str | Path) -> Path:
    return eval_dir(results) / "genes.png"


def provenance(results: str | Path, ext: str) -> Path:
    return eval_dir(results) / f"provenance.{ext}"
