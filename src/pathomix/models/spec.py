"""The model contract shared by every registered model.

A model is built by ``build(dims, task, params)`` and called as ``model(inputs)`` where
``inputs`` maps input names to tensors with a leading batch dimension:

- ``wsi_20x``, ``wsi_10x``, ... : H&E patch features ``(B, N, D)`` of the patient's bag at
  that magnification (key built by :func:`wsi_key`; absent when the bag is empty there);
- ``pos_20x``, ... (:func:`pos_key`): the H&E tiles' (x, y) positions ``(B, N, 2)`` on the tile grid, in tile units;
- ``mif_20x``, ... : mIF patch features ``(B, N, C, D)``, one embedding per marker channel of
  each tile (key built by :func:`mif_key`; the union of the patient's mIF slides);
- ``genes`` ``(B, G)``: all standardised HVG genes; ``genes_tumour`` / ``genes_tme``: the
  columns of the tumour and TME subspaces.

It returns a dict (:data:`OUTPUT_KEYS`): ``logits`` ``(B, task.n_outputs)``, ``features``
``(B, F)`` (the representation before the head; the distillation target), ``attention``
``{head: {mag: (B, N)}}`` over the tiles of the bag the model reads at that magnification
(:attr:`ModelSpec.tile_input`: the mIF bag for mIF models, else the H&E bag; empty for non-MIL
models) and ``aux`` ``{name: weighted loss}`` (auxiliary training terms, already multiplied by
their weights; empty when none).
Optionally ``branch_logits`` ``{branch: (B, n_outputs)}`` whose mean is ``logits``: the loop
then adds each branch's task loss and, with ``train.cgc``, coordinates their gradients on
``model.shared_parameters()`` (:mod:`pathomix.train.cgc`). Optionally ``marker_attention``
``{mag: (B, N, C)}`` (mIF models): per tile, a distribution over its C marker channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pathomix.tasks import Task

OUTPUT_KEYS = ("logits", "features", "attention", "aux")
OPTIONAL_OUTPUT_KEYS = ("branch_logits", "marker_attention")
GENE_INPUTS = ("genes", "genes_tumour", "genes_tme")
TILE_INPUTS = ("wsi", "mif")  # input kinds that are bags of tiles: H&E and mIF


def wsi_key(mag: str) -> str:
    """Input name of the H&E bag at magnification ``mag`` (e.g. ``wsi_20x``)."""
    return f"wsi_{mag}"


def pos_key(mag: str) -> str:
    """Input name of the tile-grid positions of the H&E bag at ``mag`` (e.g. ``pos_20x``)."""
    return f"pos_{mag}"


def mif_key(mag: str) -> str:
    """Input name of the mIF bag at magnification ``mag`` (e.g. ``mif_20x``)."""
    return f"mif_{mag}"


def tile_key(kind: str, mag: str) -> str:
    """Input name of the bag of ``kind`` (one of :data:`TILE_INPUTS`) at ``mag``."""
    if kind not in TILE_INPUTS:
        raise ValueError(f"unknown tile input {kind!r}; known: {TILE_INPUTS}")
    return f"{kind}_{mag}"


@dataclass(frozen=True)
class ModelParams:
    """Architecture parameters (the model part of the config's ``train:`` subtree).

    ``aux_losses`` maps an auxiliary loss name (see :mod:`pathomix.models.auxiliary`) to its weight;
    a model computes the terms it supports and ignores the others.
    """

    hidden: int = 128
    dropout: float = 0.25
    attn_heads: int = 1
    modality_dropout: float = 0.5  # multimodal models: share of training steps without the genes
    aux_losses: Mapping[str, float] = field(default_factory=lambda: {"igc": 0.1, "ggc": 1.0})
    mags: tuple[str, ...] = ()  # magnifications to use; () = the model's own (ModelSpec.mags)
    ita_tokens: int = 16  # DMSF student: cluster tokens per subspace and magnification (ITA)
    ita_knn: int = 5  # DMSF student: neighbours of the DPC-kNN density
    ksf_grid: int = 50  # KS-Fusion: side of the tile grid (cells); larger bags are scaled down to fit
    ksf_points: int = 12  # KS-Fusion: reference points per side (K ≤ 12² samples per gene query)
    ksf_offset_scale: float = 4.0  # KS-Fusion: largest offset, in reference-point spacings
    umeml_prototypes: int = 5  # UMEML: learned prototype queries over the patch tokens
    umeml_registers: int = 3  # UMEML: register tokens between the pathology and genomic tokens
    umeml_modularity: float = 5.0  # UMEML: weight of the modularity loss
    umeml_temperature: float = 0.1  # UMEML: temperature of the soft prototype-patch assignment
    fof_arch: str = "vit_tiny_patch16_224"  # FoF: timm ViT trained on the tile images (paper: ViT-Tiny)
    fof_image_px: int = 64  # FoF: tiles are read at this size (paper: 224 px ROIs; 64 fits the demo on a CPU)
    fof_threshold: float = 0.5  # FoF: Grad-CAM contribution threshold between positive and negative views
    fof_tau: float = 0.07  # FoF: InfoNCE temperature (FRL and MCA)
    fof_frl: float = 0.2  # FoF: weight of the FRL consistency term
    fof_mca: float = 1.0  # FoF: weight of the multi-view cross-modal alignment term
    fof_ema: float = 0.99  # FoF: momentum of the EMA teacher
    fof_biomarkers: tuple[str, ...] = ("idh", "codel_1p19q", "cdkn2a")  # FoF: clinical columns, one projector each
    fof_tiles: int = 8  # FoF: tiles sampled per training patient and epoch
    fof_batch: int = 32  # FoF: tiles per training step
    fof_eval_tiles: int = 256  # FoF: tiles per patient at evaluation (spread evenly over its tiles)
    fof_workers: int = 0  # FoF: DataLoader workers reading the tile images


Builder = Callable[[Mapping[str, Any], Task, ModelParams], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build a model and which inputs it needs. Built from the model's catalogue
    entry (:class:`pathomix.catalog.ModelEntry`, the one place these facts are stated) by
    :func:`pathomix.models.spec_of`.

    ``dims`` (passed to ``build``) holds ``wsi`` (H&E feature size D), ``mif`` and ``markers``
    (mIF feature size D and number of marker channels C) and the sizes of the
    :data:`GENE_INPUTS` it uses; all plain ints so that checkpoints load with
    ``weights_only=True``. ``mags`` lists the magnifications used; the first is required
    (a patient without tiles there is skipped), the others are used when present.
    ``needs_mif``: the model reads the mIF bags (manifest rows with modality ``mif``).
    ``teacher`` names the registered model it is distilled from, or None. ``reads`` picks the
    trainer (:data:`pathomix.train.cli.TRAINERS`): ``images`` models take tile images read through the
    coords stores instead of feature bags, and ``build`` gets empty ``dims``. ``build_joint(dims, tasks,
    params)``, where given, builds one model for several tasks whose ``logits`` are ``{task: logits}``:
    the workflow then trains it on all its tasks in one job (joint multi-task training).
    """

    name: str
    build: Builder
    needs_wsi: bool
    needs_genes: bool
    mags: tuple[str, ...] = ()
    teacher: str | None = None
    description: str = ""
    needs_mif: bool = False
    reads: str = "features"  # features: tile features and genes; images: H&E tile images (FoF); clinical: covariates
    build_joint: Callable[[Mapping[str, Any], Sequence[Task], ModelParams], nn.Module] | None = None
    task_kinds: tuple[str, ...] = ("classification", "survival")  # the Task.kind values it can train on

    @property
    def tile_input(self) -> str | None:
        """The bag kind (:data:`TILE_INPUTS`) its attention maps weigh, or None (no tiles). Image models
        weigh the H&E tiles."""
        return "mif" if self.needs_mif else "wsi" if self.needs_wsi or self.reads == "images" else None
