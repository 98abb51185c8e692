"""DMSF mechanisms, each checked directly: CGC, Gram IGC, ITA (DPC-kNN), distillation schedule,
variants (ablations as config) and gene importance. CPU, no files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pathomix.catalog import job_params, model_inputs, resolve
from pathomix.errors import PathomixInputError
from pathomix.models import MODELS, ModelParams, wsi_key
from pathomix.models.auxiliary import igc_gram
from pathomix.models.ita import TokenAggregator, dpc_knn
from pathomix.tasks import get_task
from pathomix.train.cgc import GradientCoordinator, coordinate
from pathomix.train.distill import distill_term, teacher_bin_edges
from pathomix.train.loop import EarlyStopping
from pathomix.train.objectives import make_objective
from pathomix.train.params import DistillParams, TrainParams

DIMS = {"wsi": 16, "genes": 12, "genes_tumour": 5, "genes_tme": 4}
PARAMS = ModelParams(hidden=8, dropout=0.0, modality_dropout=0.0)


def _inputs(n20: int = 30, n10: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    genes = torch.randn(1, DIMS["genes"], generator=g)
    return {wsi_key("20x"): torch.randn(1, n20, DIMS["wsi"], generator=g),
            wsi_key("10x"): torch.randn(1, n10, DIMS["wsi"], generator=g),
            "genes": genes, "genes_tumour": genes[:, :5], "genes_tme": genes[:, 5:9]}


# ---- CGC -------------------------------------------------------------------------------------
@pytest.mark.parametrize("conf_a, conf_b", [(0.9, 0.2), (0.1, 0.7)])
def test_cgc_removes_the_conflicting_component_of_the_less_confident_branch(conf_a, conf_b) -> None:
    g_a, g_b = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([-1.0, 1.0, 0.0])
    assert F.cosine_similarity(g_a, g_b, dim=0) < 0
    out = coordinate(g_a, g_b, conf_a, conf_b)
    assert out.conflict
    assert F.cosine_similarity(*out.grads, dim=0) >= -1e-6  # no conflict left
    kept, moved = (0, 1) if conf_a > conf_b else (1, 0)
    assert torch.equal(out.grads[kept], (g_a, g_b)[kept])  # the confident branch keeps its direction
    assert not torch.equal(out.grads[moved], (g_a, g_b)[moved])


def test_cgc_leaves_agreeing_gradients_alone() -> None:
    g_a, g_b = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.1])
    out = coordinate(g_a, g_b, 0.1, 0.9)
    assert not out.conflict and out.grads[0] is g_a and out.grads[1] is g_b


class _TwoBranches(torch.nn.Module):
    """Two logit branches over one shared vector ``w`` whose task gradients conflict (directions
    ``u_a``, ``u_b`` with a negative inner product); ``bias`` sets each branch's confidence at w = 0.
    ``idle`` is shared but used by neither branch (no gradient must reach it)."""

    def __init__(self, bias_a: float, bias_b: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.idle = torch.nn.Parameter(torch.zeros(3))
        self.u = {"tumour": torch.tensor([1.0, 0.3]), "tme": torch.tensor([-1.0, 0.8])}
        self.bias = {"tumour": bias_a, "tme": bias_b}

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        return [self.w, self.idle]

    def forward(self, aux_direction: torch.Tensor | None = None) -> dict:
        branch = {s: torch.stack([self.u[s] @ self.w + self.bias[s], torch.zeros(())])[None] for s in self.u}
        aux = {} if aux_direction is None else {"igc": aux_direction @ self.w}
        return {"logits": torch.stack(list(branch.values())).mean(dim=0), "branch_logits": branch, "aux": aux}


def _grad_w(model: _TwoBranches, loss: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, model.w)[0]


@pytest.mark.parametrize("bias_a, bias_b", [(2.0, -1.0), (-1.0, 2.0)])
def test_cgc_update_on_the_shared_parameters_has_no_conflicting_component(bias_a, bias_b) -> None:
    """Every gradient on the shared parameters goes through CGC, the task loss of the mean logits
    included: the update is the confident branch's whole gradient plus the part of the other's that is
    orthogonal to it; a shared parameter no loss reaches keeps grad None (Adam would move a zero)."""
    task = get_task("idh")
    objective = make_objective(task, [{"y": 0}, {"y": 1}], torch.device("cpu"))
    target = {"y": 0}
    model = _TwoBranches(bias_a, bias_b)
    out = model()
    z = out["branch_logits"]
    # each branch's whole gradient: its own loss (halved, as in the loop) + its share of the mean-logit loss
    g = {s: _grad_w(model, objective.loss(z[s], target) / 2
                    + objective.loss((z[s] + z[o].detach()) / 2, target))
         for s, o in (("tumour", "tme"), ("tme", "tumour"))}
    assert torch.dot(g["tumour"], g["tme"]) < 0  # constructed to conflict
    confident, other = ("tumour", "tme") if bias_a > bias_b else ("tme", "tumour")
    coordinator = GradientCoordinator(model, objective)
    loss = coordinator.backward(model(), target)
    update = model.w.grad
    assert model.idle.grad is None
    assert torch.dot(update, g[confident]) >= 0
    along = torch.dot(update - g[confident], g[confident]) / g[confident].norm()
    assert abs(float(along)) < 1e-6  # nothing of the other branch's conflicting component is left
    removed = torch.dot(g[other], g[confident]) / g[confident].dot(g[confident]) * g[confident]
    assert torch.allclose(update, g[confident] + g[other] - removed, atol=1e-6)
    plain = objective.loss(out["logits"], target) + sum(objective.loss(v, target) / 2 for v in z.values())
    assert torch.isclose(loss, plain.detach())  # the reported loss is the step's loss
    assert coordinator.take_conflict_rate() == 1.0


def test_cgc_also_removes_the_conflict_of_the_other_terms_with_the_confident_branch() -> None:
    task = get_task("idh")
    objective = make_objective(task, [{"y": 0}, {"y": 1}], torch.device("cpu"))
    model = _TwoBranches(2.0, -1.0)
    out = model(aux_direction=torch.tensor([3.0, 0.0]))  # pulls w against the confident branch
    GradientCoordinator(model, objective).backward(out, {"y": 0}, out["aux"]["igc"])
    z = model().get("branch_logits")
    g_conf = _grad_w(model, objective.loss(z["tumour"], {"y": 0}) / 2
                     + objective.loss((z["tumour"] + z["tme"].detach()) / 2, {"y": 0}))
    assert torch.dot(model.w.grad, g_conf) >= 0
    assert abs(float(torch.dot(model.w.grad - g_conf, g_conf))) < 1e-6


def test_cgc_backward_on_the_dmsf_teacher() -> None:
    """Without a conflict CGC is the plain gradient of the step's loss; with one only the shared
    parameters differ. The 10x encoder sees no tiles here: its grad stays None."""
    torch.manual_seed(0)
    task = get_task("diagnosis")
    model = MODELS["dmsf_teacher"].build(DIMS, task, PARAMS)
    objective = make_objective(task, [{"y": 0}, {"y": 1}, {"y": 2}], torch.device("cpu"))
    shared = {id(p) for p in model.shared_parameters()}
    for target in ({"y": 0}, {"y": 1}, {"y": 2}):
        model.zero_grad(set_to_none=True)
        out = model(_inputs(n10=0))
        plain = objective.loss(out["logits"], target) + sum(objective.loss(z, target) / 2
                                                             for z in out["branch_logits"].values())
        plain = plain + sum(out["aux"].values())
        plain.backward()
        expected = {n: p.grad for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        coordinator = GradientCoordinator(model, objective)
        loss = coordinator.backward(model(_inputs(n10=0)), target)
        assert torch.isclose(loss, plain.detach())
        conflict = coordinator.take_conflict_rate() == 1.0
        for n, p in model.named_parameters():
            if expected[n] is None:
                assert p.grad is None, n
            elif not (conflict and id(p) in shared):
                assert torch.allclose(p.grad, expected[n], atol=1e-6), n
        assert any("10x" in n for n, p in model.named_parameters() if p.grad is None)


def test_confidence_is_the_probability_of_the_observed_outcome() -> None:
    task = get_task("diagnosis")
    objective = make_objective(task, [{"y": 0}, {"y": 1}, {"y": 2}], torch.device("cpu"))
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert objective.confidence(logits, {"y": 2}) == pytest.approx(torch.softmax(logits, -1)[0, 2].item())
    surv = make_objective(get_task("survival"), [], torch.device("cpu"))
    hazard_logits = torch.zeros(1, 4)  # h = 0.5 per bin: death in bin 1 has probability 0.5 · 0.5
    assert surv.confidence(hazard_logits, {"bin": 1, "event": 1, "time": 1.0}) == pytest.approx(0.25, rel=1e-5)


# ---- IGC -------------------------------------------------------------------------------------
def test_igc_gram_is_zero_for_identical_magnifications_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    t, m = torch.randn(2, 8), torch.randn(2, 8)
    same = {"tumour": {"20x": t, "10x": t.clone()}, "tme": {"20x": m, "10x": m.clone()}}
    assert igc_gram(same).item() == pytest.approx(0.0, abs=1e-6)
    assert igc_gram({"tumour": {"20x": t, "10x": 5 * t}, "tme": {"20x": m, "10x": 2 * m}}).item() == pytest.approx(
        0.0, abs=1e-6)  # scale-free
    other = {"tumour": {"20x": t, "10x": torch.randn(2, 8)}, "tme": {"20x": m, "10x": -m}}
    value = igc_gram(other).item()
    assert 0.0 < value <= 6.0
    assert igc_gram({"tumour": {"20x": t}, "tme": {"20x": m}}) is None  # one magnification


# ---- ITA -------------------------------------------------------------------------------------
def test_ita_returns_the_configured_number_of_tokens_and_every_patch_has_a_cluster() -> None:
    torch.manual_seed(0)
    agg = TokenAggregator(8, n_tokens=5)
    x = torch.randn(40, 8)
    tokens, assign, sizes = agg(x)
    assert tokens.shape == (5, 8) and assign.shape == (40,)
    assert int(sizes.sum()) == 40 and (sizes > 0).all()
    few, assign_few, _ = agg(torch.randn(3, 8))  # fewer patches than tokens: one cluster each
    assert few.shape == (3, 8) and sorted(assign_few.tolist()) == [0, 1, 2]


def test_ita_is_permutation_invariant() -> None:
    torch.manual_seed(0)
    agg = TokenAggregator(8, n_tokens=6)
    x = torch.randn(50, 8)
    perm = torch.randperm(50)
    a, assign_a, _ = agg(x)
    b, assign_b, _ = agg(x[perm])
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(assign_a[perm], assign_b)


def _centre_of_each_token(x: torch.Tensor, clusters) -> torch.Tensor:
    """(N, H): the value of the centre each token joined (order-free description of the clustering)."""
    return x[clusters.centres][clusters.assign]


def _tied_tokens(scale: float) -> torch.Tensor:
    """Two copies (the second shifted) of a symmetric bag: three exact duplicates at the centre and
    the 16 points ±2·e_i around it, whose densities, peak distances and scores all tie exactly."""
    star = torch.cat([torch.zeros(3, 8), 2 * torch.eye(8), -2 * torch.eye(8)])
    return scale * torch.cat([star, star + torch.tensor([6.0, 3.0, 0, 0, 0, 0, 0, 1.0])])


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_dpc_knn_is_permutation_invariant_on_tied_tokens(scale: float) -> None:
    """Ties are broken by the tokens' values, not their positions: every order of the same tokens
    gives the same clusters (the same centre for every token, the same merged tokens)."""
    x = _tied_tokens(scale)
    ref = dpc_knn(x, 6, k=3)
    agg = TokenAggregator(8, n_tokens=6, k=3)
    merged_ref, _, sizes_ref = agg(x)
    for seed in range(5):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        out = dpc_knn(x[perm], 6, k=3)
        assert torch.equal(_centre_of_each_token(x[perm], out), _centre_of_each_token(x, ref)[perm])
        merged, _, sizes = agg(x[perm])
        assert torch.equal(sizes, sizes_ref)
        assert torch.allclose(merged, merged_ref, atol=1e-5 * scale)


def test_dpc_knn_densities_do_not_underflow_and_do_not_depend_on_the_token_scale() -> None:
    """exp(−d²) of unscaled distances is exactly 0 for tokens ten times larger (then every density
    ties); scaled by the bag's mean kNN distance the clustering is the same at any scale."""
    x = torch.randn(60, 16, generator=torch.Generator().manual_seed(2))
    base = dpc_knn(x, 5)
    for scale in (10.0, 100.0):
        big = dpc_knn(scale * x, 5)
        assert torch.equal(big.centres, base.centres) and torch.equal(big.assign, base.assign)
        assert (big.density > 0).all()
        assert torch.allclose(big.density, base.density, rtol=1e-4)


