"""Evaluation: metrics from sklearn/lifelines/scikit-survival on known predictions, CIs, the stage's outputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import label_binarize

from pathomix.evaluate.cli import main
from pathomix.evaluate.layout import FIGURES_BY_KIND, figure_names
from pathomix.evaluate.metrics import CLASSIFICATION, SURVIVAL, bootstrap_ci, evaluate_predictions

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("astrocytoma", "oligodendroglioma", "glioblastoma")


def _classification(n=60, seed=0, model="m", signal=2.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + signal * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "fold": (np.arange(n) // 3) % 3,
                       "split": "test", "model": model, "task": "diagnosis", "y_true": y, "y_pred": p.argmax(1)})
    for k, c in enumerate(CLASSES):
        df[f"prob_{c}"] = p[:, k]
    return df


def _survival(n=60, seed=0, event_rate=0.7, model="m"):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(np.exp(-risk)) * 20
    return pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "fold": np.arange(n) % 3, "split": "test",
                         "model": model, "task": "survival", "time": time,
                         "event": (rng.random(n) < event_rate).astype(int), "risk": risk, "bin": 0})


def _binary_toy(n=40, seed=3):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(int)
    p1 = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, n), 0.01, 0.99)
    return pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(n)], "fold": 0, "split": "test", "model": "m",
                         "task": "idh", "y_true": y, "y_pred": (p1 > 0.5).astype(int), "prob_wt": 1 - p1,
                         "prob_mut": p1})


def test_auc_and_ap_match_sklearn():
    df = _classification()
    probs = df[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert np.isclose(CLASSIFICATION["auc"](df), roc_auc_score(df.y_true, probs, multi_class="ovr"))
    onehot = label_binarize(df.y_true, classes=[0, 1, 2])
    assert np.isclose(CLASSIFICATION["ap"](df), average_precision_score(onehot, probs, average="macro"))
    toy = _binary_toy()
    assert np.isclose(CLASSIFICATION["ap"](toy), average_precision_score(toy.y_true, toy.prob_mut))


def _reference_ci(y: np.ndarray, score: np.ndarray, n_boot: int, seed: int, rows_of_patient: list[np.ndarray]):
    """The bootstrap written out independently: numpy resampling of patients + sklearn's roc_auc_score."""
    rng = np.random.default_rng(seed)
    n_pat = len(rows_of_patient)
    aucs = []
    for _ in range(n_boot):
        rows = np.concatenate([rows_of_patient[i] for i in rng.integers(0, n_pat, n_pat)])
        if len(np.unique(y[rows])) == 2:
            aucs.append(roc_auc_score(y[rows], score[rows]))
    return np.percentile(aucs, [2.5, 97.5])


def test_bootstrap_ci_of_auc_matches_an_independent_reference():
    df = _binary_toy()
    lo, hi = bootstrap_ci(df, CLASSIFICATION["auc"], n=120, seed=7)
    ref = _reference_ci(df.y_true.to_numpy(), df.prob_mut.to_numpy(), 120, 7, [np.array([i]) for i in range(len(df))])
    assert np.allclose([lo, hi], ref)
    assert lo < CLASSIFICATION["auc"](df) < hi


def test_bootstrap_resamples_patients_not_rows():
    """Two rows per patient (e.g. two slides): a resample keeps or drops both."""
    one = _binary_toy(n=30, seed=5)
    df = pd.concat([one, one.assign(prob_mut=one.prob_mut * 0.9, prob_wt=1 - one.prob_mut * 0.9)])
    df = df.sort_values("patient_id", kind="stable").reset_index(drop=True)
    lo, hi = bootstrap_ci(df, CLASSIFICATION["auc"], n=50, seed=1)
    groups = [np.flatnonzero(df.patient_id.to_numpy() == p) for p in df.patient_id.unique()]
    ref = _reference_ci(df.y_true.to_numpy(), df.prob_mut.to_numpy(), 50, 1, groups)
    assert np.allclose([lo, hi], ref)


