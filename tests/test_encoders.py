"""Encoder registry, offline weights and strict checkpoint mapping, without downloads.

Every registered encoder is built on the ``meta`` device (no memory): a checkpoint in the layout its hub file
ships (the inverse of pathomix's key mapping) must map onto the model key for key and shape for shape, and the
meta forward must give the registered dimension. The small ones (:data:`REAL`) get a checkpoint with random
values written in the shipped file name and format, loaded through pathomix (by config path and from a fake
offline Hugging Face cache) and compared, on a real CPU forward, with the reference model built directly by
timm, torchvision or transformers from the same values.

In the fast tier the giant ones (UNI, UNI2-h, Virchow/Virchow2, H-optimus-0/1, GigaPath, GPFM, Phikon-v2, kaiko
ViT-B/8 and ViT-L/14) are checked on the meta device only. :func:`test_giant_encoder_real_forward` (10-24 GB of
memory each, only with ``PATHOMIX_GIANT_ENCODER_TESTS=1``) runs the timm-layout ones for real; Phikon-v2 gets no
real-size forward (its layout mapping is checked against transformers' Dinov2Model on a small model).
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from pathomix.errors import PathomixInputError
from pathomix.features import weights as W
from pathomix.features.cli import main
from pathomix.features.encoders import RANDOM_INIT, build_encoder, build_model, timm_kwargs
from pathomix.features.entries import CHECKPOINT_FORMATS, EMBEDDINGS, ENCODERS, NORMS, UNSUPPORTED
from pathomix.features.extract import DeviceTransform, ExtractParams

# built for real on CPU (small); every other encoder is checked on the meta device only
REAL = ("resnet18_trunc", "vit_tiny", "vit_small", "resnet50", "kaiko-vits16", "kaiko-vits8", "kaiko-vitb16",
        "lunit-vits8", "h0-mini", "phikon", "ctranspath", "hibou_b")
TRIDENT_NAMES = ("ctranspath", "hibou_l", "uni_v1", "uni_v2", "virchow", "virchow2", "hoptimus0", "hoptimus1",
                 "h0-mini", "gigapath", "gpfm", "phikon", "phikon_v2", "resnet50", "lunit-vits8", "kaiko-vits8",
                 "kaiko-vits16", "kaiko-vitb8", "kaiko-vitb16", "kaiko-vitl14")


def _fake_cache(root, hub_id: str, filename: str, checkpoint, rev: str = "0123abcd", repo_type: str = "model"):
    """huggingface_hub's cache layout: {repo_type}s--org--name/{refs/main, blobs/<hash>, snapshots/<rev>/<file>}
    with the snapshot file a relative link to the blob. ``checkpoint``: a file already written (hard-linked as
    the blob) or a state dict to write."""
    repo = root / f"{repo_type}s--{hub_id.replace('/', '--')}"
    for sub in ("refs", "blobs", f"snapshots/{rev}"):
        (repo / sub).mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    blob = repo / "blobs" / "5f1e0c"
    if isinstance(checkpoint, dict):
        _save(checkpoint, blob)
    else:
        blob.hardlink_to(checkpoint)
    link = repo / "snapshots" / rev / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def _save(state: dict[str, torch.Tensor], path) -> None:
    """A checkpoint as the hub ships it: safetensors by the file name, else a torch pickle."""
    if "model" in state:  # a training checkpoint: {"model": state dict, ...}
        torch.save(state, path)
        return
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty offline Hugging Face cache under tmp_path (HF_HOME and HF_HUB_CACHE point to it)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    return tmp_path / "hf" / "hub"


# ---- the registry ------------------------------------------------------------------------------------------


def test_registry_covers_the_foundation_models():
    assert len(ENCODERS) >= 20
    assert set(TRIDENT_NAMES) <= set(ENCODERS)
    for entry in ENCODERS.values():
        assert entry.embedding in EMBEDDINGS and entry.checkpoint_format in CHECKPOINT_FORMATS
        assert entry.norm in NORMS and 0 < entry.crop_pct <= 1
        assert bool(entry.hub_id) == bool(entry.weights_file), entry.name
        if entry.hub_id:
            assert entry.source, f"{entry.name}: state where the architecture comes from"
    assert ENCODERS["hoptimus0"].mean == (0.707223, 0.578729, 0.703617)
    assert ENCODERS["hoptimus0"].std == (0.211883, 0.230117, 0.177517)
    assert ENCODERS["virchow2"].dim == 2560 and ENCODERS["virchow2"].embedding == "cls+mean"
    assert not set(UNSUPPORTED) & set(ENCODERS)


# what the model cards / reference loaders fix about the shipped checkpoints' tensors
KNOWN_SHAPES = {
    "uni_v1": {"pos_embed": (1, 197, 1024), "blocks.23.ls1.gamma": (1024,)},
    "uni_v2": {"pos_embed": (1, 256, 1536), "reg_token": (1, 8, 1536), "blocks.23.attn.qkv.weight": (4608, 1536)},
    "virchow": {"pos_embed": (1, 257, 1280), "blocks.31.mlp.fc1.weight": (6832, 1280)},
    "virchow2": {"reg_token": (1, 4, 1280), "blocks.31.mlp.fc2.weight": (1280, 3416)},
    "hoptimus0": {"pos_embed": (1, 256, 1536), "reg_token": (1, 4, 1536), "blocks.39.ls2.gamma": (1536,)},
    "gigapath": {"patch_embed.proj.weight": (1536, 3, 16, 16), "pos_embed": (1, 197, 1536)},
    "gpfm": {"pos_embed": (1, 257, 1024)},
    "kaiko-vitl14": {"pos_embed": (1, 1369, 1024), "reg_token": (1, 4, 1024)},
    "ctranspath": {"patch_embed.proj.0.weight": (12, 3, 3, 3), "patch_embed.proj.6.weight": (96, 24, 1, 1),
                   "layers.0.downsample.reduction.weight": (192, 384), "layers.2.downsample.norm.weight": (1536,)},
    "hibou_l": {"encoder.layer.23.mlp.weights_in.weight": (5472, 1024), "encoder.layer.23.mlp.weights_out.weight":
                (1024, 2736), "embeddings.position_embeddings": (1, 257, 1024),
                "embeddings.register_tokens": (1, 4, 1024)},
    "hibou_b": {"encoder.layer.11.mlp.weights_in.weight": (4096, 768), "encoder.layer.11.mlp.weights_out.weight":
                (768, 2048), "embeddings.position_embeddings": (1, 257, 768)},
    "phikon": {"embeddings.position_embeddings": (1, 197, 768),
               "encoder.layer.11.attention.attention.query.weight": (768, 768)},
    "phikon_v2": {"embeddings.position_embeddings": (1, 197, 1024),
                  "encoder.layer.23.layer_scale1.lambda1": (1024,)},
}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_shipped_checkpoint_maps_exactly_on_meta(name):
    """The hub file's keys (inverse mapping of the model's) map back onto every key and shape; meta forward
    gives the registered dimension. No memory: nothing is materialised."""
    entry = ENCODERS[name]
    with torch.device("meta"):
        model = build_model(entry)
        own = model.backbone.state_dict()
        shipped = W.shipped_state(entry, own)
        assert W.mismatches(own, W.map_state(entry, shipped)) == ([], [], [])
        out = model(torch.zeros(2, 3, entry.input_px, entry.input_px))
    assert tuple(out.shape) == (2, entry.dim)
    for key, shape in KNOWN_SHAPES.get(name, {}).items():
        assert tuple(shipped[key].shape) == shape, key
    if entry.checkpoint_format.startswith("hf_"):
        assert "encoder.layer.0.attention.attention.key.bias" in shipped and not any("blocks." in k for k in shipped)


# ---- real checkpoints, real forward (small encoders) ---------------------------------------------------------


def _reference(name: str) -> torch.nn.Module:
    """The backbone built directly by timm (torchvision for the ResNets) with seeded random values: built on
    meta and filled, which is seconds faster than timm's own initialisation on 2 cores."""
    entry = ENCODERS[name]

    def build() -> torch.nn.Module:
        if entry.family == "timm":
            import timm

            return timm.create_model(entry.arch, pretrained=False, **timm_kwargs(entry))
        import torchvision

        return getattr(torchvision.models, entry.arch)()

    with torch.device("meta"):
        ref = build()
    derived = set(dict(ref.named_buffers())) - set(ref.state_dict())  # e.g. Swin's relative_position_index
    ref = build() if derived else ref.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for key, t in ref.state_dict().items():
            if t.dtype == torch.long:  # BatchNorm counters
                t.zero_()
            elif key.endswith(("running_var", "gamma")) or (t.ndim == 1 and key.endswith("weight")):
                t.copy_(1 + 0.1 * torch.rand(t.shape, generator=gen))  # variances, norm and layer scales near 1
            else:
                t.copy_(0.05 * torch.randn(t.shape, generator=gen))
    return ref.eval()


