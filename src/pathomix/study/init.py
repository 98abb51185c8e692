"""``pathomix init SLIDES_DIR --out COHORT_DIR``: the three sheets and a complete config.yaml from a folder of
slides (and a clinical / gene table), with the problems listed before anything runs.

    pathomix init slides/ --out my_study --clinical tcga_luad_all_clean.csv.zip
    cd my_study && snakemake -s <repo>/Snakefile --cores all

- ``slides.tsv``: one row per slide found (every format the readers take, recursively; a DICOM series folder is
  one slide): slide_id from the file name, patient_id from the TCGA barcode (``TCGA-CR-7395-01A…`` →
  ``TCGA-CR-7395``) or ``--patient-pattern`` (a regex; its first group), path relative to the sheet, modality
  guessed from the file (RGB brightfield → ``he``, multichannel → ``mif``), ``mpp`` left empty (the file's own is
  used). Slides with a problem (do not open, no MPP, too coarse) go to ``excluded_slides.tsv`` with the
  message instead: fix the file or fill its ``mpp``, then move the row to ``slides.tsv``.
- ``clinical.tsv`` and ``genes.parquet``: a PORPOISE-style table (``case_id``, ``censorship``, ``*_rnaseq``) is
  converted (:mod:`pathomix.io.convert`); a clinical sheet with ``patient_id`` is taken as it is; ``--genes``
  adds a gene table (parquet, tsv or csv with ``patient_id``).
- ``config.yaml``: the workflow's own defaults (its config.yaml, read, not copied by hand), the cohort keys
  filled in, the demo off, and the models and tasks limited to what the cohort allows (modalities, clinical
  columns, labels with at least two classes, survival with events).

The problem table (slides that do not open, lack an MPP or are too coarse; slides whose patient is not in the
clinical table; patients without slides or genes) is printed and written to ``problems.tsv``; exit status 0
either way (the sheets are a starting point to fix), 1 only when nothing usable was found.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

import pathomix
from pathomix.catalog import missing_cohort_inputs
from pathomix.cli import exit_process, stage_main
from pathomix.errors import PathomixInputError
from pathomix.io.atomic import atomic_path, write_parquet
from pathomix.io.convert import REQUIRED, convert, read_table
from pathomix.io.sheets import read_clinical
from pathomix.study.scan import Found, problems_table, scan
from pathomix.tasks import TASKS

log = logging.getLogger("pathomix.init")


def workflow_dir() -> Path:
    """The workflow (Snakefile, config.yaml) of this pathomix: the repository the package is installed from."""
    root = Path(pathomix.__file__).resolve().parents[2]
    if not (root / "Snakefile").exists() or not (root / "config.yaml").exists():
        raise PathomixInputError(
            f"cannot find the pathomix workflow next to the package ({root} has no Snakefile/config.yaml); install "
            "pathomix from its repository (`pip install -e .` in a clone), or pass --workflow REPO")
    return root


def _read_any(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if ".zip" in path.suffixes or path.suffix == ".csv":
        return read_table(path)
    return pd.read_csv(path, sep="\t")


def cohort_tables(clinical: Path | None, genes: Path | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(clinical, genes) from a PORPOISE-style table, or a clinical sheet, and an optional gene table."""
    clin, gene = None, None
    if clinical is not None:
        table = _read_any(clinical)
        if set(REQUIRED) <= set(table.columns):
            converted = convert(table, clinical)
            clin, gene = converted.clinical, converted.genes
            log.info("%s: a PORPOISE-style table: %d patients, %d genes", clinical, len(clin), gene.shape[1] - 1)
        elif "patient_id" in table.columns:
            clin = table
        else:
            raise PathomixInputError(
                f"clinical table {clinical} has neither `patient_id` (a clinical sheet) nor {list(REQUIRED)} (a "
                "PORPOISE-style table); rename its patient column to patient_id")
    if genes is not None:
        gene = _read_any(genes)
        if "patient_id" not in gene.columns:
            raise PathomixInputError(f"gene table {genes} has no `patient_id` column; add it (one row per patient)")
    return clin, gene


