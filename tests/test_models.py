"""Model registry, blocks and losses (unit tests, CPU, no files)."""

from __future__ import annotations

import math

import pytest
import torch

from pathomix.errors import PathomixInputError
from pathomix.models import (
    MODELS,
    OPTIONAL_OUTPUT_KEYS,
    OUTPUT_KEYS,
    ModelParams,
    get_model,
    mif_key,
    required_inputs,
    tile_key,
    wsi_key,
)
from pathomix.models.auxiliary import aux_losses, igc_mse
from pathomix.models.blocks import CrossAttention, GatedAttention, MarkerAttention, SNNEncoder
from pathomix.tasks import get_task
from pathomix.train.losses import (
    class_weights,
    distill_kl,
    distillation_loss,
    survival_log_pmf,
    survival_nll,
    survival_risk,
)

DIMS = {"wsi": 16, "genes": 12, "genes_tumour": 5, "genes_tme": 4, "mif": 16, "markers": 6, "covariates": 3}
PARAMS = ModelParams(hidden=8, dropout=0.0)


def _inputs(n20: int = 7, n10: int | None = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {wsi_key("20x"): torch.randn(1, n20, DIMS["wsi"], generator=g),
           "genes": torch.randn(1, DIMS["genes"], generator=g)}
    if n10 is not None:
        out[wsi_key("10x")] = torch.randn(1, n10, DIMS["wsi"], generator=g)
    out["genes_tumour"] = out["genes"][:, :5]
    out["genes_tme"] = out["genes"][:, 5:9]
    out["pos_20x"] = torch.stack([torch.arange(n20) % 3, torch.arange(n20) // 3], dim=-1)[None].float()  # tile units
    out[mif_key("20x")] = torch.randn(1, 5, DIMS["markers"], DIMS["mif"], generator=g)
    return out


def test_registry_lists_the_models() -> None:
    assert {"abmil", "snn", "dmsf_teacher", "dmsf_student", "fluoroformer"} <= set(MODELS)
    assert get_model("dmsf_student").teacher == "dmsf_teacher"
    assert MODELS["abmil"].needs_wsi and not MODELS["abmil"].needs_genes and MODELS["abmil"].mags == ("20x",)
    assert MODELS["snn"].needs_genes and not MODELS["snn"].needs_wsi
    assert MODELS["dmsf_teacher"].needs_wsi and MODELS["dmsf_teacher"].needs_genes
    assert set(MODELS["dmsf_teacher"].mags) == {"10x", "20x"}
    assert not MODELS["dmsf_student"].needs_genes
    for name in ("ksfusion", "umeml"):
        assert MODELS[name].needs_wsi and MODELS[name].needs_genes and MODELS[name].mags == ("20x",), name
    with pytest.raises(KeyError, match="known models"):
        get_model("nope")
    none = {"wsi": False, "genes": False, "mif": False, "images": False, "covariates": False, "teacher": None}
    assert required_inputs("dmsf_student") == {**none, "wsi": True, "genes": True, "teacher": "dmsf_teacher"}
    assert required_inputs("abmil") == {**none, "wsi": True}
    assert required_inputs("fluoroformer") == {**none, "mif": True}
    assert required_inputs("fof") == {**none, "images": True}
    assert MODELS["fluoroformer"].tile_input == "mif" and MODELS["abmil"].tile_input == "wsi"
    assert MODELS["fof"].tile_input == "wsi"  # its attention weighs the H&E tiles it reads as images
    assert MODELS["snn"].tile_input is None


@pytest.mark.parametrize("name", ["abmil", "snn", "dmsf_teacher", "dmsf_student", "ksfusion", "umeml",
                                  "fluoroformer"])
@pytest.mark.parametrize("task_name", ["diagnosis", "survival"])
def test_forward_contract(name: str, task_name: str) -> None:
    task = get_task(task_name)
    torch.manual_seed(0)
    model = MODELS[name].build(DIMS, task, PARAMS).eval()
    out = model(_inputs())
    assert set(OUTPUT_KEYS) <= set(out) <= {*OUTPUT_KEYS, *OPTIONAL_OUTPUT_KEYS}
    if "branch_logits" in out:  # the logits are the mean of the branch halves
        halves = torch.stack(list(out["branch_logits"].values()))
        assert torch.allclose(halves.mean(dim=0), out["logits"], atol=1e-6)
    assert out["logits"].shape == (1, task.n_outputs)
    assert out["features"].shape[0] == 1
    for by_mag in out["attention"].values():
        for mag, w in by_mag.items():
            assert w.shape == (1, _inputs()[tile_key(MODELS[name].tile_input, mag)].shape[1])
            assert torch.allclose(w.sum(-1), torch.ones(1), atol=1e-5)
    for mag, w in out.get("marker_attention", {}).items():  # per tile, a distribution over its markers
        assert w.shape == _inputs()[mif_key(mag)].shape[:3]
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[:2]), atol=1e-5)


def test_teacher_and_student_share_feature_layout_and_heads() -> None:
    task = get_task("diagnosis")
    teacher = MODELS["dmsf_teacher"].build(DIMS, task, PARAMS).eval()
    student = MODELS["dmsf_student"].build(DIMS, task, PARAMS).eval()
    t, s = teacher(_inputs()), student(_inputs())
    assert t["features"].shape == s["features"].shape == (1, 2 * PARAMS.hidden)
    assert set(t["attention"]) == set(s["attention"]) == {"tumour", "tme"}
    assert set(t["attention"]["tumour"]) == {"20x", "10x"}
    assert "igc" in t["aux"] and t["aux"]["igc"].ndim == 0 and t["aux"]["igc"] >= 0
    # a bag without 10x tiles still works (IGC needs two magnifications)
    t20 = teacher(_inputs(n10=None))
    assert set(t20["attention"]["tme"]) == {"20x"} and "igc" not in t20["aux"]
    assert torch.isfinite(student(_inputs(n10=0))["logits"]).all()


def test_teacher_refuses_empty_subspace() -> None:
    with pytest.raises(PathomixInputError, match="tme"):
        MODELS["dmsf_teacher"].build({**DIMS, "genes_tme": 0}, get_task("diagnosis"), PARAMS)


def test_gated_attention_sums_to_one_and_is_permutation_equivariant() -> None:
    torch.manual_seed(0)
    pool = GatedAttention(8, 4).eval()
    h = torch.randn(2, 11, 8)
    pooled, w = pool(h)
    assert torch.allclose(w.sum(-1), torch.ones(2), atol=1e-6)
    perm = torch.randperm(11)
    pooled_p, w_p = pool(h[:, perm])
    assert torch.allclose(w_p, w[:, perm], atol=1e-6)
    assert torch.allclose(pooled_p, pooled, atol=1e-5)


def test_marker_attention_is_a_distribution_per_tile_and_ignores_marker_order() -> None:
    torch.manual_seed(0)
    block = MarkerAttention(16, 8).eval()
    x = torch.randn(2, 9, 6, 16)
    tokens, w = block(x)
    assert tokens.shape == (2, 9, 16) and w.shape == (2, 9, 6)
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(2, 9), atol=1e-6)
    perm = torch.randperm(6)  # no marker identity: a reordered panel gives the same tokens
    tokens_p, w_p = block(x[:, :, perm])
    assert torch.allclose(tokens_p, tokens, atol=1e-5) and torch.allclose(w_p, w[:, :, perm], atol=1e-6)
    # tiles are fused independently: changing one tile changes only its own token
    y = x.clone()
    y[:, 0] += 1.0
    assert torch.allclose(block(y)[0][:, 1:], tokens[:, 1:], atol=1e-6)


