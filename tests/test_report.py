"""The report's pieces: slide heatmaps, gene view, provenance record, and the captions Snakemake renders."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import jinja2
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from docutils.core import publish_parts
from snakemake.report import Category

from pathomix import paths as P
from pathomix import provenance
from pathomix.evaluate import gene_view, heatmaps
from pathomix.evaluate.heatmap_draw import attention_grid
from pathomix.evaluate.layout import FIGURES_BY_KIND
from pathomix.genes.hvg import select_hvg, transform

ROOT = Path(__file__).resolve().parents[1]
TILE = 256  # level-0 px


def _cohort(tmp_path: Path, n_patients: int = 4) -> tuple[Path, list[str]]:
    """A tiny H&E slide (openslide generic-tiff, 0.5 µm/px) shared by n slide ids, their coords stores
    (3 × 4 tiles of 256 px at 20x, 1 × 2 at 10x) and the slide sheet."""
    rng = np.random.default_rng(0)
    image = rng.integers(150, 230, (768, 1024, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "slide.tiff", image, tile=(256, 256), compression="jpeg", photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    ids = [f"S{i}" for i in range(n_patients)]
    for mag, size in (("20x", TILE), ("10x", 2 * TILE)):
        xs, ys = np.meshgrid(np.arange(0, 1024 - size + 1, size), np.arange(0, 768 - size + 1, size))
        coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
        for s in ids:
            path = P.tiles(tmp_path / "results", mag, s)
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as h:
                d = h.create_dataset("coords", data=coords)
                d.attrs.update(patch_size_level0=size, level0_width=1024, level0_height=768)
    sheet = tmp_path / "slides.tsv"
    pd.DataFrame({"slide_id": ids, "patient_id": [f"P{i}" for i in range(n_patients)], "path": "slide.tiff",
                  "modality": "he", "mpp": ""}).to_csv(sheet, sep="\t", index=False)
    return sheet, ids


def _model_outputs(tmp_path: Path, model: str, heads: tuple[str, ...], n_patients: int, slide: str = "S",
                   tiles: tuple[tuple[str, int], ...] = (("20x", 12), ("10x", 2))) -> list[str]:
    """survival predictions (risk = patient number) and attention for every head, one fold, on the
    slides ``{slide}{i}`` with ``tiles`` (mag, number of tiles)."""
    out = []
    for task in ("diagnosis", "survival"):
        d = P.model_dir(tmp_path / "results", model, task, 0)
        d.mkdir(parents=True)
        pids = [f"P{i}" for i in range(n_patients)]
        pred = pd.DataFrame({"patient_id": pids, "fold": 0, "split": "test", "model": model, "task": task})
        if task == "survival":
            pred = pred.assign(time=10.0, event=1, risk=np.arange(n_patients, dtype=float), bin=0)
        pred.to_parquet(d / "predictions.parquet")
        rows = []
        for head in heads:
            for i, pid in enumerate(pids):
                for mag, n in tiles:
                    w = np.arange(n, dtype=float) + 1
                    rows.append(pd.DataFrame({"patient_id": pid, "slide_id": f"{slide}{i}", "mag": mag,
                                              "tile_index": np.arange(n), "weight": w / w.sum(), "head": head}))
        pd.concat(rows).to_parquet(d / "attention.parquet")
        out.append(str(d / "predictions.parquet"))
    return out


def test_attention_grid_puts_each_tile_where_the_coords_say():
    thumb = np.zeros((96, 128, 3), np.uint8)          # 1024 × 768 level 0 at 1/8
    coords = np.array([[0, 0], [256, 0], [512, 256]])
    grid = attention_grid(thumb, np.array([0, 2]), np.array([0.1, 0.9]), coords, 256, (1024, 768))
    assert grid[40, 70] == 1.0                        # tile 2 (x 512–768, y 256–512) is the most attended
    assert grid[10, 10] == 0.5                        # tile 0: the lower of two percentiles
    assert np.isnan(grid[10, 40])                     # tile 1 has no attention row
    assert np.isnan(grid[90, 120])                    # no tile there


def test_heatmaps_one_grid_per_model_and_head(tmp_path):
    sheet, ids = _cohort(tmp_path)
    preds = _model_outputs(tmp_path, "abmil", ("abmil",), 4) + \
        _model_outputs(tmp_path, "dmsf_teacher", ("tumour", "tme"), 4)
    out, export = tmp_path / "eval" / "heatmaps", tmp_path / "eval" / "heatmap_slides"
    tiles = [str(p) for p in (tmp_path / "results" / "tiles").rglob("*.h5")]
    assert heatmaps.main(["--predictions", *preds, "--slides", str(sheet), "--tiles", *tiles,
                          "--params", json.dumps({"top_k": 1, "slides": []}), "--out", str(out),
                          "--export", str(export)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["abmil__abmil.png", "dmsf_teacher__tme.png",
                                                     "dmsf_teacher__tumour.png"]
    for p in out.iterdir():
        assert p.stat().st_size > 10_000
    # highest and lowest risk: S3 and S0; per slide: 3 heads × 2 tasks × 2 magnifications
    exported = sorted(p.name for p in export.iterdir())
    assert len(exported) == 2 * 3 * 2 * 2 and {n.split("__")[0] for n in exported} == {"S0", "S3"}


def test_heatmaps_draw_mif_models_on_mif_images(tmp_path):
    """An mIF model's attention is drawn on the patients' mIF images (a marker composite), H&E models'
    on their H&E slides, each modality with its own choice of slides."""
    from pathomix.demo.mif import CHANNELS, write_ome_tiff

    sheet, _ = _cohort(tmp_path)
    rng = np.random.default_rng(1)
    write_ome_tiff(tmp_path / "mif.ome.tiff", rng.integers(0, 4000, (len(CHANNELS), 512, 512)).astype(np.uint16))
    mif_ids = ["M0", "M1", "M2"]  # patients P0–P2 have an mIF image
    coords = np.array([[0, 0], [256, 0], [0, 256], [256, 256]], np.int64)
    for s in mif_ids:
        path = P.tiles(tmp_path / "results", "20x", s)
        with h5py.File(path, "w") as h:
            h.create_dataset("coords", data=coords).attrs.update(patch_size_level0=TILE, level0_width=512,
                                                                 level0_height=512)
    rows = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False)
    mif_rows = pd.DataFrame({"slide_id": mif_ids, "patient_id": ["P0", "P1", "P2"], "path": "mif.ome.tiff",
                             "modality": "mif", "mpp": ""})
    pd.concat([rows, mif_rows]).to_csv(sheet, sep="\t", index=False)
    preds = _model_outputs(tmp_path, "abmil", ("abmil",), 4) + \
        _model_outputs(tmp_path, "fluoroformer", ("fluoroformer",), 3, slide="M", tiles=(("20x", 4),))
    out, export = tmp_path / "eval" / "heatmaps", tmp_path / "eval" / "heatmap_slides"
    tiles = [str(p) for p in (tmp_path / "results" / "tiles").rglob("*.h5")]
    assert heatmaps.main(["--predictions", *preds, "--slides", str(sheet), "--tiles", *tiles,
                          "--params", json.dumps({"top_k": 1, "slides": []}), "--out", str(out),
                          "--export", str(export)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["abmil__abmil.png", "fluoroformer__fluoroformer.png"]
    exported = sorted(p.name for p in export.iterdir())
    mif = [n for n in exported if "__fluoroformer__" in n]
    # highest and lowest risk among the mIF patients: M2 and M0, 2 tasks × 20x
    assert {n.split("__")[0] for n in mif} == {"M0", "M2"} and len(mif) == 4
    assert {n.split("__")[0] for n in exported if "__abmil__" in n} == {"S0", "S3"}
    # the workflow passes the tiles folder ({mag}/{slide}.h5 below it), not one path per store: same figures
    by_folder = tmp_path / "eval" / "by_folder"
    folder = str(tmp_path / "results" / "tiles")
    assert heatmaps.main(["--predictions", *preds, "--slides", str(sheet), "--tiles", folder, "--params",
                          json.dumps({"top_k": 1, "slides": []}),
                          "--out", str(by_folder / "grids"), "--export", str(by_folder / "export")]) == 0
    assert sorted(p.name for p in (by_folder / "export").iterdir()) == exported


def test_mif_composite_colours_markers_not_autofluorescence():
    from pathomix.evaluate.heatmap_draw import mif_composite

    chw = np.zeros((3, 8, 8), np.float32)
    chw[0, :4] = 100.0  # DAPI: top half
    chw[1, :, :4] = 100.0  # a marker: left half
    chw[2] = np.linspace(0, 1000, 64).reshape(8, 8)  # autofluorescence: left out
    rgb = mif_composite(chw, ["DAPI", "CD8", "AF"], [False, False, True])
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert rgb[0, 7, 2] > 200 and rgb[0, 7, 1] < 150  # DAPI only: blue
    assert rgb[7, 0, 1] > 200 and rgb[7, 0, 2] < 50  # the marker only: its own colour (green)
    assert rgb[7, 7].max() == 0  # autofluorescence is not drawn


def test_heatmap_slide_choice_by_risk_or_list():
    preds = pd.DataFrame({"patient_id": [f"P{i}" for i in range(6)] * 2, "fold": [0, 0, 0, 1, 1, 1] * 2,
                          "model": ["a"] * 6 + ["b"] * 6, "task": "survival",
                          "risk": [1, 2, 3, 10, 20, 30] + [3, 2, 1, 30, 20, 10]})
    att = pd.DataFrame({"patient_id": [f"P{i}" for i in range(6)], "slide_id": [f"S{i}" for i in range(6)],
                        "model": "a", "tile_index": 0})
    he = {f"S{i}" for i in range(6)}
    preds.loc[preds.model == "b", "risk"] = preds.loc[preds.model == "a", "risk"].to_numpy()
    chosen = heatmaps.choose_slides(preds, att, he, heatmaps.HeatmapParams(top_k=1))
    assert list(chosen.group) == ["high risk", "low risk"]
    assert chosen.risk_pct.iloc[0] == 1.0 and chosen.risk_pct.iloc[1] < 0.5  # ranks are within-fold
    listed = heatmaps.choose_slides(preds, att, he, heatmaps.HeatmapParams(slides=["S4", "nope"]))
    assert list(listed.slide_id) == ["S4"] and list(listed.group) == ["listed"]


def test_gene_view_summarises_the_selection(tmp_path):
    rng = np.random.default_rng(0)
    genes = pd.DataFrame(rng.poisson(rng.uniform(5, 500, 40), (12, 40)), columns=[f"G{i}" for i in range(40)])
    genes.insert(0, "patient_id", [f"P{i}" for i in range(12)])
    genes.to_csv(tmp_path / "genes.csv", index=False)
    hv = select_hvg(transform(genes.set_index("patient_id").astype(float), "auto", "genes"), 0.3)
    hv.reset_index().to_parquet(tmp_path / "hvg.parquet")
    pd.DataFrame({"gene": hv.columns, "subspace": ["tumour", "tme", "other"] * 4}).to_parquet(tmp_path / "sub.parquet")
    var = gene_view.gene_variances(str(tmp_path / "genes.csv"), pd.read_parquet(tmp_path / "hvg.parquet"),
                                   gene_view.GeneParams())
    assert len(var) == 40 and var.kept.sum() == 12
    assert var[var.kept].variance.min() >= var[~var.kept].variance.max()
    out = tmp_path / "genes.png"
    assert gene_view.main(["--genes", str(tmp_path / "genes.csv"), "--hvg", str(tmp_path / "hvg.parquet"),
                           "--subspaces", str(tmp_path / "sub.parquet"), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    # with the teacher's gene importance (two folds), genes are ranked by the model's mean importance
    ckpts = []
    for k, top in enumerate((1.0, 3.0)):
        fold = tmp_path / "models" / "dmsf_teacher" / "diagnosis" / f"fold{k}"
        fold.mkdir(parents=True)
        imp = pd.DataFrame({"input": "genes_tumour", "gene": hv.columns[::3], "subspace": "tumour",
                            "importance": [top] + [0.1] * 3, "rank": [1, 2, 3, 4]})
        imp.to_parquet(fold / "gene_importance.parquet")
        ckpts.append(str(fold / "checkpoint.pt"))
    mean, name = gene_view.model_importance(ckpts)
    assert name == "dmsf_teacher" and mean[hv.columns[0]] == pytest.approx(2.0)
    assert gene_view.main(["--hvg", str(tmp_path / "hvg.parquet"), "--subspaces", str(tmp_path / "sub.parquet"),
                           "--importance", *ckpts, "--out", str(tmp_path / "genes2.png")]) == 0


@pytest.mark.parametrize("weights", ["random-init", "ab" * 32])
def test_provenance_record_and_page(tmp_path, weights):
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"slide_id": ["S0", "S1"], "encoder": "resnet50_trunc",
                  "encoder_weights_sha256": weights}).to_parquet(manifest)
    out_json, out_html = tmp_path / "provenance.json", tmp_path / "provenance.html"
    assert provenance.main(["--config-json", json.dumps({"features": {"encoder": "resnet50_trunc"}}),
                            "--workflow-dir", str(tmp_path), "--manifest", str(manifest),
                            "--out-json", str(out_json), "--out-html", str(out_html)]) == 0
    rec = json.loads(out_json.read_text())
    assert rec["git"] == {"commit": None, "dirty": None}  # tmp_path is no git checkout
    assert {"pathomix", "torch", "snakemake", "numpy", "pandas", "scikit-learn"} <= set(rec["packages"])
    assert rec["encoders"] == [{"encoder": "resnet50_trunc", "weights_sha256": weights, "n_slides": 2,
                                "random_init": weights == "random-init"}]
    page = out_html.read_text()
    assert "Package versions" in page and "Config used" in page and "resnet50_trunc" in page
    assert ('<span class="warn">RANDOM-INIT' in page) == (weights == "random-init")


def test_provenance_lists_skipped_tiles(tmp_path):
    """Tiles left out under features.on_bad_tile: skip reach the report's provenance page."""
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"slide_id": ["S0", "S1"], "mag": "20x", "n_tiles": [10, 12], "n_skipped": [0, 3],
                  "encoder": "resnet50_trunc", "encoder_weights_sha256": "random-init"}).to_parquet(manifest)
    rec = provenance.record({}, tmp_path, [manifest])
    assert [{k: v for k, v in r.items() if k != "encoder"} for r in rec["skipped_tiles"]] == \
        [{"slide_id": "S1", "mag": "20x", "n_skipped": 3, "n_tiles": 12}]
    page = provenance.to_html(rec)
    assert "Tiles left out as unreadable" in page and "<td>S1</td>" in page