def test_dpc_knn_finds_separated_clusters() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(20, 2) for c in centres])
    clusters = dpc_knn(x, 3, k=5)
    labels = clusters.assign.view(3, 20)
    assert all(len(set(row.tolist())) == 1 for row in labels)  # each blob is one cluster
    assert len({row[0].item() for row in labels}) == 3


def test_dpc_knn_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import pathomix.models.ita as ita

    x = torch.randn(70, 4, generator=torch.Generator().manual_seed(1))
    full = ita.dpc_knn(x, 7)
    monkeypatch.setattr(ita, "BLOCK", 16)
    blocked = ita.dpc_knn(x, 7)
    assert torch.equal(full.centres, blocked.centres) and torch.equal(full.assign, blocked.assign)


def test_student_attention_maps_clusters_back_to_patches() -> None:
    student = MODELS["dmsf_student"].build(DIMS, get_task("diagnosis"), ModelParams(hidden=8, ita_tokens=4))
    out = student.eval()(_inputs())
    for by_mag in out["attention"].values():
        assert by_mag["20x"].shape == (1, 30)
        assert torch.allclose(by_mag["20x"].sum(-1), torch.ones(1), atol=1e-5)


@pytest.mark.parametrize("monitor_from, val_loss", [(4, 0.5), (1, float("nan"))])
def test_early_stopping_never_restores_the_initial_weights(monitor_from: int, val_loss: float) -> None:
    """``epochs`` ≤ ``warmup_epochs`` (no monitored epoch), or no finite validation loss: the model keeps
    its last trained weights, not the random ones it started from."""
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(model, patience=5, monitor_from=monitor_from)
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1.0)
        stopper.update(epoch, 1.0, val_loss)
    trained = model.weight.detach().clone()
    assert stopper.restore() == 3
    assert torch.equal(model.weight, trained)


