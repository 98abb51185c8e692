"""Encoder registry: one name → one builder (TRIDENT's encoder_factory, without the bare excepts), built
from the catalogue's encoder entries (:mod:`pathomix.features.entries`).

Each builder returns an ``nn.Module`` mapping a float batch (B, 3, S, S), already normalised, to (B, D): a
:class:`Encoder` around a ``backbone`` (the timm model or the ResNet trunk) whose state dict is what the
checkpoint fills, and an embedding head (:data:`HEADS`: the pooled output, or CLS ‖ mean of the patch tokens).
Weights come from a local file named in the config or the local Hugging Face cache, offline
(:func:`pathomix.features.weights.resolve_weights`), and are loaded strictly; without them the encoder runs
randomly initialised only when ``features.allow_random_init`` is true, and says so loudly (``"random-init"``
in stores).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from pathomix.errors import PathomixInputError
from pathomix.features.entries import ENCODERS as ENTRIES
from pathomix.features.entries import IMAGENET, EncoderEntry
from pathomix.features.resnet import ResNetTrunk
from pathomix.features.weights import (
    WeightsConfig,
    cached_weights,
    configured_path,
    load_checkpoint,
    resolve_weights,
)
from pathomix.io.atomic import sha256_file

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = IMAGENET
RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    dim: int
    input_px: int
    build: Callable[[], nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""
    crop_pct: float = 1.0  # < 1: resize the tile to input_px / crop_pct, then centre-crop input_px


def _pooled(backbone: nn.Module, x: Tensor) -> Tensor:
    return backbone(x)


def _cls_mean(backbone: nn.Module, x: Tensor) -> Tensor:
    """CLS ‖ mean of the patch tokens; the register tokens (timm's prefix tokens after CLS) are left out."""
    tokens = backbone.forward_features(x)
    return torch.cat([tokens[:, 0], tokens[:, backbone.num_prefix_tokens:].mean(1)], dim=-1)


# EncoderEntry.embedding → how the backbone's output becomes the embedding
HEADS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {"pool": _pooled, "cls": _pooled, "cls+mean": _cls_mean}


class Encoder(nn.Module):
    """A backbone and its embedding head; checkpoints load into ``backbone`` (its names are the timm/torchvision
    ones, so a shipped state dict maps onto it without a prefix)."""

    def __init__(self, backbone: nn.Module, embedding: str):
        super().__init__()
        self.backbone = backbone
        self.embedding = embedding
        self._head = HEADS[embedding]

    def forward(self, x: Tensor) -> Tensor:
        return self._head(self.backbone, x)


# kwargs stated by name in the torch-free entries → the classes timm takes
def _layer(name: str) -> type[nn.Module]:
    import timm.layers

    from pathomix.features.ctranspath import ConvStem

    own = {"ConvStem": ConvStem}
    return own[name] if name in own else getattr(nn, name) if hasattr(nn, name) else getattr(timm.layers, name)


def timm_kwargs(entry: EncoderEntry) -> dict[str, object]:
    """The entry's architecture kwargs as timm takes them (layer names → classes, ``norm_eps`` → norm_layer)."""
    kwargs: dict[str, object] = {"num_classes": 0}
    for key, value in entry.kwargs:
        if key in ("mlp_layer", "act_layer", "embed_layer"):
            kwargs[key] = _layer(str(value))
        elif key == "norm_eps":
            kwargs["norm_layer"] = partial(nn.LayerNorm, eps=float(value))
        else:
            kwargs[key] = value
    return kwargs


def _timm(entry: EncoderEntry) -> nn.Module:
    import timm

    return timm.create_model(entry.arch, pretrained=False, **timm_kwargs(entry))


def _resnet_trunc(entry: EncoderEntry) -> nn.Module:
    return ResNetTrunk(entry.arch)


# catalogue EncoderEntry.family → backbone builder
FAMILIES: dict[str, Callable[[EncoderEntry], nn.Module]] = {"resnet_trunc": _resnet_trunc, "timm": _timm}


def build_model(entry: EncoderEntry) -> Encoder:
    """The encoder of ``entry``, randomly initialised (on the current default device: ``meta`` works)."""
    return Encoder(FAMILIES[entry.family](entry), entry.embedding)


def spec_of(entry: EncoderEntry) -> EncoderSpec:
    """The ``EncoderSpec`` of a catalogue entry."""
    return EncoderSpec(entry.name, entry.dim, entry.input_px, partial(build_model, entry), entry.mean, entry.std,
                       description=entry.description, crop_pct=entry.crop_pct)


# names, sizes and descriptions: the catalogue entries (pathomix.features.entries, torch-free, for the schema)
ENCODERS: dict[str, EncoderSpec] = {name: spec_of(entry) for name, entry in ENTRIES.items()}


def _with_weights(spec: EncoderSpec, name: str, path: Path) -> nn.Module:
    """The encoder with the checkpoint's tensors: built on ``meta`` (no random init of a billion parameters)
    and assigned; an architecture with tensors outside its state dict (non-persistent buffers) is built for
    real instead."""
    with torch.device("meta"):
        model = spec.build()
    load_checkpoint(model.backbone, name, path)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = spec.build()
        load_checkpoint(model.backbone, name, path)
    return model


def build_encoder(name: str, weights: WeightsConfig = None,
                  allow_random_init: bool = False) -> tuple[nn.Module, EncoderSpec, str]:
    """→ (model in eval mode, spec, weights sha256 or ``"random-init"``).

    ``weights`` is config ``features.weights``: a path, a mapping ``{encoder: path}`` (looked up by ``name``)
    or None; without a path the local Hugging Face cache is searched, offline
    (:func:`~pathomix.features.weights.resolve_weights`). Random init only with ``allow_random_init``."""
    if name not in ENCODERS:
        raise PathomixInputError(f"unknown encoder {name!r}; registered encoders: {sorted(ENCODERS)}")
    spec = ENCODERS[name]
    path = resolve_weights(name, weights, allow_random_init)
    torch.manual_seed(0)  # random-init encoders are at least the same encoder on every run
    if path is not None:
        model = _with_weights(spec, name, path)
        digest = sha256_file(path)
        log.info("encoder %s: loaded weights %s (sha256 %s…)", name, path, digest[:12])
    else:
        model = spec.build()
        digest = RANDOM_INIT
        log.warning(
            "!!! encoder %s is RANDOMLY INITIALISED: no weights were given or found and "
            "`features.allow_random_init` is true. Features carry colour/texture statistics only; results are "
            "not comparable to a pretrained encoder. !!!", name
        )
    return model.eval(), spec, digest


def _found_locally(entry: EncoderEntry, weights: WeightsConfig) -> str:
    """``config`` (the configured path exists), ``cache`` (the hub file is in the local cache), ``no``, or ``-``
    (no path configured and no hub repository)."""
    path = configured_path(entry.name, weights)
    if path is not None:
        return "config" if path.is_file() else "no"
    if not entry.hub_id:
        return "-"
    return "cache" if cached_weights(entry) is not None else "no"


def encoder_table(weights: WeightsConfig = None) -> list[dict[str, str]]:
    """One row per registered encoder for ``--list-encoders``: name, dim, input, embedding, normalisation,
    weights source and whether its weights are on this machine now (``features.weights``, else the cache)."""
    rows = []
    for entry in ENTRIES.values():
        local = _found_locally(entry, weights)
        rows.append({"name": entry.name, "dim": str(entry.dim), "input": str(entry.input_px),
                     "embedding": entry.embedding, "norm": entry.norm, "arch": entry.arch,
                     "weights": entry.weights_source, "local": local, "description": entry.description})
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """Tab-separated lines with a header (``python -m pathomix.features --list-encoders``)."""
    cols = ("name", "dim", "input", "embedding", "norm", "weights", "local", "description")
    return "\n".join("\t".join(row[c] for c in cols) for row in [dict(zip(cols, cols, strict=True)), *rows]) + "\n"


def markdown_table() -> str:
    """The README's encoder table, from the registry (tests/test_encoders.py checks the README has it)."""
    lines = ["| name | architecture (timm) | dim | input | embedding | mean/std | hub id | file |",
             "|---|---|---|---|---|---|---|---|"]
    for e in ENTRIES.values():
        crop = f" (crop {e.crop_pct:.3f})" if e.crop_pct < 1 else ""
        lines.append(f"| `{e.name}` | {e.arch} | {e.dim} | {e.input_px}{crop} | {e.embedding} | {e.norm} | "
                     f"{e.hub_id or '—'} | {e.weights_file or 'config path'} |")
    return "\n".join(lines) + "\n"