@pytest.mark.parametrize("task_name", ["diagnosis", "survival"])
def test_fluoroformer_is_permutation_invariant_over_tiles(task_name: str) -> None:
    torch.manual_seed(0)
    model = MODELS["fluoroformer"].build(DIMS, get_task(task_name), PARAMS).eval()
    bag = _inputs()[mif_key("20x")]
    out = model({mif_key("20x"): bag})
    perm = torch.randperm(bag.shape[1])
    out_p = model({mif_key("20x"): bag[:, perm]})
    assert torch.allclose(out_p["logits"], out["logits"], atol=1e-5)
    assert torch.allclose(out_p["attention"]["fluoroformer"]["20x"], out["attention"]["fluoroformer"]["20x"][:, perm],
                          atol=1e-6)
    assert torch.allclose(out_p["marker_attention"]["20x"], out["marker_attention"]["20x"][:, perm], atol=1e-6)
    assert out["features"].shape == (1, DIMS["mif"])
    # any number of markers: the same model reads a 4-marker panel (the fusion has no marker slots)
    assert model({mif_key("20x"): bag[:, :, :4]})["marker_attention"]["20x"].shape == (1, bag.shape[1], 4)


def test_cross_attention_weights_are_a_distribution_over_patches() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(8, n_heads=2).eval()
    out, w = attn(torch.randn(1, 2, 8), torch.randn(1, 9, 8))
    assert out.shape == (1, 2, 8) and w.shape == (1, 2, 9)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2), atol=1e-6)


