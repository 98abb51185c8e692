"""The embedded demo cohort (DESIGN.md §7): real formats, valid sheets, planted signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
import tifffile
from scipy import stats

from pathomix.demo import cohort, mif
from pathomix.demo.cli import main
from pathomix.demo.shapes import noise_bank, rng_for
from pathomix.io.sheets import read_clinical, read_genes, read_slides

ARGS = ["--n-patients", "6", "--n-mif", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["--out", str(out), *ARGS, "--jobs", "2"]) == 0
    return out


def test_writes_every_file(demo: Path) -> None:
    for name in ("slides.tsv", "clinical.tsv", "genes.parquet", "mif_channels.tsv", "README.txt"):
        assert (demo / name).is_file(), name
    assert "synthetic" in (demo / "README.txt").read_text().lower()
    assert not list(demo.rglob(".tmp-*")), "temporary files left behind"


def test_sheets_read_with_pathomix_io(demo: Path) -> None:
    slides = read_slides(demo / "slides.tsv")
    clinical = read_clinical(demo / "clinical.tsv")
    genes = read_genes(demo / "genes.parquet")
    assert set(clinical.diagnosis) == {"astrocytoma", "oligodendroglioma", "glioblastoma"}
    assert clinical.diagnosis.value_counts().tolist() == [2, 2, 2]
    he = slides[slides.modality == "he"]
    assert set(he.patient_id) == set(clinical.patient_id)
    assert he.mpp.isna().all(), "H&E mpp must come from the file"
    assert (he.groupby("patient_id").size().loc["DEMO-006"]) == 2
    assert (slides.modality == "mif").sum() == 2
    assert set(genes.index) == set(clinical.patient_id)
    assert clinical.event.isin([0, 1]).all() and (clinical.survival_months > 0).all()


def test_clinical_follows_who2021(demo: Path) -> None:
    c = read_clinical(demo / "clinical.tsv")
    assert (c.loc[c.diagnosis == "glioblastoma", "grade"] == 4).all()
    assert c.loc[c.diagnosis == "oligodendroglioma", "grade"].isin([2, 3]).all()
    astro = c[c.diagnosis == "astrocytoma"]
    assert (astro.loc[astro.cdkn2a == "homdel", "grade"] == 4).all()


def test_he_slide_opens_in_openslide(demo: Path) -> None:
    slides = read_slides(demo / "slides.tsv")
    for path in slides.loc[slides.modality == "he", "path"].iloc[[0, 5, 6]]:
        with openslide.OpenSlide(path) as slide:
            assert slide.level_count >= 3
            assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)
            assert slide.properties["openslide.vendor"] == "generic-tiff"
            assert slide.level_dimensions[0] in ((1536, 1024), (768, 768))
            assert all(d == pytest.approx(2**i) for i, d in enumerate(slide.level_downsamples))
            small = slide.read_region((0, 0), slide.level_count - 1, slide.level_dimensions[-1])
            assert small.size == slide.level_dimensions[-1]


def test_mif_is_ome_with_channel_names(demo: Path) -> None:
    slides = read_slides(demo / "slides.tsv")
    channels = pd.read_csv(demo / "mif_channels.tsv", sep="\t")
    assert channels.columns.tolist() == ["index", "marker", "autofluorescence"]
    assert channels.autofluorescence.sum() == 1
    assert channels.loc[channels.autofluorescence == 1, "marker"].item() == "Autofluorescence"
    for path in slides.loc[slides.modality == "mif", "path"]:
        with tifffile.TiffFile(path) as tif:
            ome = tif.ome_metadata
            data = tif.asarray()
        assert data.shape == (len(channels), 512, 512)
        assert 'PhysicalSizeX="0.5"' in ome
        for name in channels.marker:
            assert f'Name="{name}"' in ome
        assert 0.4 < (data[0] > 300).mean() < 0.95
        frame = np.concatenate([data[:, :12].ravel(), data[:, -12:].ravel()])
        assert np.median(frame) < 20, "background must be near zero"


def _tissue_colours(demo: Path) -> pd.DataFrame:
    slides = read_slides(demo / "slides.tsv")
    clinical = read_clinical(demo / "clinical.tsv")
    rows = []
    for row in slides[slides.modality == "he"].itertuples():
        with openslide.OpenSlide(row.path) as slide:
            rgb = np.asarray(slide.read_region((0, 0), 2, slide.level_dimensions[2]).convert("RGB"), float)
        px = rgb.reshape(-1, 3)
        tissue = px[px.mean(axis=1) < 215]
        assert 0.4 < len(tissue) / len(px) < 0.8, f"{row.slide_id}: tissue fraction off"
        r, g, b = tissue.mean(axis=0)
        rows.append({"diagnosis": clinical.loc[row.patient_id, "diagnosis"], "bright": (r + g + b) / 3,
                     "blue_minus_red": b - r})
    return pd.DataFrame(rows).groupby("diagnosis").mean()


def test_he_class_signal_in_colour(demo: Path) -> None:
    colour = _tissue_colours(demo)
    assert colour.loc["glioblastoma", "bright"] < colour.loc["astrocytoma", "bright"] - 10
    assert colour.loc["glioblastoma", "bright"] < colour.loc["oligodendroglioma", "bright"] - 10
    # the IDH-mutant classes share one look; only the ~12 % signature patches (lavender, halos) differ
    gap = colour.loc["oligodendroglioma", "blue_minus_red"] - colour.loc["astrocytoma", "blue_minus_red"]
    assert 0 < gap < 8


def test_same_seed_same_content(demo: Path, tmp_path: Path) -> None:
    """Same seed, same content, whatever the number of processes."""
    assert main(["--out", str(tmp_path), *ARGS, "--jobs", "1"]) == 0
    for name in ("clinical.tsv", "slides.tsv", "mif_channels.tsv"):
        assert (demo / name).read_text() == (tmp_path / name).read_text(), name
    pd.testing.assert_frame_equal(pd.read_parquet(demo / "genes.parquet"),
                                  pd.read_parquet(tmp_path / "genes.parquet"))
    first = tifffile.imread(demo / "slides" / "DEMO-001-A.tiff")
    assert np.array_equal(first, tifffile.imread(tmp_path / "slides" / "DEMO-001-A.tiff"))
    ome = "mif/DEMO-001-MIF.ome.tiff"
    assert np.array_equal(tifffile.imread(demo / ome), tifffile.imread(tmp_path / ome))


def test_other_seed_other_content(tmp_path: Path) -> None:
    a = cohort.make_patients(12, seed=0)
    b = cohort.make_patients(12, seed=1)
    assert not a.survival_months.equals(b.survival_months)


def test_killed_run_leaves_no_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "slides.tsv").write_text("stale\n")

    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(mif, "write_ome_tiff", boom)
    with pytest.raises(RuntimeError, match="killed"):
        main(["--out", str(tmp_path), "--n-patients", "3", "--n-mif", "1"])
    assert not (tmp_path / "slides.tsv").exists()
    assert (tmp_path / "clinical.tsv").exists()


@pytest.fixture(scope="module")
def full_cohort() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    patients = cohort.make_patients(36, seed=0)
    genes, programs = cohort.make_genes(patients, seed=0)
    return patients, genes, programs


def test_gene_table_looks_like_counts(full_cohort: tuple) -> None:
    _, genes, programs = full_cohort
    values = genes.drop(columns="patient_id").to_numpy()
    assert genes.shape[1] - 1 >= 600
    assert np.issubdtype(values.dtype, np.integer) and values.min() >= 0 and values.max() > 1000
    sets = cohort.load_gene_sets().set_index("gene").subspace
    symbols = [g for g in genes.columns[1:] if not g.startswith("NOISE")]
    assert sets.reindex(symbols).notna().all(), "gene symbols must come from the packaged sets"
    assert sets.loc[symbols].value_counts().min() >= 250
    assert set(programs["tumour_program"]) <= set(sets.index[sets == "tumour"])
    assert set(programs["tme_program"]) <= set(sets.index[sets == "tme"])


def _anova_p(genes: pd.DataFrame, patients: pd.DataFrame, cols: list[str]) -> np.ndarray:
    x = np.log1p(genes[cols].to_numpy(float))
    groups = [x[(patients.diagnosis == c).to_numpy()] for c in cohort.CLASSES]
    return stats.f_oneway(*groups).pvalue


def test_tumour_program_tracks_class(full_cohort: tuple) -> None:
    patients, genes, programs = full_cohort
    assert set(programs["codel_program"]) | set(programs["idh_program"]) == set(programs["tumour_program"])
    codel_p = _anova_p(genes, patients, programs["codel_program"])
    noise_p = _anova_p(genes, patients, [c for c in genes.columns if c.startswith("NOISE")])
    assert np.median(codel_p) < 0.01
    assert np.median(noise_p) > 0.1
    # the codel program tells oligodendroglioma from astrocytoma; the IDH program is weak by design
    x = np.log1p(genes[programs["codel_program"]].to_numpy(float))
    astro, oligo = (x[(patients.diagnosis == c).to_numpy()] for c in ("astrocytoma", "oligodendroglioma"))
    assert np.median(stats.ttest_ind(astro, oligo).pvalue) < 0.01


def test_tme_program_tracks_risk(full_cohort: tuple) -> None:
    patients, genes, programs = full_cohort
    x = np.log1p(genes.drop(columns="patient_id").astype(float))

    def mean_abs_rho(cols: list[str]) -> float:
        return float(np.mean([abs(stats.spearmanr(x[c], patients.latent_risk)[0]) for c in cols]))

    noise = [c for c in x.columns if c.startswith("NOISE")]
    assert mean_abs_rho(programs["tme_program"]) > 0.4 > 0.25 > mean_abs_rho(noise)


def test_survival_depends_on_class_and_risk(full_cohort: tuple) -> None:
    patients, _, _ = full_cohort
    assert 0.15 < 1 - patients.event.mean() < 0.45
    median = patients.groupby("diagnosis").survival_months.median()
    assert median["glioblastoma"] < median["astrocytoma"] < median["oligodendroglioma"]


def test_mif_markers_track_risk() -> None:
    low = mif.cell_fractions("astrocytoma", -2.0)
    high = mif.cell_fractions("astrocytoma", 2.0)
    assert high["ki67_of_tumour"] > low["ki67_of_tumour"] and high["cd68"] > low["cd68"]
    assert high["cd8"] < low["cd8"]
    area = {}
    for risk in (-2.0, 2.0):
        data, tissue = mif.render_mif(mif.MifSpec("x", "astrocytoma", risk), rng_for(0, 9), noise_bank(0))
        af = data[mif.AF_INDEX].astype(float)
        corrected = data[:6].astype(float) - mif.AF_GAIN[:, None, None] * af
        area[risk] = {m: float((corrected[mif.CHANNELS.index(m)][tissue] > 600).mean())
                      for m in ("Ki67", "CD68", "CD8")}
    assert area[2.0]["Ki67"] > area[-2.0]["Ki67"]
    assert area[2.0]["CD68"] > area[-2.0]["CD68"]
    assert area[2.0]["CD8"] < area[-2.0]["CD8"]


def test_autofluorescence_is_added_to_markers() -> None:
    data, tissue = mif.render_mif(mif.MifSpec("x", "glioblastoma", 0.0), rng_for(0, 9), noise_bank(0))
    af = data[mif.AF_INDEX].astype(float)[tissue]
    for c in range(6):
        marker = data[c].astype(float)[tissue]
        assert stats.pearsonr(marker, af)[0] > 0.1, mif.CHANNELS[c]
