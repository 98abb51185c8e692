"""Model registry (DESIGN.md §6): one dict maps a model name to its :class:`ModelSpec`.

``MODELS[name].build(dims, task, params)`` returns an ``nn.Module`` following the contract
in :mod:`pathomix.models.spec`. The training stage, the config schema and the docs read the
names from here.
"""

from __future__ import annotations

from pathomix.models import abmil, dmsf, fluoroformer, fof, ksfusion, snn, umeml
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

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("abmil", abmil.build, needs_wsi=True, needs_genes=False, mags=("20x",),
                  description="gated-attention MIL on 20x H&E features"),
        ModelSpec("snn", snn.build, needs_wsi=False, needs_genes=True,
                  description="self-normalising network on all HVG genes"),
        ModelSpec("dmsf_teacher", dmsf.build_teacher, needs_wsi=True, needs_genes=True, mags=dmsf.MAGS,
                  description="DMSF teacher: tumour/TME gene tokens select patches at 20x and 10x"),
        ModelSpec("dmsf_student", dmsf.build_student, needs_wsi=True, needs_genes=False, mags=dmsf.MAGS,
                  teacher="dmsf_teacher",
                  description="DMSF WSI-only student distilled from dmsf_teacher"),
        ModelSpec("ksfusion", ksfusion.build, needs_wsi=True, needs_genes=True, mags=ksfusion.MAGS,
                  description="KS-Fusion: tumour/TME gene queries, deformable attention on the 20x tile grid"),
        ModelSpec("umeml", umeml.build, needs_wsi=True, needs_genes=True, mags=umeml.MAGS,
                  build_joint=umeml.build_joint,
                  description="UMEML: prototype queries + modularity, register tokens, one decoder for all tasks"),
        ModelSpec("fluoroformer", fluoroformer.build, needs_wsi=False, needs_genes=False, needs_mif=True,
                  mags=fluoroformer.MAGS,
                  description="Fluoroformer: marker self-attention per mIF tile, then gated attention MIL"),
        ModelSpec("fof", fof.build, needs_wsi=False, needs_genes=False, mags=fof.MAGS, reads="images",
                  task_kinds=("classification",),
                  description="FoF: ViT-Tiny on H&E tile images, Grad-CAM focus views, EMA contrast, biomarker "
                              "alignment; histology-only inference"),
    )
}


def required_inputs(name: str) -> dict[str, bool | str | None]:
    """Input files a training job of ``name`` needs, its teacher's included (a distilled
    student also reads the genes, to run its teacher): ``{wsi, genes, mif, images, teacher}``.
    The Snakemake rules build their inputs from this, so the two cannot drift."""
    spec = get_model(name)
    specs = [spec] + ([get_model(spec.teacher)] if spec.teacher else [])
    return {"wsi": any(s.needs_wsi for s in specs), "genes": any(s.needs_genes for s in specs),
            "mif": any(s.needs_mif for s in specs), "images": any(s.reads == "images" for s in specs),
            "teacher": spec.teacher}


def get_model(name: str) -> ModelSpec:
    """The registered spec of ``name``; a KeyError lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(MODELS)}") from None


__all__ = ["GENE_INPUTS", "MODELS", "OPTIONAL_OUTPUT_KEYS", "OUTPUT_KEYS", "TILE_INPUTS", "ModelParams", "ModelSpec",
           "get_model", "mif_key", "required_inputs", "tile_key", "wsi_key"]
