"""``python -m pathomix.evaluate.heatmaps``: attention of the tile models on chosen slides.

For every tile model and every attention head it wrote (``attention.parquet`` next to each
``predictions.parquet``: ABMIL's ``abmil`` head, DMSF's ``tumour`` and ``tme`` subspace heads on
H&E slides, the Fluoroformer's ``fluoroformer`` head on mIF images),
one grid figure ``{model}__{head}.png``: rows = the chosen slides, columns = task × magnification,
each panel the slide thumbnail with the tiles of the coords store coloured by attention. The
weights are shown as percentiles within the slide (rank / n), so that bags of different size
compare. Each panel is also exported on its own (``heatmap_slides/``), at thumbnail resolution.

Chosen slides, per modality (H&E for the H&E models, mIF for the mIF models): ``slides`` (explicit
slide ids) or the ``top_k`` highest- and ``top_k`` lowest-risk test patients of the survival task,
ranked by the mean over those models of each model's within-fold risk percentile (one set of
slides for every figure of a modality, so heads and teacher/student compare). mIF images are shown
as a fluorescence composite of their markers (nuclear stain blue); the attention per marker is a
figure of the evaluate stage.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pathomix.cli import exit_process, stage_main
from pathomix.evaluate import heatmap_draw as D
from pathomix.evaluate.layout import HEATMAP_GRID
from pathomix.io.corrupt import open_h5, read_parquet
from pathomix.io.sheets import read_slides
from pathomix.io.slide import open_slide
from pathomix.params import load_params
from pathomix.paths import ATTENTION  # written by the training stage next to predictions.parquet

log = logging.getLogger("pathomix.evaluate.heatmaps")
THUMB_LONG_SIDE = 768            # px of the thumbnail's long side


@dataclass(frozen=True)
class HeatmapParams:
    """The config's ``evaluate.heatmaps`` subtree; defaults equal config.yaml."""

    top_k: int = 2
    slides: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> HeatmapParams:
        return load_params(cls, text, where="evaluate.heatmaps")


