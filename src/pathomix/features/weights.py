"""Encoder weights: where they come from (offline) and how a shipped checkpoint maps, strictly, onto the model.

**Where** (:func:`resolve_weights`): ``features.weights`` is a path (one encoder) or a mapping
``{encoder: path}``; an encoder without a path is looked up in the local Hugging Face cache, offline, under its
``hub_id`` and ``weights_file`` (:mod:`pathomix.features.entries`). The cache is ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (huggingface_hub's layout
``models--org--name/snapshots/<revision>/<file>`` with ``refs/main``), read when called, never the network.
Nothing found is an error naming the encoder, the hub id, the file and both ways to provide it, unless
``features.allow_random_init`` is true.

**How** (:func:`load_checkpoint`): the file (``.safetensors``, else a ``torch.load`` pickle read with
``weights_only=True``; a ``state_dict``/``model`` container and a ``module.`` prefix are unwrapped) is mapped by
its entry's ``checkpoint_format`` (:data:`FORMATS`) to the model's parameter names and must then match the model
exactly: a missing or unexpected key or another shape is an error naming the first ones — never a partial load.
The only keys a format drops are listed with it (:attr:`CheckpointFormat.dropped`).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pathomix.errors import PathomixInputError
from pathomix.features.entries import ENCODERS, EncoderEntry

log = logging.getLogger(__name__)

State = dict[str, Tensor]
WeightsConfig = str | os.PathLike | Mapping[str, "str | os.PathLike | None"] | None


# ---- key layouts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointFormat:
    """A shipped key layout: ``to_model`` maps a checkpoint's state dict to the timm/pathomix names,
    ``from_model`` is its inverse (what the real file holds; tests write checkpoints with it). ``dropped``:
    patterns of checkpoint keys that this layout legitimately leaves out (documented, never a general leniency)."""

    name: str
    to_model: Callable[[State], State]
    from_model: Callable[[State], State]
    dropped: tuple[str, ...] = ()
    note: str = ""

    def drops(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.dropped)


def _identity(state: State) -> State:
    return dict(state)


Rule = tuple[str, str]  # (key template in the shipped file, key template in the model); ``{i}``: a block index


def _pattern(template: str) -> re.Pattern[str]:
    """A template → a regex: ``{i}`` matches a block index; a template ending in ``.`` is a prefix."""
    body = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)")
    return re.compile("^" + body + ("" if template.endswith(".") else "$"))


def _rename(state: State, rules: list[Rule], reverse: bool = False) -> State:
    """Rename each key by the first rule whose source template matches it (shipped → model, or back)."""
    compiled = [(_pattern(dst if reverse else src), src if reverse else dst) for src, dst in rules]
    out = {}
    for key, value in state.items():
        for pattern, target in compiled:
            m = pattern.match(key)
            if m:
                key = target.format(i=m.groupdict().get("i")) + key[m.end():]
                break
        out[key] = value
    return out


_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
_FUSED = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def _fuse_qkv(state: State) -> State:
    """transformers' separate query/key/value → timm's fused ``qkv`` (q, k, v concatenated on dim 0)."""
    out: State = {}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        m = _QKV.match(key)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[key] = value
    for (i, kind), qkv in parts.items():
        if set(qkv) != {"query", "key", "value"}:  # an incomplete triple stays as it is: the strict check names it
            out.update({f"encoder.layer.{i}.attention.attention.{k}.{kind}": v for k, v in qkv.items()})
        else:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([qkv["query"], qkv["key"], qkv["value"]])
    return out


def _split_qkv(state: State) -> State:
    """The inverse of :func:`_fuse_qkv`."""
    out: State = {}
    for key, value in state.items():
        m = _FUSED.match(key)
        if not m:
            out[key] = value
            continue
        for name, part in zip(("query", "key", "value"), value.chunk(3), strict=True):
            out[f"encoder.layer.{m.group(1)}.attention.attention.{name}.{m.group(2)}"] = part
    return out


# transformers ViTModel as saved by transformers 4.x (owkin/phikon) → timm VisionTransformer
_HF_VIT: list[Rule] = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.{i}.layernorm_before.", "blocks.{i}.norm1."),
    ("encoder.layer.{i}.layernorm_after.", "blocks.{i}.norm2."),
    ("encoder.layer.{i}.attention.output.dense.", "blocks.{i}.attn.proj."),
    ("encoder.layer.{i}.intermediate.dense.", "blocks.{i}.mlp.fc1."),
    ("encoder.layer.{i}.output.dense.", "blocks.{i}.mlp.fc2."),
    ("layernorm.", "norm."),
]
# transformers Dinov2Model (owkin/phikon-v2) → timm VisionTransformer with layer scale
_HF_DINOV2: list[Rule] = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.register_tokens", "reg_token"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.{i}.norm1.", "blocks.{i}.norm1."),
    ("encoder.layer.{i}.norm2.", "blocks.{i}.norm2."),
    ("encoder.layer.{i}.attention.output.dense.", "blocks.{i}.attn.proj."),
    ("encoder.layer.{i}.layer_scale1.lambda1", "blocks.{i}.ls1.gamma"),
    ("encoder.layer.{i}.layer_scale2.lambda1", "blocks.{i}.ls2.gamma"),
    ("encoder.layer.{i}.mlp.fc1.", "blocks.{i}.mlp.fc1."),
    ("encoder.layer.{i}.mlp.fc2.", "blocks.{i}.mlp.fc2."),
    ("layernorm.", "norm."),
]


# Hibou (histai/hibou-b, hibou-L: remote-code Dinov2ModelWithRegisters saved by transformers 4.41): Dinov2Model's
# names, 4 register tokens and a packed SwiGLU (weights_in = [gate; up], as timm's SwiGLUPacked fc1)
_HF_DINOV2_REG: list[Rule] = [  # the SwiGLU rules first: the first matching rule renames (both ways)
    ("encoder.layer.{i}.mlp.weights_in.", "blocks.{i}.mlp.fc1."),
    ("encoder.layer.{i}.mlp.weights_out.", "blocks.{i}.mlp.fc2."),
    *_HF_DINOV2,
]


def _fold_class_position(state: State) -> State:
    """DINOv2 with registers adds the position embedding to the class token too; timm's ``no_embed_class`` model
    has positions for the patches only: its class token is the file's class token plus the first position."""
    out = dict(state)
    pos = out.pop("embeddings.position_embeddings", None)
    if pos is not None and "embeddings.cls_token" in out:
        out["embeddings.cls_token"] = out["embeddings.cls_token"] + pos[:, :1]
        out["embeddings.position_embeddings"] = pos[:, 1:]
    elif pos is not None:
        out["embeddings.position_embeddings"] = pos
    return out