def _reference_embedding(name: str, ref: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    entry = ENCODERS[name]
    if entry.family == "resnet_trunc":  # torchvision ResNet through layer3, average pooled
        h = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        return ref.layer3(ref.layer2(ref.layer1(h))).mean((2, 3))
    if entry.embedding == "pool":  # CTransPath: the Swin's average-pooled final tokens
        return ref(x)
    return ref.forward_features(x)[:, 0]  # CLS after the final norm


def _shipped(name: str, ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    entry = ENCODERS[name]
    if entry.family == "resnet_trunc":
        return ref.state_dict()  # the full torchvision/timm ResNet: layer4 and fc included
    state = W.shipped_state(entry, ref.state_dict())
    if entry.checkpoint_format == "hf_dinov2_reg":  # a class position that is not zero: folded into the class token
        shift = 0.05 * torch.randn(1, 1, state["embeddings.cls_token"].shape[-1])
        state["embeddings.position_embeddings"][:, :1] += shift
        state["embeddings.cls_token"] = state["embeddings.cls_token"] - shift
    if entry.checkpoint_format == "timm054_swin":  # CHIEF_CTransPath.pth: {"model": ...} with derived buffers
        state["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
        state["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
        state = {"model": state}
    return state


GIANT = tuple(n for n in ENCODERS if n not in REAL and ENCODERS[n].checkpoint_format == "timm")


# 0.6-1.1 billion parameters each: a real forward needs 10-24 GB of memory and writes a 2-4 GB checkpoint, more
# than CI's 2-core, 24 GiB machine has to spare (one such run was killed there by the OOM killer and filled /tmp).
# Run them on a large machine: PATHOMIX_GIANT_ENCODER_TESTS=1 pytest tests/test_encoders.py -m slow -k giant
GIANT_TESTS = os.environ.get("PATHOMIX_GIANT_ENCODER_TESTS") == "1"


@pytest.mark.slow
@pytest.mark.skipif(not GIANT_TESTS, reason="giant encoders need 10-24 GB of memory and GBs of disk each: set "
                                            "PATHOMIX_GIANT_ENCODER_TESTS=1 on a large machine (the meta-device "
                                            "checks above cover their key mapping in every run)")
@pytest.mark.parametrize("name", GIANT)
def test_giant_encoder_real_forward(name, tmp_path):
    """Slow tier (GBs of memory, minutes on 2 cores): a giant timm encoder with random values, written in its
    shipped file and loaded through pathomix; the embedding as the reference loaders compute it (TRIDENT:
    CLS, or CLS ‖ mean of ``output[:, 1 + registers:]``)."""
    entry = ENCODERS[name]
    ref = _reference(name)
    x = torch.rand(2, 3, entry.input_px, entry.input_px)
    with torch.inference_mode():
        tokens = ref.forward_features(x)
        registers = ref.num_prefix_tokens - 1
        want = tokens[:, 0] if entry.embedding == "cls" else \
            torch.cat([tokens[:, 0], tokens[:, 1 + registers:].mean(1)], dim=-1)
    path = tmp_path / entry.weights_file
    _save(W.shipped_state(entry, ref.state_dict()), path)
    del ref, tokens
    model, _, _ = build_encoder(name, str(path))
    path.unlink()  # GBs: not kept in pytest's last three temporary folders
    with torch.inference_mode():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)


def _transformers_vit(directory) -> torch.nn.Module | None:
    """Phikon as TRIDENT loads it: transformers ViTModel (owkin/phikon config.json) without the pooler."""
    try:
        import transformers
    except ImportError:
        return None
    config = {"architectures": ["ViTModel"], "model_type": "vit", "hidden_size": 768, "image_size": 224,
              "intermediate_size": 3072, "layer_norm_eps": 1e-12, "num_attention_heads": 12,
              "num_hidden_layers": 12, "patch_size": 16, "qkv_bias": True, "hidden_act": "gelu"}
    (directory / "config.json").write_text(json.dumps(config))
    return transformers.ViTModel.from_pretrained(str(directory), add_pooling_layer=False).eval()


def _transformers_dinov2_reg(directory) -> torch.nn.Module | None:
    """Hibou-B as its config.json states it, in transformers' own Dinov2WithRegistersModel (which reads the
    remote-code layout's weights_in/weights_out and attention.attention.* names)."""
    try:
        import transformers
    except ImportError:
        return None
    config = {"architectures": ["Dinov2WithRegistersModel"], "model_type": "dinov2_with_registers",
              "hidden_size": 768, "image_size": 224, "patch_size": 14, "num_attention_heads": 12,
              "num_hidden_layers": 12, "num_register_tokens": 4, "use_swiglu_ffn": True, "layerscale_value": 1.0,
              "layer_norm_eps": 1e-6, "mlp_ratio": 4, "qkv_bias": True, "hidden_act": "gelu"}
    (directory / "config.json").write_text(json.dumps(config))
    return transformers.Dinov2WithRegistersModel.from_pretrained(str(directory)).eval()


@pytest.mark.parametrize("name", REAL)
def test_real_checkpoint_from_path_and_offline_cache(name, tmp_path, hf_cache, caplog):
    """A random checkpoint in the shipped file name and layout, through pathomix (config path, then the offline
    cache): the embedding equals the reference model's (timm/torchvision directly; Phikon: transformers)."""
    entry = ENCODERS[name]
    ref = _reference(name)
    state = _shipped(name, ref)
    if entry.checkpoint_format == "hf_vit":  # the shipped file may carry the (unused) pooler: dropped, explicitly
        state["pooler.dense.weight"], state["pooler.dense.bias"] = torch.randn(768, 768), torch.randn(768)
    path = tmp_path / "ckpt" / (entry.weights_file or "weights.pt")
    path.parent.mkdir(parents=True)
    _save(state, path)
    x = torch.rand(2, 3, entry.input_px, entry.input_px)
    with torch.inference_mode():
        if entry.checkpoint_format in ("hf_vit", "hf_dinov2_reg"):
            hf = (_transformers_vit if entry.checkpoint_format == "hf_vit" else _transformers_dinov2_reg)(path.parent)
            want = None if hf is None else hf(pixel_values=x).last_hidden_state[:, 0]
        else:
            want = _reference_embedding(name, ref, x)
        del ref
        model, spec, digest = build_encoder(name, {name: str(path)})
        got = model(x)
    assert got.shape == (2, entry.dim) and len(digest) == 64
    if want is not None:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if not entry.hub_id:
        return
    _fake_cache(hf_cache, entry.hub_id, entry.weights_file, path, repo_type=entry.hub_repo_type)
    with caplog.at_level(logging.INFO), torch.inference_mode():
        cached, _, cached_digest = build_encoder(name, None)
        torch.testing.assert_close(cached(x), got)
    assert cached_digest == digest and "local Hugging Face cache" in caplog.text


def test_hf_dinov2_layout_matches_transformers(tmp_path):
    """The Dinov2Model mapping (Phikon-v2's layout) on a small model: transformers' CLS = pathomix's timm CLS."""
    transformers = pytest.importorskip("transformers")
    import timm

    config = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                                       patch_size=16, layerscale_value=0.5, layer_norm_eps=1e-6)
    torch.manual_seed(3)
    hf = transformers.Dinov2Model(config).eval()
    shipped = {k.replace(".attention.q_proj.", ".attention.attention.query.")
                .replace(".attention.k_proj.", ".attention.attention.key.")
                .replace(".attention.v_proj.", ".attention.attention.value.")
                .replace(".attention.o_proj.", ".attention.output.dense."): v for k, v in hf.state_dict().items()}
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=32, embed_dim=64,
                              depth=2, num_heads=4, init_values=1.0).eval()
    state = W.FORMATS["hf_dinov2"].to_model({k: v for k, v in shipped.items() if k != "embeddings.mask_token"})
    assert W.mismatches(model.state_dict(), state) == ([], [], [])
    model.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), hf(pixel_values=x).last_hidden_state[:, 0], rtol=1e-4, atol=1e-4)


