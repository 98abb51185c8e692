"""Encoder registry: one name → one builder (TRIDENT's encoder_factory, without the bare excepts), built
from the catalogue's encoder entries (:mod:`pathomix.features.entries`).

Each builder returns an ``nn.Module`` mapping a float batch (B, 3, S, S), already
normalised, to (B, D). Weights come only from a local file named in the config; without
one the encoder runs randomly initialised and says so loudly (``"random-init"`` in stores).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pathomix.errors import PathomixInputError
from pathomix.features.entries import ENCODERS as ENTRIES
from pathomix.features.entries import EncoderEntry
from pathomix.features.resnet import ResNetTrunk
from pathomix.io.atomic import sha256_file

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


def _vit(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=0)

    return build


def _resnet_trunc(arch: str) -> Callable[[], nn.Module]:
    return lambda: ResNetTrunk(arch)


# catalogue EncoderEntry.family → (arch → builder)
FAMILIES: dict[str, Callable[[str], Callable[[], nn.Module]]] = {"resnet_trunc": _resnet_trunc, "timm": _vit}


def spec_of(entry: EncoderEntry) -> EncoderSpec:
    """The ``EncoderSpec`` of a catalogue entry."""
    return EncoderSpec(entry.name, entry.dim, entry.input_px, FAMILIES[entry.family](entry.arch),
                       description=entry.description)


# names, sizes and descriptions: the catalogue entries (pathomix.features.entries, torch-free, for the schema)
ENCODERS: dict[str, EncoderSpec] = {name: spec_of(entry) for name, entry in ENTRIES.items()}


def _load_weights(model: nn.Module, name: str, weights: Path) -> None:
    if not weights.exists():
        raise PathomixInputError(
            f"encoder weights {weights} for {name} do not exist; fix `features.weights` in the config "
            "or set it to null to run randomly initialised"
        )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if missing:
        raise PathomixInputError(
            f"encoder weights {weights} do not fit {name}: {len(missing)} parameter(s) missing or of another "
            f"shape, e.g. {missing[:3]}; give a state_dict of the matching timm architecture"
        )
    model.load_state_dict(usable, strict=False)  # a trunk ignores the unused head/layer4 keys


def build_encoder(name: str, weights: str | Path | None) -> tuple[nn.Module, EncoderSpec, str]:
    """→ (model in eval mode, spec, weights sha256 or ``"random-init"``)."""
    if name not in ENCODERS:
        raise PathomixInputError(f"unknown encoder {name!r}; registered encoders: {sorted(ENCODERS)}")
    spec = ENCODERS[name]
    torch.manual_seed(0)  # random-init encoders are at least the same encoder on every run
    model = spec.build()
    if weights:
        _load_weights(model, name, Path(weights))
        digest = sha256_file(weights)
        log.info("encoder %s: loaded weights %s (sha256 %s…)", name, weights, digest[:12])
    else:
        digest = RANDOM_INIT
        log.warning(
            "!!! encoder %s is RANDOMLY INITIALISED: no `features.weights` file was given. Features carry "
            "colour/texture statistics only; results are not comparable to a pretrained encoder. !!!", name
        )
    return model.eval(), spec, digest