def cohort_problems(found: list[Found], clinical: pd.DataFrame | None, genes: pd.DataFrame | None
                    ) -> list[tuple[str, str]]:
    """Slides whose patient the clinical table lacks; patients of the clinical table without slides or genes."""
    rows = []
    slide_patients = {f.patient_id for f in found}
    if clinical is not None:
        known = set(clinical.patient_id.astype(str))
        for f in found:
            if f.patient_id not in known:
                rows.append((f.slide_id, f"patient {f.patient_id} is not in the clinical table: add a row for it, "
                                         "or check --patient-pattern"))
        no_slides = sorted(known - slide_patients) if found else []
        if no_slides:
            rows.append((f"{len(no_slides)} patient(s)", f"in the clinical table without a slide, e.g. {no_slides[:5]}"
                                                          " (they train the gene models only)"))
        if genes is not None:
            no_genes = sorted(known - set(genes.patient_id.astype(str)))
            if no_genes:
                rows.append((f"{len(no_genes)} patient(s)", f"in the clinical table without genes, e.g. "
                                                              f"{no_genes[:5]}"))
    return rows


def usable_tasks(clinical_path: Path | None) -> list[str]:
    """Tasks the clinical sheet has labels for: two classes or more, or survival with at least one event."""
    if clinical_path is None:
        return []
    c = read_clinical(clinical_path)
    out = []
    for name, task in TASKS.items():
        labels = task.label(c).dropna()
        ok = (labels.nunique() >= 2) if task.kind == "classification" else \
            bool(len(labels)) and c.loc[labels.index, "event"].fillna(0).sum() > 0
        if ok:
            out.append(name)
    return out


def study_config(defaults: dict[str, Any], keys: dict[str, str | None], modalities: set[str],
                 clinical_columns: list[str], tasks: list[str]) -> dict[str, Any]:
    """The workflow's defaults with the cohort keys set, the demo off and only the models the cohort allows."""
    cfg = copy.deepcopy(defaults)
    cfg.update(keys)
    cfg["results_dir"] = "results"
    cfg["demo"]["enabled"] = False
    train = cfg["train"]
    train["tasks"] = [t for t in train["tasks"] if t in tasks] or tasks[:1]
    kept = [m for m in train["models"]
            if not missing_cohort_inputs([m], cfg, sorted(modalities), clinical_columns)]
    dropped = [m for m in train["models"] if m not in kept]
    if dropped:
        log.info("models the cohort cannot train (inputs or columns it lacks), left out: %s", dropped)
    train["models"] = kept
    train["variants"] = {k: v for k, v in (train.get("variants") or {}).items() if k in kept}
    train["select"] = {k: v for k, v in (train.get("select") or {}).items()
                       if all(c in kept for c in v.get("candidates", []))}
    return cfg


def _rows(found: list[Found], out: Path) -> pd.DataFrame:
    return pd.DataFrame([{"slide_id": f.slide_id, "patient_id": f.patient_id,
                          "path": Path(os.path.relpath(f.path.resolve(), out.resolve())).as_posix(),
                          "modality": f.modality, "mpp": "", "problem": f.problem} for f in found],
                        columns=["slide_id", "patient_id", "path", "modality", "mpp", "problem"])