def test_early_stopping_restores_the_best_monitored_epoch() -> None:
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(model, patience=5, monitor_from=2)
    kept = None
    for epoch, loss in [(1, 0.1), (2, 0.9), (3, 0.4), (4, 0.6)]:  # epoch 1 is warm-up: its low loss is not kept
        with torch.no_grad():
            model.weight.add_(1.0)
        stopper.update(epoch, 1.0, loss)
        kept = model.weight.detach().clone() if epoch == 3 else kept
    assert stopper.restore() == 3 and torch.equal(model.weight, kept)


def test_a_survival_student_bins_times_with_its_teachers_edges(tmp_path) -> None:
    """The student's training patients include some without genes, so edges refitted on them differ
    from the teacher's: the targets, and the bins the survival KL compares, must use the teacher's."""
    import numpy as np
    import pandas as pd

    from pathomix.tasks import discretise
    from pathomix.train.data import Needs, Sources, load_cohort

    rng = np.random.default_rng(0)
    n = 24
    pids = [f"P{i:02d}" for i in range(n)]
    pd.DataFrame({"patient_id": pids, "survival_months": rng.uniform(1, 100, n).round(1),
                  "event": rng.integers(0, 2, n)}).to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    pd.DataFrame({"patient_id": pids, "fold": 0, "split": ["test" if i % 4 == 0 else "train" for i in range(n)]}
                 ).to_parquet(tmp_path / "folds.parquet")
    src, task = Sources(tmp_path / "clinical.tsv", tmp_path / "folds.parquet"), get_task("survival")
    own = load_cohort(src, task, 0, Needs())
    teacher = {"model": "dmsf_teacher", "fold": 0, "bin_edges": [float("-inf"), 10.0, 20.0, 30.0, float("inf")]}
    assert own.bin_edges != teacher["bin_edges"]
    cohort = load_cohort(src, task, 0, Needs(), bin_edges=teacher_bin_edges(teacher, task))
    assert cohort.bin_edges == teacher["bin_edges"]
    times = np.array([p.target["time"] for p in cohort.patients])
    assert [p.target["bin"] for p in cohort.patients] == discretise(times, np.array(teacher["bin_edges"])).tolist()


