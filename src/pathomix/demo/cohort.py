"""Demo patients: WHO-2021 class, molecular markers, grade, survival and a gene table.

Every patient has a hidden latent risk (standard normal). Survival hazard depends on the
class, the grade and exp(0.8 × risk); the gene table plants a tumour program driven by the
class and a microenvironment (TME) program driven by the risk.

The modalities are built to complement each other (as in the DMSF paper's glioma cohorts):
the tumour program separates oligodendroglioma (1p/19q codel) from the IDH-mut astrocytoma
strongly, but IDH-wt glioblastoma from astrocytoma only weakly; the H&E slides do the
opposite (:mod:`pathomix.demo.he`). Only a model that reads both separates all three classes.
"""

from __future__ import annotations

import importlib.resources
import io

import numpy as np
import pandas as pd

from pathomix.demo.shapes import STREAM_CLINICAL, STREAM_GENES, rng_for

CLASSES = ("astrocytoma", "oligodendroglioma", "glioblastoma")
GRADES = {"astrocytoma": (2, 3, 4), "oligodendroglioma": (2, 3), "glioblastoma": (4,)}
# Median survival (months) at zero latent risk, per (class, grade): GBM worst, oligo best.
MEDIAN_MONTHS = {
    ("astrocytoma", 2): 110.0, ("astrocytoma", 3): 65.0, ("astrocytoma", 4): 32.0,
    ("oligodendroglioma", 2): 170.0, ("oligodendroglioma", 3): 100.0,
    ("glioblastoma", 4): 14.0,
}
AGE = {"astrocytoma": 38.0, "oligodendroglioma": 45.0, "glioblastoma": 62.0}
RISK_COEF = 0.8
CENSOR_FRACTION = 0.3
N_TUMOUR, N_TME, N_NOISE = 300, 300, 60
N_PROGRAM = 40
CODEL_EFFECT = 1.0  # log fold change of the 1p/19q-codel program (oligodendroglioma vs the rest)
IDH_EFFECT = 0.15  # log fold change of the IDH-wild-type program (glioblastoma vs the rest): weak
TME_EFFECT = 0.40  # log fold change per unit latent risk


def _molecular(diagnosis: str, grade: int, rng: np.random.Generator) -> dict[str, str]:
    """IDH, 1p/19q and CDKN2A status consistent with the WHO-2021 class and grade."""
    if diagnosis == "glioblastoma":
        return {"idh": "wt", "codel_1p19q": "non-codel", "cdkn2a": "homdel" if rng.random() < 0.5 else "wt"}
    codel = "codel" if diagnosis == "oligodendroglioma" else "non-codel"
    cdkn2a = "homdel" if diagnosis == "astrocytoma" and grade == 4 else "wt"
    return {"idh": "mut", "codel_1p19q": codel, "cdkn2a": cdkn2a}


def _survival(diagnosis: str, grade: int, risk: float, rng: np.random.Generator) -> tuple[float, int]:
    """Exponential survival time with random censoring (about 30 % censored)."""
    hazard = np.log(2.0) / MEDIAN_MONTHS[(diagnosis, grade)] * np.exp(RISK_COEF * risk)
    t = rng.exponential(1.0 / hazard)
    event = int(rng.random() >= CENSOR_FRACTION)
    if not event:
        t *= rng.uniform(0.15, 0.95)
    return round(float(max(t, 0.5)), 1), event


def make_patients(n_patients: int, seed: int) -> pd.DataFrame:
    """Clinical sheet plus the hidden columns ``diagnosis`` and ``latent_risk``.

    Classes are split as equally as possible and shuffled; grades cycle within a class.
    """
    rng = rng_for(seed, STREAM_CLINICAL)
    diagnoses = [CLASSES[i % 3] for i in range(n_patients)]
    diagnoses = [diagnoses[i] for i in rng.permutation(n_patients)]
    seen = dict.fromkeys(CLASSES, 0)
    rows = []
    for i, diagnosis in enumerate(diagnoses):
        grade = GRADES[diagnosis][seen[diagnosis] % len(GRADES[diagnosis])]
        seen[diagnosis] += 1
        risk = float(rng.standard_normal())
        months, event = _survival(diagnosis, grade, risk, rng)
        rows.append({
            "patient_id": f"DEMO-{i + 1:03d}",
            "age": int(np.clip(round(rng.normal(AGE[diagnosis], 10.0)), 18, 89)),
            **_molecular(diagnosis, grade, rng),
            "grade": grade,
            "survival_months": months,
            "event": event,
            "diagnosis": diagnosis,
            "latent_risk": round(risk, 4),
        })
    return pd.DataFrame(rows)