def test_provenance_reads_the_git_commit(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)
    (tmp_path / "f.txt").write_text("a")
    git("init", "-q")
    git("add", "f.txt")
    git("commit", "-q", "-m", "x")
    state = provenance.git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "f.txt").write_text("b")
    assert provenance.git_state(tmp_path)["dirty"] is True


def test_provenance_and_layout_import_without_torch():
    code = "import sys, pathomix.provenance, pathomix.evaluate.layout; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _categories() -> list[str]:
    rules = (ROOT / "workflow" / "rules" / "common.smk").read_text()  # CATEGORY
    return re.findall(r'"(\d\. [^"]+)"', rules)


def _render(path: Path, cfg: dict, wildcards=None, shown: list[str] | None = None) -> str:
    """Render a report caption the way Snakemake does: Jinja2 (``categories`` keyed by the report's
    categories), then docutils to HTML with a link target per category shown."""
    shown = _categories() if shown is None else shown
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    snakemake = SimpleNamespace(config=cfg, wildcards=wildcards or SimpleNamespace())
    categories = {Category(c): {} for c in shown}
    rst = env.from_string(path.read_text()).render(snakemake=snakemake, categories=categories, files=[])
    targets = "".join(f"\n.. _{c}: #\n" for c in shown)  # Snakemake adds these
    return publish_parts(rst + targets, writer="html", settings_overrides={"report_level": 2})["html_body"]