def test_survival_metrics_and_skipped_td_auc(caplog):
    m = evaluate_predictions(_survival(), n_bootstrap=30)
    pooled = m[m.fold == "all"].set_index("metric")
    assert pooled.loc["c_index", "value"] > 0.6 and pooled.loc["td_auc", "value"] > 0.6  # planted: risk → time
    assert pooled.ci_low.notna().all()
    with caplog.at_level(logging.INFO, logger="pathomix.evaluate.metrics"):
        few = evaluate_predictions(_survival(n=30, event_rate=0.1), n_bootstrap=10)
    assert few.query("metric == 'td_auc'").value.isna().all()
    assert few.query("metric == 'c_index' and fold == 'all'").value.notna().all()
    assert "td_auc skipped" in caplog.text and "fewer than" in caplog.text


def test_config_schema_lists_exactly_the_registered_metrics():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    enum = schema["properties"]["evaluate"]["properties"]["headline"]["items"]["enum"]
    assert set(enum) == set(CLASSIFICATION) | set(SURVIVAL)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert set(config["evaluate"]["headline"]) <= set(enum)


def _run_stage(tmp_path, frames, params='{"bootstrap": 30, "seed": 0}', extra=(), markers=None):
    paths = []
    for i, df in enumerate(frames):
        d = tmp_path / "models" / f"job{i}"
        d.mkdir(parents=True)
        df.to_parquet(d / "predictions.parquet")
        if markers is not None and i in markers:  # an mIF model: marker_attention.parquet next to it
            markers[i].to_parquet(d / "marker_attention.parquet")
        epochs = np.arange(1, 6)
        pd.DataFrame({"epoch": epochs, "train_loss": 1 / epochs, "val_loss": 1.2 / epochs, "val_metric": epochs / 6,
                      "lr": 1e-3, "seconds": 0.1}).to_parquet(d / "history.parquet")
        paths.append(str(d / "predictions.parquet"))
    ev = tmp_path / "eval"
    args = ["--predictions", *paths, "--out", str(ev / "metrics.parquet"), "--summary", str(ev / "summary.csv"),
            "--figures", str(ev / "figures"), "--comparison-csv", str(ev / "comparison.csv"),
            "--comparison-html", str(ev / "comparison.html"), "--params", params, *extra]
    assert main(args) == 0
    return ev


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    frames = [_classification(model="good"), _classification(model="weak", signal=0.3, seed=1),
              _survival(model="good")]
    return _run_stage(tmp_path_factory.mktemp("eval"), frames, params='{"bootstrap": 20, "seed": 0}')


def test_stage_writes_metrics_with_ap_and_cis(stage):
    m = pd.read_parquet(stage / "metrics.parquet")
    assert list(m.columns) == ["model", "encoder", "task", "fold", "metric", "value", "ci_low", "ci_high"]
    assert (m.encoder == "").all()  # these predictions name no encoder (models that read no features)
    assert set(m[m.task == "diagnosis"].metric) == set(CLASSIFICATION)
    assert set(m[m.task == "survival"].metric) == set(SURVIVAL)
    assert set(m.fold) == {"0", "1", "2", "all"}
    pooled = m[m.fold == "all"]
    assert pooled.ci_low.notna().all() and (pooled.ci_low <= pooled.value + 1e-12).all()
    assert m[m.fold != "all"].ci_low.isna().all()


def test_stage_writes_exactly_the_declared_figures(stage):
    expected = {"summary.png"}
    for model in ("good", "weak"):
        expected |= set(figure_names(model, "diagnosis", "classification").values())
    expected |= set(figure_names("good", "survival", "survival").values())
    written = {p.name for p in (stage / "figures").iterdir()}
    assert written == expected
    assert {k for ks in FIGURES_BY_KIND.values() for k in ks} == {"roc", "calibration", "km", "training"}
    for name in expected:
        assert (stage / "figures" / name).stat().st_size > 5000, name


def test_comparison_table_marks_the_best_model(stage):
    csv = pd.read_csv(stage / "comparison.csv").set_index("model")
    auc = csv["diagnosis: AUC (macro OvR)"]
    assert auc["good"].endswith("*") and not auc["weak"].endswith("*")
    assert " ± " in auc["good"] and "[" in auc["good"]
    html = (stage / "comparison.html").read_text()
    assert html.count("<table") == 1 and "class=best" in html and "<b>" in html
    assert "95 % CI from 20 patient-level bootstrap resamples" in html
    assert "diagnosis (n = 60)" in html


