"""The patch encoders of the catalogue (:data:`pathomix.catalog.ENCODERS`): one torch-free entry per encoder.

They live in the features stage, not in :mod:`pathomix.catalog`, so that the extraction rules' hash of the
stage's source (``code_hash("features")``) covers them: editing an entry re-extracts, adding a model does not.
:mod:`pathomix.features.encoders` builds the encoders from them; the config schema's enum is generated from
them (:mod:`pathomix.schema`); :mod:`pathomix.features.weights` finds and maps their checkpoints.

Names follow TRIDENT's ``encoder_factory`` (mahmoodlab/TRIDENT, ``trident/patch_encoder_models/load.py``) where
TRIDENT has the model. Each foundation entry states, with its source: the timm architecture and the kwargs the
model card / reference loader passes, the input size, the normalisation, what the embedding is, its dimension,
and the checkpoint the hub repository ships (file name and key layout, :data:`CHECKPOINT_FORMATS`). Every entry
is built by timm (or the plain-torch ResNet trunk) without the network; checkpoints in another layout
(transformers ``ViTModel``/``Dinov2Model``) are mapped to timm's names by :mod:`pathomix.features.weights`.

Resize policy (all entries): pathomix resizes the whole tile to ``input_px`` (bilinear, antialiased) — for the
reference transforms ``Resize(input_px) + CenterCrop(input_px)`` of a square tile that is the same image —
except where ``crop_pct`` < 1 (GigaPath: ``Resize(256) + CenterCrop(224)``): then the tile is resized to
``input_px / crop_pct`` and centre-cropped to ``input_px``. Reference code often resizes bicubic; pathomix
uses one interpolation for all encoders.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# bioptimus H-optimus-0 config.json ``pretrained_cfg`` (also H-optimus-1, H0-mini model cards)
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
# kaiko-ai/towards_large_pathology_fms and TRIDENT utils/constants.py KAIKO_MEAN/STD
KAIKO = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# lunit-io/benchmark-ssl-pathology README (ViT-S DINO training statistics)
LUNIT = ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464))
# histai/hibou-b preprocessor_config.json; TRIDENT utils/constants.py HIBOU_MEAN/STD
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
NORMS = {"imagenet": IMAGENET, "hoptimus": HOPTIMUS, "kaiko": KAIKO, "lunit": LUNIT, "hibou": HIBOU}

EMBEDDINGS = ("pool", "cls", "cls+mean")
"""``pool``: the ResNet trunk's global average pool; ``cls``: the class token after the final norm;
``cls+mean``: the class token concatenated with the mean of the patch tokens (register tokens excluded)."""

CHECKPOINT_FORMATS = ("timm", "resnet_trunc", "hf_vit", "hf_dinov2", "hf_dinov2_reg", "timm054_swin")
"""Key layouts of the shipped checkpoints, mapped by :mod:`pathomix.features.weights`: ``timm`` (the timm
model's own state dict), ``resnet_trunc`` (a full torchvision/timm ResNet: ``layer4.*`` and ``fc.*`` are
dropped, explicitly), ``hf_vit`` (transformers ``ViTModel``), ``hf_dinov2`` (transformers ``Dinov2Model``),
``hf_dinov2_reg`` (Hibou's remote-code ``Dinov2ModelWithRegisters``), ``timm054_swin`` (a Swin saved by timm
0.5.4: CTransPath, :mod:`pathomix.features.ctranspath`)."""


@dataclass(frozen=True)
class EncoderEntry:
    """One registered patch encoder: :mod:`pathomix.features.encoders` builds it from ``family``
    (``resnet_trunc``: a ResNet through layer3 + avg pool; ``timm``: ``timm.create_model(arch, **kwargs)``
    with ``num_classes=0``) and maps (B, 3, ``input_px``, ``input_px``) to (B, ``dim``).

    ``kwargs`` are the architecture's keyword arguments as (name, value) pairs; the layer classes are named
    by string (``mlp_layer="SwiGLUPacked"``, ``act_layer="SiLU"``, ``norm_eps``) so that this module stays
    torch-free. ``hub_id``/``weights_file``: where the weights live on the Hugging Face hub (looked up in the
    local cache, offline); ``checkpoint_format``: its key layout (:data:`CHECKPOINT_FORMATS`); ``gated``: the
    hub repository asks for an access agreement."""

    name: str
    family: str
    arch: str
    dim: int
    input_px: int
    description: str = ""
    kwargs: tuple[tuple[str, object], ...] = ()
    norm: str = "imagenet"
    embedding: str = "cls"
    hub_id: str | None = None
    weights_file: str | None = None
    checkpoint_format: str = "timm"
    crop_pct: float = 1.0
    gated: bool = False
    source: str = ""
    hub_aliases: tuple[str, ...] = ()  # former names of the hub repository (a cache made under them is found too)
    hub_repo_type: str = "model"  # "dataset" for weights kept in a dataset repository (CTransPath in hest-bench)

    @property
    def mean(self) -> tuple[float, float, float]:
        return NORMS[self.norm][0]

    @property
    def std(self) -> tuple[float, float, float]:
        return NORMS[self.norm][1]

    @property
    def weights_source(self) -> str:
        """``hub_id weights_file`` (as ``huggingface-cli download`` takes them), or a note that only a
        configured path provides the weights."""
        return f"{self.hub_id} {self.weights_file}" if self.hub_id else "features.weights path only"


def _kw(**kwargs: object) -> tuple[tuple[str, object], ...]:
    return tuple(kwargs.items())


_SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}

ENCODERS: dict[str, EncoderEntry] = {
    e.name: e
    for e in (
        # ---- pathomix's own (weights only from a configured path) ----
        EncoderEntry("resnet50_trunc", "resnet_trunc", "resnet50", 1024, 224, embedding="pool",
                     checkpoint_format="resnet_trunc",
                     description="ResNet50 through layer3 + avg pool (CLAM default), 1024-d"),
        EncoderEntry("resnet18_trunc", "resnet_trunc", "resnet18", 256, 224, embedding="pool",
                     checkpoint_format="resnet_trunc",
                     description="ResNet18 through layer3 + avg pool, 256-d; light, for CPU demos"),
        EncoderEntry("vit_small", "timm", "vit_small_patch16_224", 384, 224,
                     description="timm ViT-S/16 CLS token, 384-d"),
        EncoderEntry("vit_tiny", "timm", "vit_tiny_patch16_224", 192, 224,
                     description="timm ViT-Ti/16 CLS token, 192-d"),
        # ---- foundation models (TRIDENT names) ----
        # TRIDENT ResNet50InferenceEncoder: timm resnet50.tv_in1k, features_only out_indices [3] + avg pool
        EncoderEntry("resnet50", "resnet_trunc", "resnet50", 1024, 224, embedding="pool",
                     hub_id="timm/resnet50.tv_in1k", weights_file="model.safetensors", checkpoint_format="resnet_trunc",
                     source="TRIDENT ResNet50InferenceEncoder; hf timm/resnet50.tv_in1k",
                     description="ImageNet ResNet50 (torchvision weights) through layer3 + avg pool, 1024-d"),
        # UNI model card (MahmoodLab/UNI) and TRIDENT UNIInferenceEncoder: timm state dict pytorch_model.bin
        EncoderEntry("uni_v1", "timm", "vit_large_patch16_224", 1024, 224,
                     kwargs=_kw(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True),
                     hub_id="MahmoodLab/UNI", weights_file="pytorch_model.bin", gated=True,
                     source="MahmoodLab/UNI model card; TRIDENT UNIInferenceEncoder",
                     description="UNI ViT-L/16 (Mass-100K, DINOv2), CLS 1024-d"),
        # UNI2-h model card and TRIDENT UNIv2InferenceEncoder
        EncoderEntry("uni_v2", "timm", "vit_giant_patch14_224", 1536, 224,
                     kwargs=_kw(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                                mlp_ratio=2.66667 * 2, no_embed_class=True, reg_tokens=8, dynamic_img_size=True,
                                **_SWIGLU),
                     hub_id="MahmoodLab/UNI2-h", weights_file="pytorch_model.bin", gated=True,
                     source="MahmoodLab/UNI2-h model card; TRIDENT UNIv2InferenceEncoder",
                     description="UNI2-h ViT-H/14 (SwiGLU, 8 registers), CLS 1536-d"),
        # Virchow model card (paige-ai/Virchow) and TRIDENT VirchowInferenceEncoder: embedding = CLS ‖ mean(patches)
        EncoderEntry("virchow", "timm", "vit_huge_patch14_224", 2560, 224, embedding="cls+mean",
                     kwargs=_kw(img_size=224, init_values=1e-5, mlp_ratio=5.3375, global_pool="",
                                dynamic_img_size=True, **_SWIGLU),
                     hub_id="paige-ai/Virchow", weights_file="pytorch_model.bin", gated=True,
                     source="paige-ai/Virchow model card; TRIDENT VirchowInferenceEncoder",
                     description="Virchow ViT-H/14 (SwiGLU), CLS + mean patch token, 2560-d"),
        # Virchow2 model card and TRIDENT Virchow2InferenceEncoder: 4 registers, excluded from the patch mean
        EncoderEntry("virchow2", "timm", "vit_huge_patch14_224", 2560, 224, embedding="cls+mean",
                     kwargs=_kw(img_size=224, init_values=1e-5, mlp_ratio=5.3375, reg_tokens=4, global_pool="",
                                dynamic_img_size=True, **_SWIGLU),
                     hub_id="paige-ai/Virchow2", weights_file="pytorch_model.bin", gated=True,
                     source="paige-ai/Virchow2 model card; TRIDENT Virchow2InferenceEncoder",
                     description="Virchow2 ViT-H/14 (SwiGLU, 4 registers), CLS + mean patch token, 2560-d"),
        # H-optimus-0 config.json (architecture vit_giant_patch14_reg4_dinov2, input 224, own mean/std) and TRIDENT
        EncoderEntry("hoptimus0", "timm", "vit_giant_patch14_reg4_dinov2", 1536, 224, norm="hoptimus",
                     kwargs=_kw(img_size=224, init_values=1e-5, global_pool="token", dynamic_img_size=True),
                     hub_id="bioptimus/H-optimus-0", weights_file="pytorch_model.bin",
                     source="bioptimus/H-optimus-0 config.json; TRIDENT HOptimus0InferenceEncoder",
                     description="H-optimus-0 ViT-g/14 (4 registers), CLS 1536-d"),
        EncoderEntry("hoptimus1", "timm", "vit_giant_patch14_reg4_dinov2", 1536, 224, norm="hoptimus",
                     kwargs=_kw(img_size=224, init_values=1e-5, global_pool="token", dynamic_img_size=True),
                     hub_id="bioptimus/H-optimus-1", weights_file="pytorch_model.bin", gated=True,
                     source="bioptimus/H-optimus-1 model card; TRIDENT HOptimus1InferenceEncoder",
                     description="H-optimus-1 ViT-g/14 (4 registers), CLS 1536-d"),
        # H0-mini model card: timm.create_model("hf-hub:bioptimus/H0-mini", mlp_layer=SwiGLUPacked,
        # act_layer=SiLU); ViT-B/14 with 4 registers distilled from H-optimus-0; TRIDENT default: CLS 768-d
        EncoderEntry("h0-mini", "timm", "vit_base_patch14_reg4_dinov2", 768, 224, norm="hoptimus",
                     kwargs=_kw(img_size=224, dynamic_img_size=True, **_SWIGLU),
                     hub_id="bioptimus/H0-mini", weights_file="model.safetensors", gated=True,
                     source="bioptimus/H0-mini model card; TRIDENT H0MiniInferenceEncoder",
                     description="H0-mini ViT-B/14 (SwiGLU, 4 registers, distilled), CLS 768-d"),
        # Prov-GigaPath tile encoder: hub config.json (vit_giant_patch14_dinov2 with patch 16, img 224) and
        # TRIDENT GigaPathInferenceEncoder; reference transform Resize(256, bicubic) + CenterCrop(224)
        EncoderEntry("gigapath", "timm", "vit_giant_patch14_dinov2", 1536, 224, crop_pct=224 / 256,
                     kwargs=_kw(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24,
                                mlp_ratio=5.33334, dynamic_img_size=True),
                     hub_id="prov-gigapath/prov-gigapath", weights_file="pytorch_model.bin", gated=True,
                     source="prov-gigapath/prov-gigapath model card; TRIDENT GigaPathInferenceEncoder",
                     description="Prov-GigaPath tile encoder ViT-g/16, CLS 1536-d"),
        # GPFM: TRIDENT GPFMInferenceEncoder: vit_large_patch14_dinov2 at 224, init_values 1e-5, GPFM.pth strict
        EncoderEntry("gpfm", "timm", "vit_large_patch14_dinov2", 1024, 224,
                     kwargs=_kw(img_size=224, init_values=1e-5, dynamic_img_size=True),
                     hub_id="majiabo/GPFM", weights_file="GPFM.pth",
                     source="majiabo/GPFM; TRIDENT GPFMInferenceEncoder",
                     description="GPFM ViT-L/14 (DINOv2 + distillation), CLS 1024-d"),
        # Phikon: owkin/phikon config.json (transformers ViTModel, ViT-B/16, layer_norm_eps 1e-12);
        # TRIDENT PhikonInferenceEncoder: last_hidden_state[:, 0]
        EncoderEntry("phikon", "timm", "vit_base_patch16_224", 768, 224,
                     kwargs=_kw(img_size=224, norm_eps=1e-12),
                     hub_id="owkin/phikon", weights_file="pytorch_model.bin", checkpoint_format="hf_vit",
                     source="owkin/phikon config.json; TRIDENT PhikonInferenceEncoder",
                     description="Phikon ViT-B/16 (iBOT, TCGA), CLS 768-d"),
        # Phikon-v2 model card: transformers Dinov2Model ViT-L/16 at 224 (layerscale, layer_norm_eps 1e-6);
        # TRIDENT Phikonv2InferenceEncoder: last_hidden_state[:, 0]
        EncoderEntry("phikon_v2", "timm", "vit_large_patch16_224", 1024, 224,
                     kwargs=_kw(img_size=224, init_values=1e-5),
                     hub_id="owkin/phikon-v2", weights_file="model.safetensors", checkpoint_format="hf_dinov2",
                     source="owkin/phikon-v2 model card; TRIDENT Phikonv2InferenceEncoder",
                     description="Phikon-v2 ViT-L/16 (DINOv2, PANCAN-XL), CLS 1024-d"),
        # kaiko.ai: TRIDENT KaikoInferenceEncoder and the model cards of 1aurent/<repo>.kaiko_ai_towards_large_
        # pathology_fms (model.safetensors, timm layout; Resize + CenterCrop 224, mean/std 0.5). The L/14's
        # config.json builds vit_large_patch14_reg4_dinov2 at 518 (37×37 position grid), run at 224 through
        # dynamic_img_size; its repository is ..._reg4_224... (TRIDENT's ..._reg4_dinov2... name redirects).
        *(
            EncoderEntry(f"kaiko-{short}", "timm", arch, dim, 224, norm="kaiko",
                         kwargs=_kw(img_size=img, dynamic_img_size=True),
                         hub_id=f"1aurent/{repo}.kaiko_ai_towards_large_pathology_fms",
                         hub_aliases=tuple(f"1aurent/{a}.kaiko_ai_towards_large_pathology_fms" for a in aliases),
                         weights_file="model.safetensors",
                         source="kaiko-ai/towards_large_pathology_fms; 1aurent cards; TRIDENT KaikoInferenceEncoder",
                         description=f"kaiko.ai {label} (DINO/DINOv2, TCGA), CLS {dim}-d")
            for short, arch, repo, aliases, dim, img, label in (
                ("vits8", "vit_small_patch8_224", "vit_small_patch8_224", (), 384, 224, "ViT-S/8"),
                ("vits16", "vit_small_patch16_224", "vit_small_patch16_224", (), 384, 224, "ViT-S/16"),
                ("vitb8", "vit_base_patch8_224", "vit_base_patch8_224", (), 768, 224, "ViT-B/8"),
                ("vitb16", "vit_base_patch16_224", "vit_base_patch16_224", (), 768, 224, "ViT-B/16"),
                ("vitl14", "vit_large_patch14_reg4_dinov2", "vit_large_patch14_reg4_224",
                 ("vit_large_patch14_reg4_dinov2",), 1024, 518, "ViT-L/14 (4 registers)"),
            )
        ),
        # CTransPath as CHIEF released it: TRIDENT CTransPathInferenceEncoder loads state["model"] of
        # CHIEF_CTransPath.pth (hest-bench dataset repo) into timm-0.5.4 swin_tiny_patch4_window7_224 with
        # embed_layer=ConvStem, head=Identity; STAMP chief_ctranspath.py likewise; ImageNet mean/std, 224
        EncoderEntry("ctranspath", "timm", "swin_tiny_patch4_window7_224", 768, 224, embedding="pool",
                     kwargs=_kw(embed_layer="ConvStem"), checkpoint_format="timm054_swin",
                     hub_id="MahmoodLab/hest-bench", hub_repo_type="dataset",
                     weights_file="fm_v1/ctranspath/CHIEF_CTransPath.pth", gated=True,
                     source="Xiyue-Wang/TransPath, hms-dbmi/CHIEF; TRIDENT CTransPathInferenceEncoder",
                     description="CTransPath Swin-T/4 with a convolutional stem (CHIEF weights), avg pool 768-d"),
        # Hibou: histai/hibou-b config.json (remote-code Dinov2ModelWithRegisters: patch 14, image 224, 4 registers,
        # layer scale, use_swiglu_ffn, hidden = ceil8(2/3 · 4 · d), layer_norm_eps 1e-6), TRIDENT HibouLInferenceEncoder
        # (pooler_output = CLS after the final norm; Resize + CenterCrop 224, Hibou mean/std). timm's packed SwiGLU
        # takes mlp_ratio = 2 · hidden / d: 2 · 2736 / 1024 (L), 2 · 2048 / 768 (B, rounded up so int() gives 4096)
        EncoderEntry("hibou_l", "timm", "vit_large_patch14_reg4_dinov2", 1024, 224, norm="hibou",
                     kwargs=_kw(img_size=224, mlp_ratio=5.34375, dynamic_img_size=True, **_SWIGLU),
                     hub_id="histai/hibou-L", weights_file="model.safetensors", checkpoint_format="hf_dinov2_reg",
                     gated=True, source="histai/hibou-L model card; TRIDENT HibouLInferenceEncoder",
                     description="Hibou-L ViT-L/14 (SwiGLU, 4 registers), CLS 1024-d"),
        EncoderEntry("hibou_b", "timm", "vit_base_patch14_reg4_dinov2", 768, 224, norm="hibou",
                     kwargs=_kw(img_size=224, mlp_ratio=5.3333334, dynamic_img_size=True, **_SWIGLU),
                     hub_id="histai/hibou-b", weights_file="model.safetensors", checkpoint_format="hf_dinov2_reg",
                     source="histai/hibou-b config.json and model card",
                     description="Hibou-B ViT-B/14 (SwiGLU, 4 registers), CLS 768-d"),
        # Lunit DINO ViT-S/8: TRIDENT LunitS8InferenceEncoder, timm hub 1aurent/vit_small_patch8_224.lunit_dino
        EncoderEntry("lunit-vits8", "timm", "vit_small_patch8_224", 384, 224, norm="lunit",
                     kwargs=_kw(img_size=224, dynamic_img_size=True),
                     hub_id="1aurent/vit_small_patch8_224.lunit_dino", weights_file="model.safetensors",
                     source="lunit-io/benchmark-ssl-pathology; TRIDENT LunitS8InferenceEncoder",
                     description="Lunit DINO ViT-S/8, CLS 384-d"),
    )
}

UNSUPPORTED: dict[str, str] = {
    "conch_v1": "needs the `conch` package (CoCa text-image model), not on the package index (GitHub only)",
    "conch_v15": "the CONCH v1.5 attention-pooler head is not in timm/transformers (TRIDENT ships its own model zoo "
                 "code); not built here",
    "musk": "needs the MUSK package (lilab-stanford/MUSK, BEiT-3 via torchscale), GitHub only: `musk` on the "
            "package index is an unrelated empty 2020 project",
    "midnight12k / openmidnight": "DINOv2 ViT-g/14 in transformers / facebookresearch layout with a retrained "
                                  "position grid; not yet mapped to timm",
    "keep / genbio-pathfm / gemma4-*": "vision-language or custom architectures outside timm",
}
"""TRIDENT encoders pathomix does not register, and why (README lists them)."""
