"""``python -m pathomix.evaluate.gene_view``: the genes the models see, in one figure.

HVG selection summary (variance of every gene of the table after the genes stage's transform,
the kept top fraction and its threshold; kept genes per subspace out of the genes each subspace
has in the table) and the top genes per subspace by importance: the trained gene-subspace model's
gradient × input importance (``gene_importance.parquet`` of each fold and task, averaged) when
``--importance`` names those training outputs, else the variance of the log-expression over
all patients (the unsupervised criterion of the selection itself).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pathomix.cli import exit_process, stage_main  # noqa: E402
from pathomix.evaluate.png import save_figure  # noqa: E402
from pathomix.genes.hvg import GeneParams, load_gene_sets, transform  # noqa: E402
from pathomix.io.corrupt import read_parquet
from pathomix.io.sheets import read_genes  # noqa: E402
from pathomix.params import load_params  # noqa: E402
from pathomix.paths import GENE_IMPORTANCE  # noqa: E402

log = logging.getLogger("pathomix.evaluate.gene_view")
TOP_N = 15
COLOURS = {"tumour": "#c44e52", "tme": "#4c72b0", "other": "#8c8c8c"}


def gene_variances(genes: str | None, hvg: pd.DataFrame, params: GeneParams) -> pd.DataFrame:
    """gene, variance, kept: every gene of the table (transformed as the genes stage does), or only
    the kept genes when the raw table is not given."""
    kept = hvg.drop(columns="patient_id").var(axis=0, ddof=1)
    if not genes:
        return pd.DataFrame({"gene": kept.index, "variance": kept.values, "kept": True})
    x = read_genes(genes)
    x = x.loc[x.index.intersection(hvg.patient_id)]
    x = x.fillna(x.median())
    var = transform(x, params.log_transform, genes).var(axis=0, ddof=1).fillna(0.0)
    return pd.DataFrame({"gene": var.index, "variance": var.values, "kept": var.index.isin(kept.index)})


IMPORTANCE = GENE_IMPORTANCE  # written by the training stage next to checkpoint.pt


def model_importance(checkpoints: list[str]) -> tuple[pd.Series, str] | None:
    """Mean importance per gene over the ``gene_importance.parquet`` files next to ``checkpoints``
    (subspace inputs only), and the model's name; None when there are none."""
    frames = [read_parquet(Path(c).with_name(IMPORTANCE)) for c in checkpoints
              if Path(c).with_name(IMPORTANCE).exists()]
    frames = [f[f.input != "genes"] for f in frames]
    if not any(len(f) for f in frames):
        return None
    table = pd.concat(frames, ignore_index=True)
    name = Path(checkpoints[0]).parents[2].name  # models/{model}/{task}/fold{k}/checkpoint.pt
    return table.groupby("gene").importance.mean(), name


def gene_figure(var: pd.DataFrame, subspaces: pd.DataFrame, all_sets: pd.Series, path: Path,
                importance: tuple[pd.Series, str] | None = None) -> None:
    sub = subspaces.set_index("gene").subspace
    kept = var[var.kept].assign(subspace=lambda d: d.gene.map(sub).fillna("other"))
    fig = plt.figure(figsize=(12, 7.5), layout="constrained")
    axes = fig.subplot_mosaic([["hist", "bars"], ["tumour", "tme"]], height_ratios=(1, 1.4))
    positive = var.variance[var.variance > 0]
    bins = np.geomspace(positive.min(), positive.max(), 40) if len(positive) > 1 else 20
    axes["hist"].hist(var.variance[~var.kept], bins=bins, color="#bbbbbb", label=f"dropped ({(~var.kept).sum()})")
    for name, d in kept.groupby("subspace"):
        axes["hist"].hist(d.variance, bins=bins, histtype="step", lw=1.8, color=COLOURS.get(name, "k"),
                          label=f"kept, {name} ({len(d)})")
    if len(kept) < len(var):
        axes["hist"].axvline(kept.variance.min(), color="k", ls="--", lw=1, label="HVG threshold")
    axes["hist"].set_xscale("log")
    axes["hist"].set(xlabel="variance of log-expression over patients", ylabel="genes",
                     title=f"HVG selection: kept {len(kept)} of {len(var)} genes")
    axes["hist"].legend(fontsize=8)
    names = [s for s in ("tumour", "tme", "other") if s in set(kept.subspace) | set(all_sets)]
    in_table = [int((all_sets.reindex(var.gene).fillna("other") == s).sum()) for s in names]
    n_kept = [int((kept.subspace == s).sum()) for s in names]
    x = np.arange(len(names))
    axes["bars"].bar(x - 0.2, in_table, 0.4, color="#dddddd", edgecolor="k", label="genes in the table")
    axes["bars"].bar(x + 0.2, n_kept, 0.4, color=[COLOURS[s] for s in names], label="kept (HVG)")
    for i, (a, b) in enumerate(zip(in_table, n_kept, strict=True)):
        axes["bars"].text(i + 0.2, b, f"{b}/{a}", ha="center", va="bottom", fontsize=9)
    axes["bars"].set_xticks(x, names)
    axes["bars"].set(ylabel="genes", title="genes per subspace (other = in no gene set)")
    axes["bars"].legend(fontsize=8)
    score, xlabel = "variance", "variance (importance for the HVG selection)"
    if importance is not None:
        kept = kept.assign(model=kept.gene.map(importance[0]).fillna(0.0))
        score = "model"
        xlabel = f"|gradient × input| in {importance[1]} (mean over test patients, folds, tasks)"
    for name in ("tumour", "tme"):
        top = kept[kept.subspace == name].nlargest(TOP_N, score).iloc[::-1]
        ax = axes[name]
        ax.barh(top.gene, top[score], color=COLOURS[name])
        ax.set(xlabel=xlabel, title=f"top {len(top)} {name} genes")
        ax.tick_params(axis="y", labelsize=8)
        if top.empty:
            ax.text(0.5, 0.5, f"no HVG in the {name} subspace", ha="center", transform=ax.transAxes)
    fig.suptitle("Genes: highly variable gene selection and tumour / TME subspaces")
    save_figure(fig, path, dpi=90)


@stage_main("pathomix.evaluate.gene_view")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.evaluate.gene_view", description=__doc__)
    p.add_argument("--genes", help="the raw gene table (for the variance of the dropped genes)")
    p.add_argument("--hvg", required=True)
    p.add_argument("--subspaces", required=True)
    p.add_argument("--params", default="{}", help="JSON of the config's `genes_params:` subtree")
    p.add_argument("--importance", nargs="*", default=[],
                   help=f"checkpoint.pt files of a gene-subspace model; reads the {IMPORTANCE} next to each")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    params = load_params(GeneParams, args.params, where="genes_params")
    var = gene_variances(args.genes, read_parquet(args.hvg), params)
    gene_figure(var, read_parquet(args.subspaces), load_gene_sets(params.gene_sets), Path(args.out),
                model_importance(args.importance))
    log.info("gene view %s: %d of %d genes kept", args.out, int(var.kept.sum()), len(var))
    return 0


if __name__ == "__main__":
    exit_process(main())
