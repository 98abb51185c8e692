"""``python -m pathomix.features.manifest``: one row per (slide, magnification) feature store.

Columns: slide_id, patient_id, modality, mag, n_tiles, dim, path (relative to the results folder, so a
results folder can be moved or copied whole), sha256 and size_bytes of the store (training checks the size:
a store changed after extraction is refused), encoder,
encoder_weights_sha256, n_skipped (unreadable tiles left out under ``features.on_bad_tile: skip``),
source and source_format (imported stores, ``features.import``: the absolute path of the original file and
its layout, trident | clam | stamp; empty for the stores pathomix extracted).
(DESIGN §4 says "one row per slide"; with several magnifications a row is a slide at one
magnification, told apart by ``mag``.)
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pandas as pd

from pathomix import paths as P
from pathomix.cli import exit_process, stage_main
from pathomix.io.atomic import sha256_file, write_parquet
from pathomix.io.corrupt import open_h5, read_parquet
from pathomix.io.sheets import read_slides

log = logging.getLogger("pathomix.features.manifest")


def manifest_row(store: Path, slide: pd.Series, mag: str, results: Path | None = None) -> dict:
    """One row; ``path`` relative to ``results`` (absolute when None)."""
    with open_h5(store) as h:
        feats = h["features"]
        row = {
            "slide_id": slide.slide_id, "patient_id": slide.patient_id, "modality": slide.modality,
            "cohort": slide.cohort, "mag": mag, "n_tiles": int(feats.shape[0]), "dim": int(feats.shape[-1]),
            "n_channels": int(feats.shape[1]) if feats.ndim == 3 else 0,
            "encoder": str(feats.attrs["encoder"]),
            "encoder_weights_sha256": str(feats.attrs["encoder_weights_sha256"]),
            "n_skipped": int(feats.attrs.get("n_skipped", 0)),  # unreadable tiles left out (on_bad_tile: skip)
            "source": str(feats.attrs.get("source", "")),  # imported stores: the original file and its format
            "source_format": str(feats.attrs.get("source_format", "")),
        }
    path = store.resolve() if results is None else Path(os.path.relpath(store.resolve(), results.resolve()))
    row.update(path=path.as_posix(), sha256=sha256_file(store), size_bytes=store.stat().st_size)
    return row


@stage_main("pathomix.features.manifest")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.features.manifest", description=__doc__)
    p.add_argument("--slides", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--stores", nargs="+", help="feature stores: .../{mag}/{slide_id}.h5")
    src.add_argument("--batches", nargs="+", help="markers of extraction batch jobs (pathomix.batch), listing stores")
    p.add_argument("--out", required=True)
    p.add_argument("--encoder", help="the `encoder` column (imported stores: the features.import name, also for the "
                                     "slides its fallback encoder extracted); default: each store's own")
    args = p.parse_args(argv)
    slides = read_slides(args.slides, check_files=False)
    stores = args.stores or [s for b in args.batches for s in read_parquet(b, columns=["path"]).path]
    results = P.results_of_manifest(args.out)
    rows = []
    for store in map(Path, stores):
        rows.append(manifest_row(store, slides.loc[store.name.removesuffix(".h5")], store.parent.name, results))
    df = pd.DataFrame(rows)
    if args.encoder:
        df["encoder"] = args.encoder
    write_parquet(df, args.out)
    log.info("manifest %s: %d stores, %d slides, %d tiles", args.out, len(df), df.slide_id.nunique(),
             int(df.n_tiles.sum()))
    return 0


if __name__ == "__main__":
    exit_process(main())
