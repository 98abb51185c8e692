"""Write the whole demo cohort into a folder (DESIGN.md §7).

``slides.tsv`` is the "demo exists" marker of the workflow, so it is removed first and
written last (every file goes through a temporary name and ``os.replace``): a killed run
never leaves a ``slides.tsv`` that points at missing or half-written files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from pathomix.demo import cohort, he, mif
from pathomix.demo.shapes import STREAM_HE, STREAM_MIF, noise_bank, rng_for, tile_count
from pathomix.errors import PathomixInputError
from pathomix.io.atomic import atomic_path, write_parquet

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

MAIN_SIZE = (1536, 1024)  # W × H of every patient's first H&E slide
SECOND_SIZE = (768, 768)  # W × H of the second H&E slide of every 6th patient
SECOND_EVERY = 6
TILE_PX = 256  # tile edge at the target magnification (config tiling.tile_px)


@dataclass(frozen=True)
class DemoParams:
    """The cohort keys of the config's ``demo:`` subtree (``enabled`` and ``dir`` are the Snakefile's);
    defaults equal config.yaml (tests/test_params.py checks)."""

    seed: int = 0
    n_patients: int = 24  # split equally over the 3 WHO-2021 classes
    n_mif: int = 8        # patients that also get a 7-channel mIF image

    def __post_init__(self) -> None:
        if self.n_patients < 3:
            raise PathomixInputError(f"demo.n_patients={self.n_patients} must be at least 3 (one per WHO-2021 class)")
        if not 0 <= self.n_mif <= self.n_patients:
            raise PathomixInputError(f"demo.n_mif={self.n_mif} must be between 0 and n_patients={self.n_patients}")


def write_tsv(df: pd.DataFrame, path: Path) -> None:
    """Tab-separated, no index, written atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def mif_patients(patients: pd.DataFrame, n_mif: int) -> list[int]:
    """Row numbers of ``n_mif`` patients, taken round-robin over the classes."""
    by_class = [list(np.flatnonzero(patients.diagnosis.to_numpy() == c)) for c in cohort.CLASSES]
    picked: list[int] = []
    while len(picked) < min(n_mif, len(patients)):
        for rows in by_class:
            if rows and len(picked) < n_mif:
                picked.append(int(rows.pop(0)))
    return sorted(picked)


def he_specs(patients: pd.DataFrame) -> list[he.SlideSpec]:
    """One main H&E slide per patient, plus a smaller second one for every 6th patient."""
    specs = []
    for i, p in enumerate(patients.itertuples()):
        common = {"patient_id": p.patient_id, "diagnosis": p.diagnosis, "risk": p.latent_risk, "grade": int(p.grade)}
        specs.append(he.SlideSpec(f"{p.patient_id}-A", width=MAIN_SIZE[0], height=MAIN_SIZE[1],
                                  n_blobs=1 + i % 2, **common))
        if (i + 1) % SECOND_EVERY == 0:
            specs.append(he.SlideSpec(f"{p.patient_id}-B", width=SECOND_SIZE[0], height=SECOND_SIZE[1],
                                      n_blobs=1, **common))
    return specs


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_jobs(fn: Callable[[T], R], items: list[T], jobs: int) -> list[R]:
    """``[fn(x) for x in items]``, in ``jobs`` processes when ``jobs`` > 1 (order kept).

    Each item carries its own seeded generator key, so the result does not depend on ``jobs``.
    """
    if jobs <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ProcessPoolExecutor(max_workers=min(jobs, len(items))) as pool:
        return list(pool.map(fn, items))


def he_job(item: tuple[Path, he.SlideSpec, int, int]) -> dict:
    """Render and write one H&E slide; returns its slide-sheet row and tile counts."""
    out, spec, seed, k = item
    img, mask = he.render_he(spec, rng_for(seed, STREAM_HE, k), noise_bank(seed))
    rel = f"slides/{spec.slide_id}.tiff"
    he.write_pyramidal_tiff(out / rel, img)
    log.debug("wrote %s", rel)
    row = {"slide_id": spec.slide_id, "patient_id": spec.patient_id, "path": rel, "modality": "he", "mpp": ""}
    return {"row": row, "he_tiles_20x": tile_count(mask, TILE_PX), "he_tiles_10x": tile_count(mask, 2 * TILE_PX)}


def mif_job(item: tuple[Path, mif.MifSpec, str, int, int]) -> dict:
    """Render and write one mIF image; returns its slide-sheet row and 20x tile count."""
    out, spec, patient_id, seed, k = item
    data, mask = mif.render_mif(spec, rng_for(seed, STREAM_MIF, k), noise_bank(seed))
    rel = f"mif/{spec.slide_id}.ome.tiff"
    mif.write_ome_tiff(out / rel, data)
    log.debug("wrote %s", rel)
    row = {"slide_id": spec.slide_id, "patient_id": patient_id, "path": rel, "modality": "mif", "mpp": mif.MIF_MPP}
    return {"row": row, "mif_tiles_20x": tile_count(mask, TILE_PX)}


def write_images(out: Path, patients: pd.DataFrame, n_mif: int, seed: int, jobs: int) -> tuple[list, dict]:
    """Render and write all H&E slides and mIF images; returns slide rows and tile counts."""
    he_items = [(out, spec, seed, k) for k, spec in enumerate(he_specs(patients))]
    mif_items = []
    for k in mif_patients(patients, n_mif):
        p = patients.iloc[k]
        spec = mif.MifSpec(f"{p.patient_id}-MIF", p.diagnosis, float(p.latent_risk))
        mif_items.append((out, spec, p.patient_id, seed, k))
    done = run_jobs(he_job, he_items, jobs) + run_jobs(mif_job, mif_items, jobs)
    tiles = {key: sum(d.get(key, 0) for d in done) for key in ("he_tiles_20x", "he_tiles_10x", "mif_tiles_20x")}
    return [d["row"] for d in done], tiles


