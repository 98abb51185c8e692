"""``python -m pathomix.io.convert``: a PORPOISE-style TCGA table → DESIGN §3 sheets.

The PORPOISE/MCAT csv files (e.g. ``tcga_luad_all_clean.csv.zip``) have one row per *slide*,
``case_id``, ``survival_months``, ``censorship`` (1 = censored, so event = 1 - censorship) and
omics columns named ``<GENE>_rnaseq``, ``<GENE>_cnv``, ``<GENE>_mut``. This writes:

- ``clinical.tsv``: one row per patient (deduplicated by ``case_id``): ``patient_id``,
  ``survival_months``, ``event`` (1 = death observed) and, when present, ``age``, ``is_female``,
  ``oncotree_code``;
- ``genes.parquet``: ``patient_id`` + the chosen omics columns (``rnaseq`` by default, suffix
  stripped so columns are gene symbols). Values are copied as they are: the hvg stage decides
  on a log transform and training standardises per fold.

Then run the workflow genes-only: ``--config slides=null clinical=DIR/clinical.tsv
genes=DIR/genes.parquet train='{models: [snn], tasks: [survival]}' ...`` (README).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pathomix.cli import exit_process, stage_main
from pathomix.errors import PathomixInputError
from pathomix.io.atomic import atomic_path, write_parquet

log = logging.getLogger("pathomix.io.convert")

OMICS = ("rnaseq", "cnv", "mut")
REQUIRED = ("case_id", "survival_months", "censorship")
OPTIONAL_CLINICAL = ("age", "is_female", "oncotree_code")


@dataclass(frozen=True)
class Converted:
    clinical: pd.DataFrame  # one row per patient
    genes: pd.DataFrame  # patient_id + one column per gene (per omics feature)


def read_table(path: str | Path) -> pd.DataFrame:
    """The csv, zipped or not (pandas infers the compression from the suffix)."""
    path = Path(path)
    if not path.exists():
        raise PathomixInputError(f"TCGA table {path} does not exist; give the path of a PORPOISE-style csv(.zip)")
    return pd.read_csv(path, low_memory=False)


def _omics_columns(df: pd.DataFrame, omics: tuple[str, ...], source: Path) -> dict[str, str]:
    """Column name → output name for the chosen omics families (suffix dropped for a single family)."""
    unknown = [o for o in omics if o not in OMICS]
    if unknown:
        raise PathomixInputError(f"unknown omics {unknown}; choose from {list(OMICS)}")
    cols = {}
    for o in omics:
        found = [c for c in df.columns if c.endswith(f"_{o}")]
        if not found:
            raise PathomixInputError(
                f"TCGA table {source} has no `*_{o}` columns; pick omics present in the file "
                f"(e.g. --omics rnaseq) or check that it is a PORPOISE-style table")
        cols.update({c: c[: -len(o) - 1] if len(omics) == 1 else c for c in found})
    return cols


def _one_row_per_case(df: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Rows are slides: keep each case's first row; conflicting outcomes are an error."""
    outcome = df.groupby("case_id")[["survival_months", "censorship"]].nunique(dropna=False)
    bad = outcome[(outcome > 1).any(axis=1)].index
    if len(bad):
        raise PathomixInputError(
            f"TCGA table {source}: case(s) {list(bad[:5])} have different survival_months/censorship on "
            "different slide rows; fix the table so each case has one outcome")
    return df.drop_duplicates("case_id", keep="first")


def convert(df: pd.DataFrame, source: str | Path = "<table>", omics: tuple[str, ...] = ("rnaseq",)) -> Converted:
    """PORPOISE-style slide-level table → (clinical, genes) at the patient level."""
    source = Path(source)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise PathomixInputError(
            f"TCGA table {source} lacks column(s) {missing}; a PORPOISE-style table needs {list(REQUIRED)} "
            "(censorship: 1 = censored, 0 = death observed). Rename the columns or write clinical.tsv "
            "yourself (README 'Your own cohort')")
    cols = _omics_columns(df, omics, source)
    censor = pd.to_numeric(df.censorship, errors="coerce")
    if not censor.dropna().isin([0, 1]).all():
        raise PathomixInputError(f"TCGA table {source}: `censorship` must be 0 or 1 (1 = censored); "
                                 f"found {sorted(censor.dropna().unique())[:5]}")
    df = df.assign(case_id=df.case_id.astype(str), censorship=censor)
    cases = _one_row_per_case(df, source)
    log.info("TCGA table %s: %d slide rows → %d patients", source, len(df), len(cases))
    clinical = pd.DataFrame({"patient_id": cases.case_id.to_numpy(),
                             "survival_months": pd.to_numeric(cases.survival_months, errors="coerce").to_numpy(),
                             "event": (1 - cases.censorship).astype("Int64").to_numpy()})
    for c in OPTIONAL_CLINICAL:
        if c in cases.columns:
            clinical[c] = cases[c].to_numpy()
    genes = cases[list(cols)].rename(columns=cols).apply(pd.to_numeric, errors="coerce").astype("float32")
    genes.insert(0, "patient_id", cases.case_id.to_numpy())
    log.info("clinical: %d events, %d censored; genes: %d columns (%s)", int(clinical.event.sum()),
             int((clinical.event == 0).sum()), genes.shape[1] - 1, "+".join(omics))
    return Converted(clinical.reset_index(drop=True), genes.reset_index(drop=True))


def write(c: Converted, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    clinical, genes = out_dir / "clinical.tsv", out_dir / "genes.parquet"
    with atomic_path(clinical) as tmp:
        c.clinical.to_csv(tmp, sep="\t", index=False)
    write_parquet(c.genes, genes)
    return clinical, genes


@stage_main("pathomix.io.convert")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.io.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help="PORPOISE-style csv or csv.zip (one row per slide)")
    p.add_argument("--out", required=True, help="folder for clinical.tsv and genes.parquet")
    p.add_argument("--omics", default="rnaseq",
                   help=f"comma-separated families of {list(OMICS)}; suffixes are kept when more than one")
    args = p.parse_args(argv)
    c = convert(read_table(args.table), args.table, tuple(args.omics.split(",")))
    clinical, genes = write(c, args.out)
    log.info("wrote %s and %s", clinical, genes)
    return 0


if __name__ == "__main__":
    exit_process(main())
