"""KS-Fusion (deformable grid attention, gene-guided Gram consistency, CGC) and UMEML (prototypes,
modularity, registers, shared decoder) mechanisms, each checked directly. CPU, no files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pathomix.models import MODELS, ModelParams, wsi_key
from pathomix.models.auxiliary import GENE_VIEW, ggc_gram, igc_gram
from pathomix.models.deformable import (
    DeformableCrossAttention,
    reference_points,
    sample_grid,
    scatter_to_grid,
    splat_to_tiles,
)
from pathomix.models.spec import pos_key
from pathomix.tasks import get_task
from pathomix.train.cgc import GradientCoordinator
from pathomix.train.objectives import make_objective

DIMS = {"wsi": 16, "genes": 12, "genes_tumour": 5, "genes_tme": 4}
PARAMS = ModelParams(hidden=8, dropout=0.0, modality_dropout=0.0)


def _inputs(n: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    genes = torch.randn(1, DIMS["genes"], generator=g)
    pos = torch.stack([torch.arange(n) % 5, torch.arange(n) // 5], dim=-1).float()
    return {wsi_key("20x"): torch.randn(1, n, DIMS["wsi"], generator=g), pos_key("20x"): pos[None],
            "genes": genes, "genes_tumour": genes[:, :5], "genes_tme": genes[:, 5:9]}


# ---- deformable sampling on the tile grid --------------------------------------------------------
def test_tiles_land_on_their_grid_cells() -> None:
    tokens = torch.arange(12.0).view(1, 4, 3)
    pos = torch.tensor([[[2.0, 1.0], [0.0, 0.0], [3.0, 1.0], [0.0, 1.0]]]) + 7  # offset: the grid starts at the bag
    grid = scatter_to_grid(tokens, pos, size=50)
    assert grid.shape == (2, 4)
    assert torch.equal(grid.features[0, :, 1, 2], tokens[0, 0]) and torch.equal(grid.features[0, :, 0, 0], tokens[0, 1])
    assert grid.occupancy[0, 0].tolist() == [[1, 0, 0, 0], [1, 0, 1, 1]]
    # a bag wider than the grid is scaled down and tiles that share a cell are averaged
    wide = scatter_to_grid(tokens, torch.tensor([[[0.0, 0.0], [1.0, 0.0], [98.0, 0.0], [99.0, 0.0]]]), size=50)
    assert wide.shape == (1, 50) and int(wide.occupancy.sum()) == 2
    assert torch.allclose(wide.features[0, :, 0, 0], tokens[0, :2].mean(0))


def test_zero_offsets_sample_the_features_at_the_reference_grid_points() -> None:
    torch.manual_seed(0)
    n, side = 30, 6  # a 6 x 5 bag: with >= 6 points per side the reference lattice is the cells themselves
    pos = torch.stack([torch.arange(n) % side, torch.arange(n) // side], dim=-1).float()[None]
    perm = torch.randperm(n)  # storage order is not grid order
    tokens = torch.randn(1, n, 8)
    grid = scatter_to_grid(tokens[:, perm], pos[:, perm], size=50)
    attn = DeformableCrossAttention(8, points=12, offset_scale=4.0)  # offset net starts at zero
    query = torch.randn(1, 8)
    points = attn.sampling_points(query, grid)
    assert torch.equal(points[0], reference_points(5, 6, 12))
    samples = sample_grid(grid.features, points)
    assert torch.allclose(samples[0], tokens[0], atol=1e-6)  # row-major lattice = the tiles in raster order
    # with a coarser lattice the points are spread over the grid; between cells the sample is bilinear
    coarse = reference_points(5, 6, 3)
    assert coarse.tolist() == [[x, y] for y in (0.0, 2.0, 4.0) for x in (0.0, 2.5, 5.0)]
    mid = sample_grid(grid.features, coarse[None])[0, 1]  # (2.5, 0): halfway between tiles 2 and 3
    assert torch.allclose(mid, tokens[0, 2:4].mean(0), atol=1e-6)


def test_offsets_move_the_samples_within_their_bound() -> None:
    torch.manual_seed(0)
    grid = scatter_to_grid(torch.randn(1, 30, 8), _inputs(30)[pos_key("20x")], size=50)
    attn = DeformableCrossAttention(8, points=3, offset_scale=0.5)
    torch.nn.init.normal_(attn.offsets[2].weight, std=10.0)  # saturate the tanh
    moved = attn.sampling_points(torch.randn(1, 8), grid) - reference_points(*grid.shape, 3)
    spacing = torch.tensor([2.0, 2.5])  # 5 x 6 cells, 3 points per side
    assert (moved.abs() <= 0.5 * spacing + 1e-5).all() and moved.abs().max() > 0.1


def test_attention_maps_back_to_the_sampled_tiles() -> None:
    tokens = torch.randn(1, 4, 8)
    grid = scatter_to_grid(tokens, torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]), size=50)
    at_tile_1 = splat_to_tiles(torch.tensor([[1.0]]), torch.tensor([[[1.0, 0.0]]]), grid)
    assert at_tile_1.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    centre = splat_to_tiles(torch.tensor([[1.0]]), torch.tensor([[[0.5, 0.5]]]), grid)
    assert torch.allclose(centre, torch.full((1, 4), 0.25))


def test_empty_cells_get_no_attention() -> None:
    torch.manual_seed(0)
    # two tiles far apart: the lattice points between them sample empty cells
    grid = scatter_to_grid(torch.rand(1, 2, 8), torch.tensor([[[0.0, 0.0], [9.0, 0.0]]]), size=50)
    attn = DeformableCrossAttention(8, points=10, offset_scale=1.0).eval()
    _, weights, points = attn(torch.randn(1, 8), grid)
    on_tiles = (points[0, :, 0] == 0) | (points[0, :, 0] == 9)
    assert weights[0, on_tiles].sum() > 0.999


# ---- gene-guided Gram consistency ------------------------------------------------------------------
def test_ggc_is_zero_when_histology_mirrors_the_genes_and_igc_ignores_the_gene_view() -> None:
    torch.manual_seed(0)
    t, m = torch.randn(1, 8), torch.randn(1, 8)
    same = {"tumour": {GENE_VIEW: t, "20x": 3 * t}, "tme": {GENE_VIEW: m, "20x": 2 * m}}
    assert ggc_gram(same).item() == pytest.approx(0.0, abs=1e-6)
    swapped = {"tumour": {GENE_VIEW: t, "20x": m}, "tme": {GENE_VIEW: m, "20x": t}}
    assert ggc_gram(swapped).item() > 0.1
    assert igc_gram(same) is None  # one magnification; the gene view is not a magnification
    assert ggc_gram({"tumour": {"20x": t}, "tme": {"20x": m}}) is None  # genes dropped this step


def test_ksfusion_reports_ggc_and_hides_it_on_histology_only_steps() -> None:
    task = get_task("diagnosis")
    model = MODELS["ksfusion"].build(DIMS, task, PARAMS).eval()
    assert set(model(_inputs())["aux"]) == {"ggc"}
    dropped = MODELS["ksfusion"].build(DIMS, task, ModelParams(hidden=8, modality_dropout=1.0)).train()
    assert dropped(_inputs())["aux"] == {}


def test_ksfusion_attention_follows_the_tile_positions() -> None:
    """Permuting the bag (tiles and positions together) permutes the attention and keeps the output."""
    torch.manual_seed(0)
    model = MODELS["ksfusion"].build(DIMS, get_task("diagnosis"), PARAMS).eval()
    x = _inputs(23)
    perm = torch.randperm(23)
    y = {**x, wsi_key("20x"): x[wsi_key("20x")][:, perm], pos_key("20x"): x[pos_key("20x")][:, perm]}
    a, b = model(x), model(y)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
    assert torch.allclose(a["attention"]["tme"]["20x"][:, perm], b["attention"]["tme"]["20x"], atol=1e-6)


# ---- CGC on the two classifier halves ------------------------------------------------------------------
def test_ksfusion_cgc_coordinates_the_shared_patch_encoder() -> None:
    torch.manual_seed(0)
    task = get_task("diagnosis")
    model = MODELS["ksfusion"].build(DIMS, task, PARAMS)
    shared = model.shared_parameters()
    assert shared and all(any(p is q for q in model.patch.parameters()) for p in shared)
    objective = make_objective(task, [{"y": 0}, {"y": 1}, {"y": 2}], torch.device("cpu"))
    out = model(_inputs())
    assert set(out["branch_logits"]) == {"tumour", "tme"}
    coordinator = GradientCoordinator(model, objective)
    coordinator.backward(out, {"y": 1})
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)
    assert coordinator.take_conflict_rate() in (0.0, 1.0)


# ---- UMEML: modularity, prototypes, registers, shared decoder ---------------------------------------
def _two_triangles() -> torch.Tensor:
    """Two triangles {0, 1, 2} and {3, 4, 5} joined by the edge 2–3: 7 edges, degrees 2,2,3,3,2,2."""
    a = torch.zeros(6, 6)
    for i, j in ((0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5), (2, 3)):
        a[i, j] = a[j, i] = 1.0
    return a[None]


def test_modularity_of_a_known_hard_partition_equals_newmans_q() -> None:
    from pathomix.models.modularity import newman_modularity

    adj = _two_triangles()
    halves = torch.tensor([0, 0, 0, 1, 1, 1])
    # Q = Σ_c [L_c / m − (d_c / 2m)²] = 2 · (3/7 − (7/14)²) = 5/14
    assert newman_modularity(adj, F.one_hot(halves, 2).float()[None]).item() == pytest.approx(5 / 14, abs=1e-6)
    one = torch.zeros(6, dtype=torch.long)  # everything in one community: Q = 1 − 1 = 0
    assert newman_modularity(adj, F.one_hot(one, 1).float()[None]).item() == pytest.approx(0.0, abs=1e-6)
    # singletons: Q = −Σ_i (k_i / 2m)² = −(4 · 2² + 2 · 3²) / 14²
    assert newman_modularity(adj, torch.eye(6)[None]).item() == pytest.approx(-34 / 196, abs=1e-6)
    # a wrong split scores lower than the right one; an unused prototype column changes nothing
    mixed = torch.tensor([0, 1, 0, 1, 0, 1])
    assert newman_modularity(adj, F.one_hot(mixed, 2).float()[None]) < 5 / 14
    assert newman_modularity(adj, F.one_hot(halves, 3).float()[None]).item() == pytest.approx(5 / 14, abs=1e-6)
    # a soft assignment is the expectation over the co-assignment: halfway between the halves and one block
    soft = (0.5 * F.one_hot(halves, 2).float() + 0.5 * torch.tensor([1.0, 0.0]))[None]
    assert newman_modularity(adj, soft).item() < 5 / 14
    assert newman_modularity(torch.zeros(1, 3, 3), torch.eye(3)[None]).item() == 0.0  # no edges


def test_modularity_loss_prefers_prototypes_at_the_patch_clusters() -> None:
    from pathomix.models.modularity import modularity_loss

    torch.manual_seed(0)
    centres = torch.eye(4)[:2] * 5  # two orthogonal clusters of patches
    patches = torch.cat([c + 0.3 * torch.randn(10, 4) for c in centres])[None]
    good = modularity_loss(patches, centres[None], temperature=0.1)
    bad = modularity_loss(patches, torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]]), 0.1)
    assert good < bad and good.item() == pytest.approx(-0.5, abs=0.05)  # two equal communities: Q → 1/2


def test_umeml_modularity_is_a_training_term_with_its_weight_and_reaches_the_prototypes() -> None:
    torch.manual_seed(0)
    task = get_task("diagnosis")
    model = MODELS["umeml"].build(DIMS, task, PARAMS)
    assert model.prototypes.shape == (5, 8) and model.registers.shape == (3, 8)  # paper: 5 prototypes, 3 registers
    out = model.train()(_inputs())
    assert set(out["aux"]) == {"modularity"} and -2.5 - 1e-6 <= out["aux"]["modularity"].item() <= 5.0
    out["aux"]["modularity"].backward()
    assert model.prototypes.grad is not None and model.prototypes.grad.abs().sum() > 0
    assert model.eval()(_inputs())["aux"] == {}  # not at evaluation: it needs the N x N patch graph
    off = MODELS["umeml"].build(DIMS, task, ModelParams(hidden=8, umeml_modularity=0.0)).train()
    assert off(_inputs())["aux"] == {}


def test_umeml_registers_change_the_output() -> None:
    torch.manual_seed(0)
    model = MODELS["umeml"].build(DIMS, get_task("diagnosis"), PARAMS).eval()
    before = model(_inputs())["logits"]
    with torch.no_grad():
        model.registers.add_(torch.randn_like(model.registers))  # (a constant shift is normalised away)
    assert not torch.allclose(before, model(_inputs())["logits"])
    none = MODELS["umeml"].build(DIMS, get_task("diagnosis"), ModelParams(hidden=8, umeml_registers=0)).eval()
    assert torch.isfinite(none(_inputs())["logits"]).all()


def test_umeml_decoder_serves_several_tasks_from_one_pass() -> None:
    from pathomix.models.umeml import UMEML

    torch.manual_seed(0)
    tasks = {t: get_task(t).n_outputs for t in ("grading", "diagnosis", "survival")}
    model = UMEML(DIMS, tasks, PARAMS, primary="diagnosis").eval()
    logits = model.predict_tasks(_inputs())
    assert {t: v.shape[-1] for t, v in logits.items()} == tasks == {"grading": 3, "diagnosis": 3, "survival": 4}
    assert torch.equal(model(_inputs())["logits"], logits["diagnosis"])
    # the heads share every parameter but their own
    shared = {n for n, _ in model.named_parameters() if not n.startswith("heads.")}
    assert shared and all(n.startswith("heads.") for n, _ in model.named_parameters() if n not in shared)