def test_a_teacher_without_survival_bin_edges_is_refused() -> None:
    task = get_task("survival")
    for edges in (None, [float("-inf"), 5.0, float("inf")]):
        with pytest.raises(PathomixInputError, match="bin edges"):
            teacher_bin_edges({"model": "dmsf_teacher", "fold": 0, "bin_edges": edges}, task)
    assert teacher_bin_edges({"bin_edges": None}, get_task("diagnosis")) is None


# ---- distillation schedule ----------------------------------------------------------------------
def test_distillation_waits_for_the_warm_up_and_is_zero_when_student_equals_teacher() -> None:
    from pathomix.train.losses import softmax_log_prob

    target = {"logits": torch.tensor([[1.0, 0.0, -1.0]]), "features": torch.ones(1, 4)}
    term = distill_term({"P1": target}, DistillParams(warmup_epochs=3, kl_weight=0.01, feature_weight=0.01),
                        softmax_log_prob)

    class P:
        patient_id = "P1"

    same = {k: v.clone() for k, v in target.items()}
    assert term(P, same, 3) is None  # still warming up
    assert term(P, same, 4).item() == pytest.approx(0.0, abs=1e-7)
    assert term(P, {"logits": target["logits"], "features": torch.zeros(1, 4)}, 4).item() == pytest.approx(0.01)