def test_cls_mean_embedding_leaves_the_register_tokens_out():
    import timm

    from pathomix.features.encoders import Encoder

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, reg_tokens=4,
                            global_pool="").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        tokens = vit.forward_features(x)
        got = Encoder(vit, "cls+mean")(x)
    assert tokens.shape[1] == 1 + 4 + 4
    torch.testing.assert_close(got, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))


# ---- errors ------------------------------------------------------------------------------------------------


def test_missing_weights_name_the_hub_file_and_both_fixes(hf_cache):
    with pytest.raises(PathomixInputError) as err:
        build_encoder("uni_v1", None)
    text = str(err.value)
    for part in ("uni_v1", "MahmoodLab/UNI", "pytorch_model.bin", "features.weights",
                 "huggingface-cli download MahmoodLab/UNI pytorch_model.bin", str(hf_cache), "allow_random_init"):
        assert part in text, part


def test_no_weights_without_random_init_is_an_error(hf_cache):
    with pytest.raises(PathomixInputError, match="has no weights.*features.weights.*allow_random_init"):
        build_encoder("resnet18_trunc", None)
    with pytest.raises(PathomixInputError, match="kaiko-vits16"):
        build_encoder("kaiko-vits16", {"uni_v1": "/nowhere/pytorch_model.bin"})  # another encoder's path