def test_snn_encoder_output_shape() -> None:
    assert SNNEncoder(12, 8, 0.1, n_blocks=2)(torch.randn(3, 12)).shape == (3, 8)


def test_survival_nll_matches_hand_computation() -> None:
    h = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 4)
    logits = torch.log(h / (1 - h))
    bins = torch.tensor([2, 1, 0, 0])
    events = torch.tensor([1, 0, 0, 1])
    # S = [0.9, 0.72, 0.504, 0.3024]
    expected = [
        -math.log(0.72) - math.log(0.3),  # event in bin 2: survived bins 0-1, died in 2
        -math.log(0.72),  # censored in bin 1: survived through bin 1
        -math.log(0.9),  # censored in bin 0
        -math.log(0.1),  # event in bin 0
    ]
    assert survival_nll(logits, bins, events).item() == pytest.approx(sum(expected) / 4, rel=1e-5)
    one = survival_nll(logits[:1], bins[:1], events[:1]).item()
    assert one == pytest.approx(expected[0], rel=1e-5)
    assert survival_risk(logits)[0].item() == pytest.approx(-(0.9 + 0.72 + 0.504 + 0.3024), rel=1e-5)


def test_higher_hazard_is_higher_risk() -> None:
    low, high = torch.full((1, 4), -2.0), torch.full((1, 4), 2.0)
    assert survival_risk(high) > survival_risk(low)


def test_distillation_loss_is_zero_when_student_equals_teacher() -> None:
    torch.manual_seed(0)
    out = {"logits": torch.randn(1, 3), "features": torch.randn(1, 16)}
    same = {k: v.clone() for k, v in out.items()}
    assert distillation_loss(out, same, 2.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    other = {"logits": torch.randn(1, 3), "features": torch.randn(1, 16)}
    assert distillation_loss(out, other, 2.0, 1.0, 1.0).item() > 0
    assert distill_kl(out["logits"], other["logits"], 2.0).item() > 0


def test_class_weights_balance_the_classes() -> None:
    w = class_weights([0, 0, 0, 1], 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 1.0])


def test_igc_is_zero_for_identical_magnifications_and_pluggable() -> None:
    x = torch.randn(1, 8)
    reps = {"tumour": {"20x": x, "10x": 3 * x}, "tme": {"20x": x}}
    assert igc_mse(reps).item() == pytest.approx(0.0, abs=1e-7)
    assert aux_losses(reps, {"igc": 0.0}) == {}
    with pytest.raises(KeyError, match="known"):
        aux_losses(reps, {"cgc_typo": 1.0})


def test_survival_distribution_sums_to_one_and_distils_to_zero() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4)
    for t in (1.0, 2.0):
        assert torch.allclose(survival_log_pmf(logits, t).exp().sum(-1), torch.ones(3), atol=1e-6)
    assert distill_kl(logits, logits.clone(), 2.0, survival_log_pmf).item() == pytest.approx(0.0, abs=1e-6)
    # a uniform shift of all hazard logits changes the survival distribution (a softmax would not see it)
    assert distill_kl(logits, logits + 1.0, 2.0, survival_log_pmf).item() > 1e-3


def test_the_registry_is_built_from_the_catalogue():
    """One table: every catalogue entry is a registered model whose spec comes from the entry, and every
    builder it names imports and builds a model (a joint builder one model for several tasks)."""
    from pathomix import catalog
    from pathomix.models import spec_of

    assert list(MODELS) == list(catalog.MODELS)
    for name, entry in catalog.MODELS.items():
        assert MODELS[name] == spec_of(entry), name
        assert MODELS[name].build is catalog.import_object(entry.builder), name
        assert required_inputs(name) == catalog.model_inputs(name), name
        assert catalog.is_joint(name) == (MODELS[name].build_joint is not None), name
        assert entry.teacher is None or entry.teacher in catalog.MODELS, name
        tasks = [get_task(t) for t in catalog.model_tasks(name, {"tasks": list(catalog.TASK_NAMES)})]
        assert tasks and {t.kind for t in tasks} == set(entry.task_kinds), name
        params = ModelParams(hidden=8, dropout=0.0, fof_image_px=32)
        for kind in entry.task_kinds:  # one task of each kind it trains on
            task = next(t for t in tasks if t.kind == kind)
            assert isinstance(MODELS[name].build(DIMS, task, params), torch.nn.Module), (name, kind)
        if entry.joint:
            assert isinstance(MODELS[name].build_joint(DIMS, tasks, params), torch.nn.Module), name