def read_attention(pred_paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test predictions and attention rows (with model, task, fold) of every job that wrote attention."""
    preds, att = [], []
    for f in pred_paths:
        p = read_parquet(f)
        a = Path(f).with_name(ATTENTION)
        if not len(p):
            continue
        preds.append(p[p.split == "test"])
        if a.exists():
            att.append(read_parquet(a).assign(model=p.model.iloc[0], task=p.task.iloc[0], fold=p.fold.iloc[0]))
        else:
            log.warning("%s: no %s next to it (not a WSI model?); no heatmap for it", f, ATTENTION)
    att_df = pd.concat(att, ignore_index=True) if att else pd.DataFrame(
        columns=["patient_id", "slide_id", "mag", "tile_index", "weight", "head", "model", "task", "fold"])
    return pd.concat(preds, ignore_index=True), att_df


def choose_slides(preds: pd.DataFrame, att: pd.DataFrame, drawable: set[str], params: HeatmapParams
                  ) -> pd.DataFrame:
    """slide_id, patient_id, group ("high risk" | "low risk" | "listed" | "first"), risk_pct, in display
    order, among the ``drawable`` slides (those of one modality) with attention rows."""
    drawn = att[att.slide_id.isin(drawable)]
    tiles = drawn.groupby(["patient_id", "slide_id"]).tile_index.nunique().reset_index()
    main_slide = tiles.sort_values(["patient_id", "tile_index", "slide_id"], ascending=[True, False, True]) \
        .drop_duplicates("patient_id").set_index("patient_id").slide_id
    risk = _consensus_risk(preds[preds.model.isin(att.model.unique())])
    if params.slides:
        chosen = [s for s in params.slides if s in set(drawn.slide_id)]
        pid = drawn.drop_duplicates("slide_id").set_index("slide_id").patient_id
        return pd.DataFrame({"slide_id": chosen, "patient_id": [pid[s] for s in chosen], "group": "listed",
                             "risk_pct": [risk.get(pid[s], np.nan) for s in chosen]})
    risk = risk[risk.index.isin(main_slide.index)]
    if risk.empty:
        log.info("no survival predictions of a WSI model: showing the first %d slides", 2 * params.top_k)
        first = main_slide.sort_values().head(2 * params.top_k)
        return pd.DataFrame({"slide_id": first.values, "patient_id": first.index, "group": "first",
                             "risk_pct": np.nan})
    order = risk.sort_values(ascending=False, kind="stable")
    k = min(params.top_k, len(order) // 2)
    picks = [(p, "high risk") for p in order.index[:k]] + [(p, "low risk") for p in order.index[::-1][:k][::-1]]
    return pd.DataFrame({"slide_id": [main_slide[p] for p, _ in picks], "patient_id": [p for p, _ in picks],
                         "group": [g for _, g in picks], "risk_pct": [risk[p] for p, _ in picks]})


def _consensus_risk(preds: pd.DataFrame) -> pd.Series:
    """patient → mean over models of the within-fold percentile of the predicted risk (survival task)."""
    surv = preds[preds.task == "survival"].dropna(subset=["risk"]) if "risk" in preds else preds.iloc[:0]
    if surv.empty:
        return pd.Series(dtype=float)
    pct = surv.groupby(["model", "fold"]).risk.rank(pct=True)
    return pct.groupby(surv.patient_id).mean()


def tile_geometry(store: str | Path) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Level-0 tile corners, tile size (level-0 px) and level-0 (width, height) from a coords store."""
    with open_h5(store) as h:
        c = h["coords"]
        return c[:], int(c.attrs["patch_size_level0"]), (int(c.attrs["level0_width"]), int(c.attrs["level0_height"]))


def thumbnail(row: pd.Series) -> np.ndarray:
    """(h, w, 3) uint8 thumbnail with a long side of about :data:`THUMB_LONG_SIDE` px (mIF: a composite)."""
    mpp = None if pd.isna(row.get("mpp")) else float(row["mpp"])
    with open_slide(row["path"], row["modality"], mpp=mpp, slide_id=row.name) as slide:
        thumb = slide.thumbnail(max(slide.dimensions) * slide.mpp / THUMB_LONG_SIDE)
        if row["modality"] == "mif":
            return D.mif_composite(thumb, slide.channels, slide.autofluorescence)
        return thumb


class StoreIndex:
    """(mag, slide_id) → its coords store, from ``--tiles``: store paths ``…/{mag}/{slide_id}.h5``, or folders
    holding ``{mag}/{slide_id}.h5`` (the tiles folder, or an imported encoder's ``features/{encoder}``: what the
    workflow passes, so that a cohort of 100 000 slides does not put 200 000 paths on one command line)."""

    def __init__(self, paths: list[str]) -> None:
        self.files = {(Path(t).parent.name, Path(t).stem): t for t in paths if not Path(t).is_dir()}
        self.folders = [Path(t) for t in paths if Path(t).is_dir()]

    def __getitem__(self, key: tuple[str, str]) -> str:
        if key in self.files:
            return self.files[key]
        mag, slide_id = key
        for folder in self.folders:
            if (store := folder / mag / f"{slide_id}.h5").exists():
                return str(store)
        raise KeyError(f"no coords store for slide {slide_id} at {mag} in --tiles")


def run(pred_paths: list[str], sheet: str, tile_stores: list[str], params: HeatmapParams, out: str,
        export: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(export).mkdir(parents=True, exist_ok=True)
    slides = read_slides(sheet, check_files=False)
    preds, att = read_attention(pred_paths)
    unknown = sorted(set(params.slides) - set(att.slide_id))
    if unknown:
        log.warning("evaluate.heatmaps.slides: %s have no attention rows; left out", unknown)
    stores = StoreIndex(tile_stores)
    modality = att.slide_id.map(slides.modality)
    for mod in ("he", "mif"):  # H&E models on H&E slides, mIF models on mIF images
        group = att[modality == mod]
        if group.empty:
            continue
        chosen = choose_slides(preds, group, set(slides.index[slides.modality == mod]), params)
        if chosen.empty:
            log.info("no %s slide to draw (evaluate.heatmaps.slides lists none with attention)", mod)
            continue
        log.info("heatmap slides (%s): %s", mod, ", ".join(f"{r.slide_id} ({r.group})" for r in chosen.itertuples()))
        _draw(group, chosen, slides, stores, out, export)
    if att.empty:
        log.warning("no attention.parquet next to any predictions: no heatmaps")


def _draw(att: pd.DataFrame, chosen: pd.DataFrame, slides: pd.DataFrame, stores: StoreIndex,
          out: str, export: str) -> None:
    """One grid figure per model × head over the ``chosen`` slides, and one overlay per panel."""
    thumbs = {s: thumbnail(slides.loc[s]) for s in chosen.slide_id}
    small = {s: D.shrink(t) for s, t in thumbs.items()}  # the grid figure's panels are small
    geometry: dict[str, dict[str, tuple]] = {}
    for (model, head), a in att[att.slide_id.isin(chosen.slide_id)].groupby(["model", "head"], sort=True):
        columns = sorted(set(zip(a.task, a.mag, strict=True)), key=lambda tm: (tm[0], -float(tm[1].rstrip("x"))))
        panels = []
        for r in chosen.itertuples():
            row = []
            for task, mag in columns:
                w = a[(a.slide_id == r.slide_id) & (a.task == task) & (a.mag == mag)]
                if r.slide_id not in geometry.get(mag, {}):
                    geometry.setdefault(mag, {})[r.slide_id] = tile_geometry(stores[(mag, r.slide_id)])
                tiles = (w.tile_index.to_numpy(), w.weight.to_numpy(float), *geometry[mag][r.slide_id])
                name = f"{r.slide_id}__{model}__{task}__{head}__{mag}.png"
                D.export_png(thumbs[r.slide_id], D.attention_grid(thumbs[r.slide_id], *tiles), Path(export) / name)
                row.append(D.attention_grid(small[r.slide_id], *tiles))
            panels.append(row)
        path = Path(out) / HEATMAP_GRID.format(model=model, head=head)
        D.grid_figure(small, chosen, columns, panels, f"{model} — {head} attention", path)
        log.info("wrote %s (%d slides × %d panels)", path, len(chosen), len(columns))


@stage_main("pathomix.evaluate.heatmaps")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.evaluate.heatmaps", description=__doc__)
    p.add_argument("--predictions", nargs="+", required=True, help="predictions.parquet of the tile models")
    p.add_argument("--slides", required=True, help="slides.tsv (thumbnail paths)")
    p.add_argument("--tiles", nargs="+", required=True,
                   help="coords stores tiles/{mag}/{slide_id}.h5, or folders holding {mag}/{slide_id}.h5")
    p.add_argument("--params", default="{}", help="JSON of evaluate.heatmaps")
    p.add_argument("--out", required=True, help="folder of the grid figures")
    p.add_argument("--export", required=True, help="folder of the per-slide overlays")
    args = p.parse_args(argv)
    run(args.predictions, args.slides, args.tiles, HeatmapParams.from_json(args.params), args.out, args.export)
    return 0


if __name__ == "__main__":
    exit_process(main())