def test_a_cache_under_a_former_repository_name_is_found(hf_cache):
    entry = ENCODERS["kaiko-vitl14"]
    assert W.cached_weights(entry) is None
    _fake_cache(hf_cache, entry.hub_aliases[0], entry.weights_file, {"x": torch.zeros(1)})
    assert W.cached_weights(entry).name == "model.safetensors"


def test_random_init_only_when_asked(hf_cache, caplog):
    assert W.resolve_weights("uni_v1", None, allow_random_init=True) is None
    _, _, digest = build_encoder("vit_tiny", {"uni_v1": None}, allow_random_init=True)
    assert digest == RANDOM_INIT and "RANDOMLY INITIALISED" in caplog.text
    assert ExtractParams().allow_random_init is False


def test_mismatching_checkpoint_names_the_first_keys(tmp_path, hf_cache):
    ref = _reference("vit_tiny")
    state = ref.state_dict()
    state["blocks.0.attn.qkv.weight"] = state.pop("blocks.0.attn.qkv.weight")[:, :10]
    state["head.weight"] = torch.zeros(3, 192)
    del state["norm.bias"]
    _save(state, tmp_path / "w.safetensors")
    with pytest.raises(PathomixInputError) as err:
        build_encoder("vit_tiny", str(tmp_path / "w.safetensors"))
    text = str(err.value)
    assert "do not fit vit_tiny" in text and "norm.bias" in text and "head.weight" in text
    assert "blocks.0.attn.qkv.weight (576, 10)" in text
    # a checkpoint of another model (a full ResNet for a ViT) is refused, not partially loaded
    torch.save(_reference("resnet18_trunc").state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(PathomixInputError, match=r"missing key\(s\) \['cls_token'"):
        build_encoder("vit_tiny", {"vit_tiny": str(tmp_path / "resnet.pt")})


def test_unreadable_checkpoint_is_an_input_error(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    for name in ("junk.bin", "junk.safetensors"):
        with pytest.raises(PathomixInputError, match=f"{name} cannot be read"):
            build_encoder("vit_tiny", str(tmp_path / name))


def test_only_the_resnet_trunk_drops_keys():
    assert W.FORMATS["resnet_trunc"].drops("layer4.2.bn3.weight") and W.FORMATS["resnet_trunc"].drops("fc.bias")
    assert not W.FORMATS["timm"].drops("layer4.2.bn3.weight") and not W.FORMATS["timm"].drops("head.weight")


def test_weights_mapping_is_looked_up_by_name(tmp_path, hf_cache):
    with pytest.raises(PathomixInputError, match="unknown encoder"):
        W.resolve_weights("vit_tiny", {"vit_tinny": "x"}, allow_random_init=True)
    (tmp_path / "a.pt").write_bytes(b"")
    assert W.resolve_weights("vit_tiny", {"vit_tiny": str(tmp_path / "a.pt"), "uni_v1": None}, False) == \
        tmp_path / "a.pt"
    assert W.resolve_weights("vit_tiny", str(tmp_path / "a.pt"), False) == tmp_path / "a.pt"
    with pytest.raises(PathomixInputError, match="do not exist"):
        W.resolve_weights("vit_tiny", str(tmp_path / "missing.pt"), True)


def test_extract_params_take_a_mapping():
    from pathomix.features.cli import load_extract_params

    params = load_extract_params({"encoder": "uni_v1", "weights": {"uni_v1": "/w/uni.bin", "virchow": None},
                                  "allow_random_init": "false"})
    assert params.weights == {"uni_v1": "/w/uni.bin", "virchow": None} and params.allow_random_init is False
    assert load_extract_params({"weights": "/w/r.pt"}).weights == "/w/r.pt"


def test_gigapath_resize_and_centre_crop():
    from pathomix.features.encoders import ENCODERS as SPECS

    transform = DeviceTransform(SPECS["gigapath"])
    batch = torch.randint(0, 255, (2, 1, 3, 256, 256), dtype=torch.uint8).reshape(2, 3, 256, 256)
    got = transform(batch, grayscale=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (SPECS["gigapath"].mean, SPECS["gigapath"].std))
    want = (batch.float()[..., 16:240, 16:240] / 255 - mean) / std
    assert got.shape == (2, 3, 224, 224)
    torch.testing.assert_close(got, want)


# ---- --list-encoders ---------------------------------------------------------------------------------------


def test_list_encoders_shows_source_and_local_state(hf_cache, capsys):
    _fake_cache(hf_cache, "owkin/phikon", "pytorch_model.bin", {"x": torch.zeros(1)})
    assert main(["--list-encoders"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert lines[0].split("\t")[:7] == ["name", "dim", "input", "embedding", "norm", "weights", "local"]
    assert len(rows) >= 20 and set(rows) == set(ENCODERS)
    assert rows["phikon"][1:3] == ["768", "224"] and rows["phikon"][5] == "owkin/phikon pytorch_model.bin"
    assert rows["phikon"][6] == "cache" and rows["uni_v1"][6] == "no" and rows["vit_tiny"][6] == "-"
    assert rows["virchow2"][3] == "cls+mean"
    (hf_cache / "v.pt").write_bytes(b"")
    assert main(["--list-encoders", "--params", json.dumps({"weights": {"vit_tiny": str(hf_cache / "v.pt")}})]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["vit_tiny"][6] == "config" and rows["phikon"][6] == "cache"


def test_readme_table_is_the_registry():
    from pathlib import Path

    from pathomix.features.encoders import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme, "README's encoder table is stale: paste encoders.markdown_table()"
    assert all(f"`{name}`" in readme for name in UNSUPPORTED)
