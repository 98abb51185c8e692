"""Model registry (DESIGN.md §6): :data:`MODELS` maps a model name to its :class:`ModelSpec`.

The facts live in the torch-free catalogue (:data:`pathomix.catalog.MODELS`, one entry per model); this
module turns each entry into a ``ModelSpec`` by importing its builders. ``MODELS[name].build(dims, task,
params)`` returns an ``nn.Module`` following the contract in :mod:`pathomix.models.spec`. The training
stage (:mod:`pathomix.train`) and the benchmarks build models from here; the Snakefile, the config schema's
enums and the docs read the catalogue, which never imports torch.
"""

from __future__ import annotations

from pathomix import catalog
from pathomix.models.spec import (
    GENE_INPUTS,
    OPTIONAL_OUTPUT_KEYS,
    OUTPUT_KEYS,
    TILE_INPUTS,
    ModelParams,
    ModelSpec,
    mif_key,
    tile_key,
    wsi_key,
)


def spec_of(entry: catalog.ModelEntry) -> ModelSpec:
    """The ``ModelSpec`` of a catalogue entry, its builders imported."""
    return ModelSpec(
        entry.name, catalog.import_object(entry.builder),
        needs_wsi="wsi" in entry.reads, needs_genes="genes" in entry.reads, mags=entry.mags,
        teacher=entry.teacher, description=entry.description, needs_mif="mif" in entry.reads,
        reads=entry.trainer,
        build_joint=catalog.import_object(entry.joint_builder) if entry.joint_builder else None,
        task_kinds=entry.task_kinds,
    )


MODELS: dict[str, ModelSpec] = {name: spec_of(entry) for name, entry in catalog.MODELS.items()}


def required_inputs(name: str) -> dict[str, bool | str | None]:
    """Input files a training job of registered model ``name`` needs, its teacher's included:
    :func:`pathomix.catalog.model_inputs` (kept for older callers)."""
    get_model(name)  # the KeyError of an unknown name lists the models
    return catalog.model_inputs(name)


def get_model(name: str) -> ModelSpec:
    """The registered spec of ``name``; a KeyError lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(MODELS)}") from None


__all__ = ["GENE_INPUTS", "MODELS", "OPTIONAL_OUTPUT_KEYS", "OUTPUT_KEYS", "TILE_INPUTS", "ModelParams", "ModelSpec",
           "get_model", "mif_key", "required_inputs", "spec_of", "tile_key", "wsi_key"]