def _unfold_class_position(state: State) -> State:
    """An inverse of :func:`_fold_class_position` (the class position taken as zero)."""
    out = dict(state)
    if "embeddings.position_embeddings" in out:
        pos = out["embeddings.position_embeddings"]
        out["embeddings.position_embeddings"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    return out


def _hf_to_timm(rules: list[Rule]) -> Callable[[State], State]:
    return lambda state: _rename(_fuse_qkv(state), rules)


def _timm_to_hf(rules: list[Rule]) -> Callable[[State], State]:
    return lambda state: _split_qkv(_rename(state, rules, reverse=True))


def _resnet_trunc_from(state: State) -> State:
    """A full ResNet state dict as torchvision/timm ship it: the trunk's keys plus layer4 and fc."""
    out = dict(state)
    out.setdefault("layer4.0.conv1.weight", torch.zeros(1))
    out.setdefault("fc.weight", torch.zeros(1))
    out.setdefault("fc.bias", torch.zeros(1))
    return out


def _timm054_swin(state: State) -> State:
    from pathomix.features.ctranspath import from_timm054

    return from_timm054(state)


def _timm054_swin_back(state: State) -> State:
    from pathomix.features.ctranspath import to_timm054

    return to_timm054(state)


FORMATS: dict[str, CheckpointFormat] = {f.name: f for f in (
    CheckpointFormat("timm", _identity, _identity, note="the timm model's own state dict"),
    CheckpointFormat("resnet_trunc", _identity, _resnet_trunc_from, dropped=(r"layer4\..*", r"fc\..*"),
                     note="a full torchvision/timm ResNet: the trunk stops after layer3, so layer4.* and fc.* are "
                          "dropped"),
    CheckpointFormat("hf_vit", _hf_to_timm(_HF_VIT), _timm_to_hf(_HF_VIT), dropped=(r"pooler\..*",),
                     note="transformers ViTModel: query/key/value fused into qkv; the unused pooler is dropped"),
    CheckpointFormat("hf_dinov2", _hf_to_timm(_HF_DINOV2), _timm_to_hf(_HF_DINOV2),
                     dropped=(r"embeddings\.mask_token",),
                     note="transformers Dinov2Model: query/key/value fused into qkv, layer_scale → ls; the "
                          "training-only mask token is dropped"),
    CheckpointFormat("hf_dinov2_reg", lambda state: _hf_to_timm(_HF_DINOV2_REG)(_fold_class_position(state)),
                     lambda state: _unfold_class_position(_timm_to_hf(_HF_DINOV2_REG)(state)),
                     dropped=(r"embeddings\.mask_token",),
                     note="Dinov2ModelWithRegisters (Hibou): as hf_dinov2, plus register tokens, the packed SwiGLU "
                          "(weights_in/weights_out → fc1/fc2) and the class token's position folded into it"),
    CheckpointFormat("timm054_swin", _timm054_swin, _timm054_swin_back,
                     dropped=(r".*\.attn_mask", r".*\.relative_position_index"),
                     note="a Swin saved by timm 0.5.4 (CTransPath): patch merging moves from the end of stage i to "
                          "the start of stage i+1; the derived buffers attn_mask/relative_position_index are dropped"),
)}


# ---- reading and fitting -----------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    """By content, not name (a hub cache blob has none): an 8-byte header length, then the JSON header."""
    with path.open("rb") as f:
        head = f.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def read_state(path: Path) -> State:
    """A checkpoint file's tensors: safetensors, else a ``weights_only`` torch pickle; a ``state_dict`` or
    ``model`` container and a DataParallel ``module.`` prefix are unwrapped."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if _is_safetensors(path):
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, SafetensorError) as err:
        raise PathomixInputError(f"encoder weights {path} cannot be read ({type(err).__name__}: {err}); give a "
                                 "state dict saved with torch.save or safetensors") from None
    for container in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(container), dict):
            state = state[container]
    if not isinstance(state, dict):
        raise PathomixInputError(f"encoder weights {path} hold a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


def map_state(entry: EncoderEntry, state: State) -> State:
    """The checkpoint ``state`` in the model's names (the format's documented drops removed)."""
    fmt = FORMATS[entry.checkpoint_format]
    return fmt.to_model({k: v for k, v in state.items() if not fmt.drops(k)})


def shipped_state(entry: EncoderEntry, own: State) -> State:
    """What the hub file of ``entry`` holds for a model whose state dict is ``own`` (the inverse mapping)."""
    return FORMATS[entry.checkpoint_format].from_model(own)


def mismatches(own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong shape) keys of ``state`` against the model's ``own`` state dict. BatchNorm's
    ``num_batches_tracked`` counters may be absent (they do not change the forward pass in eval mode)."""
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} ≠ {tuple(own[k].shape)}" for k in state
              if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def check_fits(name: str, source: object, own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> None:
    """PathomixInputError naming the first mismatching keys when ``state`` does not fit ``own`` exactly."""
    missing, unexpected, shapes = mismatches(own, state)
    if missing or unexpected or shapes:
        entry = ENCODERS[name]
        raise PathomixInputError(
            f"encoder weights {source} do not fit {name} (checkpoint format {entry.checkpoint_format!r}, "
            f"architecture {entry.arch}): {len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} "
            f"unexpected key(s) {unexpected[:3]}, {len(shapes)} of another shape {shapes[:3]}. Give the "
            f"checkpoint the model ships ({entry.weights_source})"
        )


def load_checkpoint(model: nn.Module, name: str, path: Path) -> None:
    """Load the checkpoint at ``path`` into ``model`` (the encoder's timm/ResNet backbone), strictly. A model
    built on the ``meta`` device takes the checkpoint's tensors as they are (``assign``: no random init first,
    no second copy of a giant model)."""
    entry = ENCODERS[name]
    state = map_state(entry, read_state(path))
    own = model.state_dict()
    check_fits(name, path, own, state)
    for key in own.keys() - state.keys():  # only BatchNorm counters can be absent (check_fits)
        state[key] = torch.zeros_like(own[key], device="cpu")
    model.load_state_dict(state, strict=True, assign=any(t.is_meta for t in own.values()))


# ---- where the weights are --------------------------------------------------------------------------------


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface")
    return Path(home).expanduser() / "hub"


def cached_weights(entry: EncoderEntry) -> Path | None:
    """The entry's weights file in the local Hugging Face cache (offline), or None."""
    if not entry.hub_id or not entry.weights_file:
        return None
    from huggingface_hub import try_to_load_from_cache

    for repo in (entry.hub_id, *entry.hub_aliases):
        found = try_to_load_from_cache(repo, entry.weights_file, cache_dir=hf_cache_dir(),
                                       repo_type=entry.hub_repo_type)
        if isinstance(found, str | os.PathLike):
            return Path(found)
    return None


def configured_path(encoder: str, weights: WeightsConfig) -> Path | None:
    """The path ``features.weights`` gives ``encoder``: the value itself, or its entry in a mapping."""
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(ENCODERS))
        if unknown:
            raise PathomixInputError(f"config `features.weights` names unknown encoder(s) {unknown}; registered "
                                     f"encoders: {sorted(ENCODERS)}")
        weights = weights.get(encoder)
    return Path(weights).expanduser() if weights else None