# ---- variants (ablations as config) --------------------------------------------------------------
VARIANTS = {"dmsf_teacher-noCGC": {"model": "dmsf_teacher", "cgc": False},
            "dmsf_teacher-20x": {"model": "dmsf_teacher", "mags": ["20x"], "aux_losses": {"igc": 0.0}},
            "dmsf_student-scratch": {"model": "dmsf_student", "teacher": None},
            "dmsf_student-noCGC": {"model": "dmsf_student", "teacher": "dmsf_teacher-noCGC"}}


def test_variants_resolve_to_registered_models_with_their_inputs() -> None:
    assert resolve("dmsf_student-scratch", VARIANTS).teacher is None
    assert model_inputs("dmsf_student-scratch", VARIANTS) == {"wsi": True, "genes": False, "mif": False,
                                                               "images": False, "covariates": False, "teacher": None}
    assert model_inputs("dmsf_student-noCGC", VARIANTS)["teacher"] == "dmsf_teacher-noCGC"
    assert model_inputs("dmsf_student", VARIANTS) == {"wsi": True, "genes": True, "mif": False, "images": False,
                                                       "covariates": False, "teacher": "dmsf_teacher"}
    with pytest.raises(KeyError, match="neither a registered model"):
        resolve("dmsf_teacher-typo", VARIANTS)
    with pytest.raises(KeyError, match="takes no `teacher`"):
        resolve("x", {"x": {"model": "abmil", "teacher": "dmsf_teacher"}})
    with pytest.raises(KeyError, match="is not a dmsf_teacher"):
        resolve("x", {"x": {"model": "dmsf_student", "teacher": "abmil"}})


