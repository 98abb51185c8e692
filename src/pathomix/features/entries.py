"""The patch encoders of the catalogue (:data:`pathomix.catalog.ENCODERS`): one torch-free entry per encoder.

They live in the features stage, not in :mod:`pathomix.catalog`, so that the extraction rules' hash of the
stage's source (``code_hash("features")``) covers them: editing an entry re-extracts, adding a model does not.
:mod:`pathomix.features.encoders` builds the encoders from them; the config schema's enum is generated from
them (:mod:`pathomix.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderEntry:
    """One registered patch encoder: :mod:`pathomix.features.encoders` builds it from ``family``
    (``resnet_trunc``: a ResNet through layer3 + avg pool; ``timm``: a timm model's pooled output) and
    ``arch``; it maps (B, 3, ``input_px``, ``input_px``) to (B, ``dim``)."""

    name: str
    family: str
    arch: str
    dim: int
    input_px: int
    description: str = ""


ENCODERS: dict[str, EncoderEntry] = {
    e.name: e
    for e in (
        EncoderEntry("resnet50_trunc", "resnet_trunc", "resnet50", 1024, 224,
                     description="ResNet50 through layer3 + avg pool (CLAM default), 1024-d"),
        EncoderEntry("resnet18_trunc", "resnet_trunc", "resnet18", 256, 224,
                     description="ResNet18 through layer3 + avg pool, 256-d; light, for CPU demos"),
        EncoderEntry("vit_small", "timm", "vit_small_patch16_224", 384, 224,
                     description="timm ViT-S/16 CLS token, 384-d"),
        EncoderEntry("vit_tiny", "timm", "vit_tiny_patch16_224", 192, 224,
                     description="timm ViT-Ti/16 CLS token, 192-d"),
    )
}