def test_external_cohort_is_scored_on_its_own(tmp_path):
    internal = _classification(model="good")
    external = _classification(model="good", seed=9).assign(
        patient_id=lambda d: "X" + d.patient_id, cohort="ext", split="test")
    frames = [pd.concat([internal.assign(cohort="main"), external], ignore_index=True)]
    ev = _run_stage(tmp_path, frames, params='{"bootstrap": 5, "external_cohorts": ["ext"]}',
                    extra=["--cohorts-csv", str(tmp_path / "c.csv"), "--cohorts-html", str(tmp_path / "c.html")])
    m = pd.read_parquet(ev / "metrics.parquet")
    acc = m.query("metric == 'accuracy' and fold == 'all'").value.iloc[0]
    assert np.isclose(acc, (internal.y_true == internal.y_pred).mean())  # external rows left out
    cohorts = pd.read_csv(tmp_path / "c.csv")
    assert any(c.startswith("ext: diagnosis") for c in cohorts.columns)
    assert any(c.startswith("main: diagnosis") for c in cohorts.columns)
    assert "external: ext" in (tmp_path / "c.html").read_text()


def _markers(pred, panel=("DAPI", "Ki67", "CD68", "CD8"), seed=0):
    """One marker distribution per test slide (two slides for the first patient), Ki67 favoured."""
    rng = np.random.default_rng(seed)
    rows = []
    for pid in pred.patient_id[pred.split == "test"]:
        for slide in ([f"{pid}-MIF", f"{pid}-MIF2"] if pid == "P0" else [f"{pid}-MIF"]):
            w = rng.dirichlet([2.0, 6.0, 3.0, 2.0])
            rows += [{"patient_id": pid, "slide_id": slide, "mag": "20x", "marker": m, "weight": float(x)}
                     for m, x in zip(panel, w, strict=True)]
    return pd.DataFrame(rows)


def test_marker_figure_only_for_mif_models(tmp_path):
    fluoro, plain = _survival(model="fluoro"), _survival(model="plain", seed=1)
    ev = _run_stage(tmp_path, [fluoro, plain], params='{"bootstrap": 5}', markers={0: _markers(fluoro)})
    written = {p.name for p in (ev / "figures").iterdir()}
    expected = {"summary.png", *figure_names("fluoro", "survival", "survival", mif=True).values(),
                *figure_names("plain", "survival", "survival").values()}
    assert written == expected and "fluoro_survival_markers.png" in written
    assert (ev / "figures" / "fluoro_survival_markers.png").stat().st_size > 5000


def test_marker_figure_without_mif_test_patients(tmp_path):
    empty = pd.DataFrame(columns=["patient_id", "slide_id", "mag", "marker", "weight"])
    ev = _run_stage(tmp_path, [_survival(model="fluoro")], params='{"bootstrap": 5}', markers={0: empty})
    assert (ev / "figures" / "fluoro_survival_markers.png").exists()


def test_external_patients_count_once_in_the_pooled_value():
    """Each of 3 fold models predicts the same 40 external patients: per-fold rows score each model, the pooled
    value scores the ensemble (mean probability) of the 40 patients once, not 120 rows."""
    from pathomix.evaluate.cohorts import cohort_summary, fold_ensemble

    ext = _classification(model="good", seed=9, n=40).assign(cohort="ext", split="external")
    probs = [c for c in ext.columns if c.startswith("prob_")]
    rng = np.random.default_rng(3)
    folds = []
    for k in range(3):  # three fold models: noisy copies of the same predictions
        p = ext[probs].to_numpy() * rng.uniform(0.5, 1.5, (len(ext), len(probs)))
        folds.append(ext.assign(fold=k, **{c: p[:, i] / p.sum(1) for i, c in enumerate(probs)}))
    preds = pd.concat(folds, ignore_index=True)
    ens = fold_ensemble(preds.assign(split="test"))
    assert len(ens) == ext.patient_id.nunique() and ens.patient_id.is_unique
    mean = np.mean([f.set_index("patient_id").loc[ens.patient_id, probs].to_numpy() for f in folds], axis=0)
    assert np.allclose(ens[probs].to_numpy(), mean)
    assert (ens.y_pred == ens[probs].to_numpy().argmax(1)).all()
    summary = cohort_summary(preds, n_boot=5, seed=0).set_index("metric")
    acc = summary.loc["accuracy", "value"]
    assert np.isclose(acc, (ens.y_true == ens.y_pred).mean())