def load_gene_sets() -> pd.DataFrame:
    """The packaged tumour/TME gene subspaces (``pathomix/data/gene_sets.tsv``)."""
    text = importlib.resources.files("pathomix").joinpath("data/gene_sets.tsv").read_text()
    return pd.read_csv(io.StringIO(text), sep="\t", comment="#", dtype=str)


def _pick_genes(rng: np.random.Generator) -> tuple[list[str], list[str], list[str]]:
    """Sorted random tumour and TME gene symbols from the packaged sets, plus noise genes."""
    sets = load_gene_sets()
    tumour = sets.gene[sets.subspace == "tumour"].to_numpy()
    tme = sets.gene[sets.subspace == "tme"].to_numpy()
    pick_t = sorted(rng.choice(tumour, size=min(N_TUMOUR, len(tumour)), replace=False))
    pick_m = sorted(rng.choice(tme, size=min(N_TME, len(tme)), replace=False))
    noise = [f"NOISE{i + 1:03d}" for i in range(N_NOISE)]
    return pick_t, pick_m, noise


def _program_effects(patients: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """(patients × 2·N_PROGRAM) log fold changes: tumour program, then risk-driven TME program.

    The first half of the tumour program marks 1p/19q codeletion (oligodendroglioma, strong),
    the second half IDH wild type (glioblastoma, weak); each patient expresses its programs
    with a random activity, so a few tumours look ambiguous.
    """
    n = len(patients)
    half = N_PROGRAM // 2
    codel = (patients.diagnosis == "oligodendroglioma").to_numpy(float)
    idh_wt = (patients.diagnosis == "glioblastoma").to_numpy(float)
    sign = np.where(rng.random(N_PROGRAM) < 0.6, 1.0, -1.0)
    activity = np.clip(rng.normal(1.0, 0.35, n), 0.1, None)
    marks = np.concatenate([np.repeat((CODEL_EFFECT * codel)[:, None], half, axis=1),
                            np.repeat((IDH_EFFECT * idh_wt)[:, None], N_PROGRAM - half, axis=1)], axis=1)
    tumour = sign * marks * activity[:, None]
    tme_sign = np.where(rng.random(N_PROGRAM) < 0.5, 1.0, -1.0)
    tme = TME_EFFECT * tme_sign * patients.latent_risk.to_numpy(float)[:, None]
    return np.concatenate([tumour, tme], axis=1)


def make_genes(patients: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Raw-count-like gene table (negative binomial) and the planted program gene lists."""
    rng = rng_for(seed, STREAM_GENES)
    tumour, tme, noise = _pick_genes(rng)
    genes = tumour + tme + noise
    program_cols = np.concatenate([
        rng.choice(len(tumour), N_PROGRAM, replace=False),
        len(tumour) + rng.choice(len(tme), N_PROGRAM, replace=False),
    ])
    base = rng.normal(np.log(60.0), 1.6, len(genes))  # wide range of gene means
    base[program_cols] = rng.normal(np.log(300.0), 0.7, len(program_cols))  # programs well measured
    log_mu = np.repeat(base[None, :], len(patients), axis=0)
    log_mu[:, program_cols] += _program_effects(patients, rng)
    mu = np.exp(log_mu) * rng.lognormal(0.0, 0.2, len(patients))[:, None]  # library size
    dispersion = 0.15  # negative binomial: var = mu + dispersion * mu²
    counts = rng.poisson(rng.gamma(1.0 / dispersion, dispersion * mu)).astype(np.int64)
    table = pd.DataFrame(counts, columns=genes)
    table.insert(0, "patient_id", patients.patient_id.to_numpy())
    programs = {
        "tumour_program": [genes[i] for i in program_cols[:N_PROGRAM]],
        "codel_program": [genes[i] for i in program_cols[:N_PROGRAM // 2]],
        "idh_program": [genes[i] for i in program_cols[N_PROGRAM // 2:N_PROGRAM]],
        "tme_program": [genes[i] for i in program_cols[N_PROGRAM:]],
    }
    return table, programs