def encoder_settings(defaults: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The study's ``features`` keys: the encoder, its weights file, and random init only when asked for."""
    encoder = args.encoder or defaults["features"]["encoder"]
    return {"encoder": encoder, "weights": None if args.weights is None else str(args.weights.resolve()),
            "allow_random_init": bool(args.allow_random_init)}


def encoder_problems(features: dict[str, Any], slides: list[Found]) -> list[tuple[str, str]]:
    """The encoder's weights, looked up as extraction will (a file, else the Hugging Face cache), when there are
    slides to extract."""
    from pathomix.features.weights import resolve_weights

    if not slides:
        return []
    try:
        path = resolve_weights(features["encoder"], features["weights"], features["allow_random_init"])
    except PathomixInputError as err:
        return [(f"encoder {features['encoder']}", f"{err} (or `pathomix init --allow-random-init` for a dry run of "
                                                     "the pipeline with random features)")]
    if path is None:
        log.warning("encoder %s will run RANDOMLY INITIALISED (--allow-random-init): not a study", features["encoder"])
    return []


def write_slides(found: list[Found], out: Path) -> Path | None:
    """``slides.tsv`` with the slides that open; the others go to ``excluded_slides.tsv`` with their problem (fill
    the `mpp` of a slide without one and move its row over). None when no slide opens."""
    rows = _rows(found, out)
    bad = rows.problem.notna()
    if bad.any():
        with atomic_path(out / "excluded_slides.tsv") as tmp:
            rows[bad].to_csv(tmp, sep="\t", index=False)
    if bad.all():
        return None
    sheet = out / "slides.tsv"
    with atomic_path(sheet) as tmp:
        rows[~bad].drop(columns="problem").to_csv(tmp, sep="\t", index=False)
    return sheet


def print_problems(rows: list[tuple[str, str]], out: Path) -> None:
    with atomic_path(out / "problems.tsv") as tmp:
        pd.DataFrame(rows, columns=["what", "problem"]).to_csv(tmp, sep="\t", index=False)
    if not rows:
        log.info("no problems found")
        return
    log.warning("%d problem(s) to look at before running (also in %s):", len(rows), out / "problems.tsv")
    for what, problem in rows:
        log.warning("  %-28s %s", what, problem)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    workflow = args.workflow or workflow_dir()
    defaults = yaml.safe_load((workflow / "config.yaml").read_text())
    targets = {str(k): float(v) for k, v in defaults["tiling"]["magnifications"].items()}
    found = scan(args.slides_dir, targets, args.patient_pattern) if args.slides_dir else []
    clinical, genes = cohort_tables(args.clinical, args.genes)
    if not found and clinical is None:
        raise PathomixInputError(f"no slide found under {args.slides_dir} and no clinical table given; nothing to set "
                                 "up (supported files: README 'Slide formats')")
    keys: dict[str, str | None] = {"slides": None, "clinical": None, "genes": None, "mif_channels": None}
    usable = [f for f in found if f.problem is None]
    if (sheet := write_slides(found, out)) is not None:
        keys["slides"] = sheet.name
    if clinical is not None:
        with atomic_path(out / "clinical.tsv") as tmp:
            clinical.to_csv(tmp, sep="\t", index=False)
        keys["clinical"] = "clinical.tsv"
    if genes is not None:
        write_parquet(genes, out / "genes.parquet")
        keys["genes"] = "genes.parquet"
    if args.mif_channels is not None:
        shutil.copyfile(args.mif_channels, out / "mif_channels.tsv")
        keys["mif_channels"] = "mif_channels.tsv"
    features = encoder_settings(defaults, args)
    rows = problems_table(found, cohort_problems(found, clinical, genes) + encoder_problems(features, usable))
    modalities = {f.modality for f in usable}
    columns = list(clinical.columns) if clinical is not None else []
    tasks = usable_tasks(out / "clinical.tsv" if clinical is not None else None)
    cfg = study_config(defaults, keys, modalities, columns, tasks)
    cfg["features"].update(features)
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(f"# written by `pathomix init` from the defaults of {workflow / 'config.yaml'}; every key is "
                       "documented there\n" + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    print_problems(rows, out)
    log.info("%d slide(s) (%s), %d patient(s) in the clinical table; models: %s; tasks: %s", len(usable),
             ", ".join(sorted(modalities)) or "none", 0 if clinical is None else len(clinical),
             cfg["train"]["models"], cfg["train"]["tasks"])
    log.info("next: cd %s && snakemake -s %s --cores all", out, workflow / "Snakefile")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("slides_dir", type=Path, nargs="?", help="folder of slides (searched recursively); omit for a "
                                                            "genes-only cohort")
    p.add_argument("--out", type=Path, required=True, help="the study folder to write (sheets, config.yaml)")
    p.add_argument("--clinical", type=Path, help="clinical sheet (patient_id, …) or PORPOISE-style table")
    p.add_argument("--genes", type=Path, help="gene table with patient_id (parquet, tsv or csv)")
    p.add_argument("--mif-channels", type=Path, help="mIF channel sheet (index, marker, autofluorescence)")
    p.add_argument("--patient-pattern", help="regex whose first group is the patient in a slide id "
                                             "(default: the TCGA barcode, else the slide id)")
    p.add_argument("--encoder", help="patch encoder (default: the config's; `python -m pathomix.features "
                                     "--list-encoders`)")
    p.add_argument("--weights", type=Path, help="the encoder's checkpoint file (default: the Hugging Face cache)")
    p.add_argument("--allow-random-init", action="store_true",
                   help="let the encoder run randomly initialised when no weights are found (a dry run of the "
                        "pipeline, not a study: features carry colour and texture only)")
    p.add_argument("--workflow", type=Path, help="the pathomix repository (default: where the package is)")


@stage_main("pathomix.init")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pathomix init", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    exit_process(main())