def test_paired_difference_separates_a_real_gap_from_noise():
    from pathomix.evaluate.paired import paired_difference

    good, weak = _classification(model="good", n=150), _classification(model="weak", signal=0.3, seed=1, n=150)
    same = _classification(model="same", n=150).assign(
        **{f"prob_{c}": lambda d, c=c: d[f"prob_{c}"] * 0.999 for c in CLASSES})
    gap = paired_difference(good, weak, CLASSIFICATION["auc"], n=200, seed=0)
    assert gap["n_patients"] == 150 and gap["ci_low"] > 0 and np.isclose(gap["diff"], gap["a"] - gap["b"])
    tie = paired_difference(good, same, CLASSIFICATION["auc"], n=200, seed=0)
    assert tie["ci_low"] <= 0 <= tie["ci_high"]


def _small_survival(times, events, folds, model="m"):
    n = len(times)
    return pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "fold": folds, "split": "test", "model": model,
                         "task": "survival", "time": np.asarray(times, float), "event": events,
                         "risk": np.linspace(1.0, 0.0, n), "bin": 0})


def test_c_index_without_comparable_pair_is_nan_with_the_reason(caplog):
    """Fold 0 has an event but it is at the fold's last time (lifelines: "No admissable pairs"); fold 1 is
    all censored; fold 2 is scorable. The job must not fail: the undefined folds are NaN, logged why."""
    df = _small_survival([1, 2, 3, 4, 5, 6], [0, 1, 0, 0, 1, 0], [0, 0, 1, 1, 2, 2])
    with caplog.at_level(logging.INFO, logger="pathomix.evaluate.metrics"):
        m = evaluate_predictions(df, n_bootstrap=20)
    c = m[m.metric == "c_index"].set_index("fold").value
    assert np.isnan(c["0"]) and np.isnan(c["1"]) and np.isfinite(c["2"]) and np.isfinite(c["all"])
    assert "fold0: c_index skipped" in caplog.text and "no comparable pair" in caplog.text
    assert "fold1: c_index skipped" in caplog.text and "all 2 patients censored" in caplog.text


def test_bootstrap_survives_resamples_without_comparable_pair():
    """Two patients, the event first: the pooled C is defined, but a resample drawing the event twice has
    no comparable pair (and one drawing the censored patient twice has no event): both are dropped."""
    df = _small_survival([1, 2], [1, 0], [0, 1])
    assert SURVIVAL["c_index"](df) == 1.0
    lo, hi = bootstrap_ci(df, SURVIVAL["c_index"], n=40, seed=0)
    assert (lo, hi) == (1.0, 1.0)  # every defined resample is the pair itself


def test_one_class_fold_gives_nan_auc_with_the_reason(caplog):
    df = _binary_toy(n=8).assign(fold=[0, 0, 0, 0, 1, 1, 1, 1], y_true=[0, 0, 0, 0, 0, 1, 0, 1])
    df["y_pred"] = df.y_true
    with caplog.at_level(logging.INFO, logger="pathomix.evaluate.metrics"):
        m = evaluate_predictions(df, n_bootstrap=20).set_index(["fold", "metric"]).value
    assert np.isnan(m["0", "auc"]) and np.isnan(m["0", "ap"]) and np.isnan(m["0", "kappa"])
    assert np.isfinite(m["1", "auc"]) and np.isfinite(m["all", "auc"])
    assert "fold0: auc skipped" in caplog.text and "one class only" in caplog.text


def test_stage_on_a_tiny_cohort_shows_undefined_metrics_as_na(tmp_path):
    """A cohort so small that folds have one class / no event / no comparable pair: the stage completes
    (figures included) and the report tables say n/a."""
    surv = _small_survival([1, 2, 3, 4, 5, 6], [0, 1, 0, 0, 1, 0], [0, 0, 1, 1, 2, 2], model="tiny")
    clf = _binary_toy(n=6).assign(model="tiny", fold=[0, 0, 1, 1, 2, 2], y_true=[0, 0, 1, 1, 0, 1])
    ev = _run_stage(tmp_path, [surv, clf], params='{"bootstrap": 10}')
    summary = pd.read_csv(ev / "summary.csv", keep_default_na=False)
    assert "n/a" in set(summary["mean"]) | set(summary["value"])
    html = (ev / "comparison.html").read_text()
    assert "n/a" in html and "nan" not in html