def channel_sheet() -> pd.DataFrame:
    """The mIF channel sheet: index, marker, autofluorescence flag."""
    return pd.DataFrame({
        "index": range(len(mif.CHANNELS)),
        "marker": mif.CHANNELS,
        "autofluorescence": [int(i == mif.AF_INDEX) for i in range(len(mif.CHANNELS))],
    })


README = """pathomix demo cohort: SYNTHETIC data, generated by `python -m pathomix.demo --seed {seed}`.
No real patient is behind any of these files. Same seed => same content.

clinical.tsv   {n_patients} patients (DEMO-001...), split equally over the WHO-2021 classes
               astrocytoma (IDH-mut, non-codel; grade 2/3/4, CDKN2A homdel => grade 4),
               oligodendroglioma (IDH-mut + 1p/19q codel; grade 2/3), glioblastoma (IDH-wt, grade 4).
               Survival: exponential hazard by class and grade (GBM worst, oligo best) times
               exp({risk_coef} * latent_risk), latent_risk ~ N(0, 1) per patient; ~30 % censored.
truth.tsv      the hidden per-patient diagnosis and latent_risk (for checks only, never a model input).
slides.tsv     H&E slides (mpp empty: read from the file) and mIF images (mpp 0.5).
slides/*.tiff  pyramidal tiled-JPEG TIFF, RGB, 0.5 um/px (20x) at level 0, factor-2 levels.
               Planted: glioblastoma (very dense dark pleomorphic nuclei, necrosis) looks unlike
               the IDH-mutant classes, which share one lower-grade look except in patches
               (~12 % of the tissue): sparse elongated nuclei on fibrillary stroma
               (astrocytoma) or round nuclei with clear halos on lavender stroma (oligo);
               the latent risk and the grade raise nuclear density a little; cellularity
               varies smoothly within each slide and stain intensity between slides.
               Every {second_every}th patient has a second, smaller slide (-B).
mif/*.ome.tiff 7-channel CYX uint16 OME-TIFF, 512 x 512 at 0.5 um/px; channels in mif_channels.tsv.
               Planted: Ki67+ and CD68+ fractions rise with latent risk, CD8+ falls; a smooth
               autofluorescence signal (last channel) is added to every marker channel.
genes.parquet  patients x {n_genes} raw counts (negative binomial): {n_tumour} tumour and {n_tme} TME genes
               from pathomix/data/gene_sets.tsv plus {n_noise} NOISE### genes.
               Planted: {n_program} tumour genes shift with the WHO class (half mark 1p/19q codel =
               oligodendroglioma strongly, half mark IDH-wt = glioblastoma weakly, so the genes
               tell astrocytoma from oligodendroglioma and H&E tells glioblastoma from both);
               {n_program} TME genes track the latent risk; all other genes are noise.
               tumour program: {tumour_program}
               TME program: {tme_program}
"""


def write_readme(out: Path, seed: int, n_patients: int, programs: dict[str, list[str]]) -> None:
    """A plain-text README saying what is synthetic and what is planted where."""
    text = README.format(
        seed=seed, n_patients=n_patients, risk_coef=cohort.RISK_COEF, second_every=SECOND_EVERY,
        n_genes=cohort.N_TUMOUR + cohort.N_TME + cohort.N_NOISE, n_tumour=cohort.N_TUMOUR,
        n_tme=cohort.N_TME, n_noise=cohort.N_NOISE, n_program=cohort.N_PROGRAM,
        tumour_program=" ".join(programs["tumour_program"]), tme_program=" ".join(programs["tme_program"]),
    )
    with atomic_path(out / "README.txt") as tmp:
        tmp.write_text(text)


def generate_cohort(
    out: str | Path, seed: int = DemoParams.seed, n_patients: int = DemoParams.n_patients,
    n_mif: int = DemoParams.n_mif, jobs: int = 1
) -> dict:
    """Write the demo cohort into ``out`` and return a summary (counts, tiles, seconds).

    ``jobs`` processes render the images (0 = one per CPU, up to 4); the
    content depends only on the seed and the counts, never on ``jobs``.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "slides.tsv").unlink(missing_ok=True)
    patients = cohort.make_patients(n_patients, seed)
    write_tsv(patients.drop(columns=["diagnosis", "latent_risk"]), out / "clinical.tsv")
    write_tsv(patients[["patient_id", "diagnosis", "latent_risk"]], out / "truth.tsv")
    genes, programs = cohort.make_genes(patients, seed)
    write_parquet(genes, out / "genes.parquet")
    jobs = jobs if jobs > 0 else min(4, available_cpus())
    rows, tiles = write_images(out, patients, n_mif, seed, jobs)
    write_tsv(channel_sheet(), out / "mif_channels.tsv")
    write_readme(out, seed, n_patients, programs)
    write_tsv(pd.DataFrame(rows), out / "slides.tsv")  # the marker: last
    summary = {
        "out": str(out), "seed": seed, "n_patients": n_patients,
        "classes": patients.diagnosis.value_counts().to_dict(),
        "n_he_slides": sum(r["modality"] == "he" for r in rows),
        "n_mif_images": sum(r["modality"] == "mif" for r in rows), "n_genes": genes.shape[1] - 1,
        "censored_fraction": round(float(1 - patients.event.mean()), 3),
        **tiles,
        "tile_encodings_estimate": tiles["he_tiles_20x"] + tiles["he_tiles_10x"]
        + tiles["mif_tiles_20x"] * len(mif.CHANNELS),
        "jobs": jobs, "seconds": round(time.perf_counter() - start, 2),
    }
    log.info("demo cohort written: %s", summary)
    return summary