def test_model_modules_default_to_their_catalogue_magnifications():
    """A model module's own MAGS (its builder's default) are the catalogue's, which the trainer reads."""
    import importlib

    from pathomix import catalog

    for name, entry in catalog.MODELS.items():
        module = importlib.import_module(entry.builder.partition(":")[0])
        assert getattr(module, "MAGS", entry.mags) == entry.mags, name


def test_resources_of_a_model_or_variant():
    from pathomix.catalog import RESOURCES, resources_class, resources_of

    variants = {"abmil-small": {"model": "abmil", "hidden": 32}, "umeml-fast": {"model": "umeml", "epochs": 2},
                "snn-wide": {"model": "snn", "hidden": 256}, "abmil": {"patience": 3}}
    assert resources_of("abmil-small", variants) == resources_of("abmil") == RESOURCES["gpu"].as_dict()
    assert resources_of("abmil", variants) == RESOURCES["gpu"].as_dict()  # own overrides keep the class
    assert resources_of("abmil") == {"gpu": 1, "cpus": 4, "mem_mb": 16000, "runtime": 60, "cpus_per_gpu": 4}
    assert resources_class("umeml-fast", variants) == "gpu_long" and resources_of("umeml")["runtime"] == 90
    assert resources_of("snn-wide", variants) == {"gpu": 0, "cpus": 1, "mem_mb": 8000, "runtime": 30,
                                                  "cpus_per_gpu": 0}
    with pytest.raises(KeyError, match="neither a registered model"):
        resources_of("nope", variants)


def test_catalogue_entries_are_checked_and_one_entry_registers_a_model(monkeypatch):
    """A new model is its module plus one catalogue entry: every question the workflow asks answers from it."""
    from pathomix import catalog
    from pathomix.catalog import entries
    from pathomix.models import spec_of

    with pytest.raises(ValueError, match="reads 'rna'"):
        catalog.ModelEntry("bad", "pathomix.models.abmil:build", reads=("rna",))
    with pytest.raises(ValueError, match="resources 'tpu'"):
        catalog.ModelEntry("bad", "pathomix.models.abmil:build", reads=("wsi",), resources="tpu")
    with pytest.raises(ValueError, match="module:attribute"):
        catalog.ModelEntry("bad", "pathomix.models.abmil.build", reads=("wsi",))
    new = catalog.ModelEntry("abmil2", "pathomix.models.abmil:build", reads=("wsi", "genes"), mags=("20x",),
                             task_kinds=("classification",), resources="cpu")
    monkeypatch.setitem(entries.MODELS, "abmil2", new)
    train = {"tasks": ["diagnosis", "survival"], "variants": {"abmil2-x": {"model": "abmil2"}}}
    assert catalog.model_inputs("abmil2-x", train["variants"]) == {
        "wsi": True, "genes": True, "mif": False, "images": False, "covariates": False, "teacher": None}
    assert catalog.model_tasks("abmil2-x", train) == ["diagnosis"]
    assert catalog.resources_class("abmil2-x", train["variants"]) == "cpu"
    assert catalog.slide_modality("abmil2") == "he" and not catalog.is_joint("abmil2")
    spec = spec_of(new)
    assert spec.needs_genes and spec.build(DIMS, get_task("diagnosis"), PARAMS) is not None


def test_catalogue_is_torch_free():
    """The Snakefile imports the catalogue at parse time: it must not pull in torch (seconds per process)."""
    import subprocess
    import sys

    code = ("import sys, pathomix.catalog as c; c.resources_of('umeml'); c.model_inputs('dmsf_student'); "
            "assert 'torch' not in sys.modules, 'torch imported'; assert 'torch' not in str(c.metric_names())")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_import_nothing_from_io():
    """The models are domain code: they read tensors, never files, so no module of models/ imports pathomix.io."""
    import ast
    from pathlib import Path

    import pathomix.models

    found = []
    for path in sorted(Path(pathomix.models.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # `from pathomix import io` as well as `from pathomix.io.x import y`
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if (n + ".").startswith("pathomix.io.")]
    assert found == []