def test_auc_of_the_classes_present_survives_a_row_without_mass_on_them():
    """Two of three classes present; one patient's probability of both underflowed to 0 (a confident
    prediction of the absent class): the renormalised AUC is defined, not 0/0."""
    df = _classification(n=12).query("y_true != 2").reset_index(drop=True)
    df.loc[0, [f"prob_{c}" for c in CLASSES]] = [0.0, 0.0, 1.0]
    assert np.isfinite(CLASSIFICATION["auc"](df))


def test_training_figure_of_a_closed_form_fit(tmp_path):
    """cox_clinical's history: one epoch, no validation loss: the figure is drawn, not a KeyError."""
    from pathomix.evaluate.figures import training_figure

    test = _survival(model="cox_clinical")
    hist = pd.DataFrame({"fold": [0, 1], "epoch": 1, "train_loss": [2.1, 2.3], "val_loss": np.nan,
                         "val_metric": [0.61, 0.58], "lr": np.nan, "seconds": np.nan})
    training_figure(test, hist, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000


def _resampled_rows(df: pd.DataFrame, n: int, seed: int) -> list[np.ndarray]:
    """The rows of each resample as bootstrap_ci's contract draws them (patients, in draw order)."""
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(df.patient_id)
    groups = [np.flatnonzero(codes == i) for i in range(len(uniques))]
    return [np.concatenate([groups[i] for i in rng.integers(0, len(uniques), len(uniques))]) for _ in range(n)]


def _small_cohorts():
    """Cases where resamples differ in what they hold: ties, few patients (classes missing from some
    resamples), two rows per patient, a 3-class grading task (quadratic kappa), survival with tied times."""
    clf = _classification(n=12, seed=4, signal=0.5)
    tied = clf.assign(**{f"prob_{c}": clf[f"prob_{c}"].round(1) for c in CLASSES})
    two_rows = pd.concat([_binary_toy(n=10, seed=2), _binary_toy(n=10, seed=9)]).reset_index(drop=True)
    grading = _classification(n=9, seed=6, signal=0.3).assign(task="grading")
    surv = _survival(n=14, seed=3).assign(time=lambda d: d.time.round(0), risk=lambda d: d.risk.round(1))
    return {"3-class": clf, "ties": tied, "few": _classification(n=6, seed=1, signal=0.5), "two rows": two_rows,
            "binary": _binary_toy(n=8, seed=1),
            "grading": grading, "survival": surv}


@pytest.mark.parametrize("case", ["3-class", "ties", "few", "two rows", "binary", "grading", "survival"])
def test_vectorised_bootstrap_equals_the_libraries_on_every_resample(case):
    """Each all-resamples metric gives, per resample, the library's value on that resample's rows
    (NaN exactly where the library's is undefined), and bootstrap_ci's interval is unchanged by it."""
    import warnings

    from pathomix.evaluate import metrics as M
    from pathomix.evaluate import resample as R

    df = _small_cohorts()[case]
    codes, uniques = pd.factorize(df.patient_id)
    W = R.resample_weights(codes, len(uniques), 40, np.random.default_rng(11))
    rows = _resampled_rows(df, 40, 11)
    checked = 0
    for name, metric in M.metrics_for(df).items():
        if (fast := R.vectorised(name, len(df))) is None:
            continue
        got = fast(df, W)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            want = np.array([metric(df.iloc[r]) for r in rows])
        want[~np.isfinite(want)] = np.nan
        got[~np.isfinite(got)] = np.nan
        assert np.allclose(got, want, atol=1e-12, equal_nan=True), (name, got, want)
        assert np.isfinite(want).sum() > 5, name  # the case exercises the metric, not only its NaNs
        lo_hi = [bootstrap_ci(df, metric, 60, 3, name), bootstrap_ci(df, metric, 60, 3)]
        assert np.allclose(*lo_hi, equal_nan=True), name
        checked += 1
    assert checked == (1 if case == "survival" else 6)