def download_command(entry: EncoderEntry) -> str:
    """The command that fetches the entry's weights into a Hugging Face cache (on a machine with network)."""
    kind = "" if entry.hub_repo_type == "model" else f" --repo-type {entry.hub_repo_type}"
    return f"huggingface-cli download {entry.hub_id} {entry.weights_file}{kind}"


def _not_found(entry: EncoderEntry) -> PathomixInputError:
    if not entry.hub_id:
        return PathomixInputError(
            f"encoder {entry.name} has no weights: it has no hub repository, so give a local checkpoint in the "
            f"config (`features.weights: PATH` or `features.weights: {{{entry.name}: PATH}}`), or set "
            "`features.allow_random_init: true` to run it randomly initialised (demo only)")
    gated = " (a gated repository: accept its terms on the hub first)" if entry.gated else ""
    return PathomixInputError(
        f"encoder {entry.name}: no weights found. Expected {entry.weights_file} of the Hugging Face repository "
        f"{entry.hub_id} in the local cache {hf_cache_dir()} (HF_HUB_CACHE / HF_HOME; looked up offline). "
        f"Provide it either (1) as a path in the config: `features.weights: {{{entry.name}: /path/to/"
        f"{Path(entry.weights_file).name}}}`, or (2) by running `{download_command(entry)}` "
        f"on a machine with network{gated} and copying its Hugging Face cache ({entry.hub_repo_type}s--"
        f"{entry.hub_id.replace('/', '--')}) into this machine's cache. `features.allow_random_init: true` runs "
        "the encoder randomly initialised instead (demo only)")


def resolve_weights(encoder: str, weights: WeightsConfig, allow_random_init: bool) -> Path | None:
    """The checkpoint file of ``encoder``: the path ``weights`` gives it (a path, or ``{encoder: path}``), else
    its hub file in the local Hugging Face cache; None (random init) only when nothing is found and
    ``allow_random_init``. Raises PathomixInputError for an unknown encoder, a configured path that does not
    exist, and no weights without ``allow_random_init``."""
    if encoder not in ENCODERS:
        raise PathomixInputError(f"unknown encoder {encoder!r}; registered encoders: {sorted(ENCODERS)}")
    entry = ENCODERS[encoder]
    path = configured_path(encoder, weights)
    if path is not None:
        if not path.is_file():
            raise PathomixInputError(
                f"encoder weights {path} for {encoder} do not exist; fix `features.weights` in the config")
        return path
    cached = cached_weights(entry)
    if cached is not None:
        log.info("encoder %s: weights from the local Hugging Face cache: %s", encoder, cached)
        return cached
    if allow_random_init:
        return None
    raise _not_found(entry)