def test_report_captions_render_and_flag_random_init():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    page = _render(ROOT / "workflow" / "report" / "workflow.rst", cfg)
    assert "system-message" not in page  # every section link resolves
    for section in ("1. Model comparison", "2. Discrimination", "3. Calibration", "4. Training curves",
                    "5. Slide heatmaps", "6. Genes", "7. Provenance"):
        assert section in page, section
    assert 'color:#c00;font-weight:700">RANDOM-INIT' in page
    cfg["features"]["weights"] = "/weights/resnet50.pth"
    assert "RANDOM-INIT" not in _render(ROOT / "workflow" / "report" / "workflow.rst", cfg)
    rules = "".join(f.read_text() for f in (ROOT / "workflow" / "rules").glob("*.smk"))
    captions = set(re.findall(r'caption="\.\./report/([\w.]+\.rst)"', rules))
    captions |= {f"{k}.rst" for kinds in FIGURES_BY_KIND.values() for k in kinds}  # f"../report/{kind}.rst"
    for name in captions:
        html = _render(ROOT / "workflow" / "report" / name, cfg, SimpleNamespace(model="abmil", head="abmil"))
        assert "system-message" not in html and len(html) > 100, name


def test_genes_only_report_links_only_its_sections():
    """slides: null, snn on survival: no calibration, heatmaps or encoder in the report (broken links before)."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg.update(slides=None)
    cfg["train"].update(models=["snn"], tasks=["survival"])
    shown = ["1. Model comparison", "2. Discrimination", "4. Training curves", "6. Genes", "7. Provenance"]
    page = _render(ROOT / "workflow" / "report" / "workflow.rst", cfg, shown=shown)
    assert "system-message" not in page  # no link to a section the report lacks
    assert "genes-only cohort" in page and "RANDOM-INIT" not in page and "Calibration" not in page