def test_variant_params_override_only_their_keys() -> None:
    train = {"models": ["dmsf_teacher-20x"], "tasks": ["diagnosis"], "variants": VARIANTS, "epochs": 7,
             "cgc": True, "aux_losses": {"igc": 0.1, "igc_mse": 0.0}}
    params = TrainParams.from_mapping(job_params("dmsf_teacher-20x", train))
    assert params.epochs == 7 and params.cgc is True
    assert params.model.mags == ("20x",) and params.model.aux_losses == {"igc": 0.0, "igc_mse": 0.0}
    assert TrainParams.from_mapping(job_params("dmsf_teacher-noCGC", train)).cgc is False
    model = MODELS["dmsf_teacher"].build(DIMS, get_task("diagnosis"), params.model).eval()
    out = model(_inputs())
    assert set(out["attention"]["tumour"]) == {"20x"} and out["aux"] == {}


# ---- gene importance ----------------------------------------------------------------------------
def test_gene_importance_ranks_the_gene_the_model_reads() -> None:
    from pathomix.train.importance import gene_importance

    torch.manual_seed(0)
    task = get_task("diagnosis")
    objective = make_objective(task, [{"y": 0}, {"y": 1}, {"y": 2}], torch.device("cpu"))

    class OneGene(torch.nn.Module):  # reads gene 2 of the tumour subspace only
        def forward(self, inputs):
            g = inputs["genes_tumour"][:, 2:3]
            return {"logits": torch.cat([g, -g, 0 * g], dim=-1)}

    class P:
        def __init__(self, y):
            self.inputs = {"genes_tumour": torch.randn(5), "genes_tme": torch.randn(4)}
            self.target = {"y": y}

    stats = {"genes": [f"G{i}" for i in range(9)], "subspace": ["tumour"] * 5 + ["tme"] * 4}
    table = gene_importance(OneGene(), [P(0), P(1), P(2)], objective, torch.device("cpu"), stats)
    top = table[(table.input == "genes_tumour") & (table["rank"] == 1)]
    assert top.gene.item() == "G2" and top.subspace.item() == "tumour"
    assert (table[table.gene != "G2"].importance == 0).all()


def test_a_variant_may_train_on_some_tasks_only() -> None:
    from pathomix.catalog import model_tasks

    train = {"tasks": ["diagnosis", "survival"],
             "variants": {"t-dx": {"model": "dmsf_teacher", "tasks": ["diagnosis"]}}}
    assert model_tasks("t-dx", train) == ["diagnosis"]
    assert model_tasks("abmil", train) == ["diagnosis", "survival"]
    assert model_tasks("fof", train) == ["diagnosis"]  # FoF classifies tiles: no survival jobs
    assert TrainParams.from_mapping(job_params("t-dx", train)) == TrainParams()


def test_an_entry_named_after_a_registered_model_overrides_its_keys() -> None:
    train = {"tasks": ["diagnosis"], "patience": 10, "variants": {"umeml": {"patience": 20}}}
    assert resolve("umeml", train["variants"]).model == "umeml"
    assert TrainParams.from_mapping(job_params("umeml", train)).patience == 20
    assert TrainParams.from_mapping(job_params("abmil", train)).patience == 10
    with pytest.raises(KeyError, match="can only override its train: keys"):
        resolve("umeml", {"umeml": {"model": "abmil"}})
    with pytest.raises(KeyError, match="can only override its train: keys"):
        resolve("dmsf_student", {"dmsf_student": {"teacher": None}})
