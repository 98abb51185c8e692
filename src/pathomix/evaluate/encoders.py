"""Which encoder serves which task best (runs with several encoders, ``features.encoders``/``features.import``):
one row per model × task × headline metric, one column per encoder, each cell the pooled out-of-fold value
[95 % CI] and the fold mean ± sd; the best encoder of each row is marked. Written as CSV (long, numeric),
as an HTML table and as a figure (per task, the pooled AUC / C-index with its CI, model by model, a bar per
encoder). Models that read no features (encoder empty) are left out: they do not depend on the encoder.

A trained name is ``{model}`` for the first encoder and ``{model}@{encoder}`` for the others
(:mod:`pathomix.catalog.variants`); here they are grouped back by ``model``.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pathomix.catalog.variants import split_instance  # noqa: E402
from pathomix.evaluate.comparison import _CSS, TIE, metric_label  # noqa: E402
from pathomix.evaluate.png import save_figure  # noqa: E402
from pathomix.io.atomic import atomic_path  # noqa: E402

HEADLINE_FIGURE = ("auc", "c_index")  # the figure's metric per task kind


def encoder_table(summary: pd.DataFrame, headline: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """summary (model, encoder, task, metric, mean, std, value, ci_low, ci_high) → long table with ``base``
    (the model without its encoder suffix) and ``best`` (the best encoder of each base × task × metric:
    highest pooled value, else fold mean); feature-reading models only."""
    d = summary[(summary.encoder.fillna("") != "") & summary.metric.isin(headline)].copy()
    d["base"] = [split_instance(m)[0] for m in d.model]
    d["key"] = d["value"].where(d["value"].notna(), d["mean"])
    top = d.groupby(["base", "task", "metric"]).key.transform("max")
    d["best"] = d.key.notna() & (d.key >= top - TIE) & (d.groupby(["base", "task", "metric"]).key.transform("size") > 1)
    order = {m: i for i, m in enumerate(headline)}
    d["order"] = d.metric.map(order)
    cols = ["base", "encoder", "task", "metric", "model", "mean", "std", "value", "ci_low", "ci_high", "best"]
    return d.sort_values(["task", "order", "base", "encoder"])[cols].rename(columns={"base": "model_base"})


def _fmt(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f", na_rep="n/a")


def write_html(table: pd.DataFrame, path: str | Path, n_bootstrap: int) -> None:
    """model × task × metric rows, encoder columns; the best encoder of a row in bold on green."""
    encoders = sorted(table.encoder.unique())
    cells = table.set_index(["model_base", "task", "metric", "encoder"])
    rows = table[["model_base", "task", "metric"]].drop_duplicates()
    body = []
    for r in rows.itertuples(index=False):
        tds = []
        for e in encoders:
            key = (r.model_base, r.task, r.metric, e)
            if key not in cells.index:
                tds.append("<td>–</td>")
                continue
            c = cells.loc[key]
            pooled = f"{_fmt(c.value)} [{_fmt(c.ci_low)}, {_fmt(c.ci_high)}]"
            text = f"<b>{pooled}</b>" if c.best else pooled
            tds.append(f"<td{' class=best' if c.best else ''}>{text}<br><span class='pooled'>"
                       f"{_fmt(c['mean'])} ± {_fmt(c['std'])}</span></td>")
        body.append(f"<tr><td class='model'>{html.escape(r.model_base)}</td><td>{html.escape(r.task)}</td>"
                    f"<td>{html.escape(metric_label(r.task, r.metric))}</td>{''.join(tds)}</tr>")
    head = "".join(f"<th>{html.escape(e)}</th>" for e in encoders)
    caption = (f"Top line: pooled out-of-fold value [95 % CI from {n_bootstrap} patient-level bootstrap resamples]; "
               "second line: mean ± sd over folds. Bold on green: the best encoder of the row (pooled value). "
               "Models that read no patch features are not listed (they do not depend on the encoder).")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Encoders</title><style>{_CSS}</style></head>"
            f"<body><h3>Encoder × model × task</h3><table><caption>{caption}</caption><thead><tr><th>model</th>"
            f"<th>task</th><th>metric</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>")
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")


def encoder_figure(table: pd.DataFrame, path: str | Path) -> None:
    """Per task, grouped bars: models on the x axis, one bar per encoder, pooled AUC or C-index with 95 % CI."""
    d = table[table.metric.isin(HEADLINE_FIGURE)]
    tasks = sorted(d.task.unique())
    encoders = sorted(table.encoder.unique())
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5 * max(1, len(tasks)), 3.8), squeeze=False)
    width = 0.8 / max(1, len(encoders))
    colours = plt.get_cmap("tab10")
    for ax, task in zip(axes[0], tasks, strict=False):
        t = d[d.task == task]
        models = sorted(t.model_base.unique())
        x = np.arange(len(models))
        for i, e in enumerate(encoders):
            te = t[t.encoder == e].set_index("model_base").reindex(models)
            err = np.vstack([te.value - te.ci_low, te.ci_high - te.value]).clip(min=0)
            ax.bar(x + (i - (len(encoders) - 1) / 2) * width, te.value.fillna(0), width, yerr=np.nan_to_num(err),
                   capsize=3, label=e, color=colours(i % 10))
        ax.set_xticks(x, models, rotation=30)
        ax.axhline(0.5, color="k", ls=":", lw=1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: {t.metric.iloc[0]} (pooled, 95 % CI)")
    axes[0][0].legend(title="encoder", fontsize=8)
    save_figure(fig, Path(path), dpi=100)
