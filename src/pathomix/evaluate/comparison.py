"""The comparison table of the papers: rows = models (ablations included), columns = task × headline
metric, cells "mean ± sd over folds" with the pooled out-of-fold value [95 % CI]; best per column marked.

Written as CSV (for papers: best marked with a trailing ``*``) and as a small standalone HTML page
(best in bold) that Snakemake's report shows inline.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from pathomix.io.atomic import atomic_path

DEFAULT_HEADLINE = ("auc", "ap", "balanced_accuracy", "f1", "kappa", "c_index", "td_auc")
LABELS = {"accuracy": "Accuracy", "balanced_accuracy": "Bal. accuracy", "auc": "AUC (macro OvR)",
          "ap": "AP (macro)", "f1": "F1 (macro)", "kappa": "Cohen's κ", "c_index": "C-index",
          "td_auc": "td-AUC (mean)"}
TIE = 1e-9
NA = "n/a"  # a metric undefined on these patients (one class, no event, no comparable pair; reason in the log)


def metric_label(task: str, metric: str) -> str:
    label = LABELS.get(metric, metric)
    return f"{label}, quadratic" if metric == "kappa" and task == "grading" else label


def _fmt(x: float, digits: int = 3) -> str:
    return NA if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def comparison_table(summary: pd.DataFrame, headline: tuple[str, ...] | list[str] = DEFAULT_HEADLINE) -> pd.DataFrame:
    """One row per (model, task, metric) of the headline metrics, with the formatted cell texts and
    ``best`` (True for the best model of each task × metric: highest fold mean, else pooled value)."""
    d = summary[summary.metric.isin(headline)].copy()
    d["order"] = d.metric.map({m: i for i, m in enumerate(headline)})
    d["key"] = d["mean"].where(d["mean"].notna(), d["value"])
    top = d.groupby(["task", "metric"]).key.transform("max")
    d["best"] = d.key.notna() & (d.key >= top - TIE)
    d["fold_text"] = [f"{_fmt(m)} ± {_fmt(s)}" if math.isfinite(m) else NA for m, s in zip(d["mean"], d["std"],
                                                                                          strict=True)]
    d["pooled_text"] = [f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(v) else NA
                        for v, lo, hi in zip(d.value, d.ci_low, d.ci_high, strict=True)]
    return d.sort_values(["task", "order", "model"]).drop(columns=["order", "key"]).reset_index(drop=True)


def _columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table.task, table.metric, strict=True)))


def write_csv(table: pd.DataFrame, path: str) -> None:
    """Wide CSV: ``model``, ``encoder`` (of the patch features it read; empty for models that read none), then
    one column per "task: metric" with "mean ± sd | pooled [CI]" (``*`` = best)."""
    cells = table.assign(
        column=[f"{t}: {metric_label(t, m)}" for t, m in zip(table.task, table.metric, strict=True)],
        text=[f"{a} | {b}{' *' if best else ''}" for a, b, best in
              zip(table.fold_text, table.pooled_text, table.best, strict=True)])
    order = [f"{t}: {metric_label(t, m)}" for t, m in _columns(table)]
    index = ["model", "encoder"] if "encoder" in cells.columns else ["model"]
    wide = cells.pivot_table(index=index, columns="column", values="text", aggfunc="first").reindex(
        columns=order).fillna("")
    with atomic_path(path) as tmp:
        wide.reset_index().to_csv(tmp, index=False)


_CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:5px 9px;text-align:center}
th{background:#f2f4f7}td.model{text-align:left;font-weight:600}.pooled{color:#666;font-size:11px}
td.best{background:#e8f5e9}caption{caption-side:bottom;text-align:left;color:#555;font-size:12px;padding-top:8px}"""


def to_html(table: pd.DataFrame, n_bootstrap: int, title: str = "Model comparison",
            n_patients: dict[str, int] | None = None) -> str:
    """A standalone HTML page with the table (best per column in bold, on green); ``n_patients``:
    task → number of test patients, shown in the task's header."""
    cols = _columns(table)
    tasks = list(dict.fromkeys(t for t, _ in cols))
    n = n_patients or {}
    head1 = "".join(f'<th colspan="{sum(t == task for t, _ in cols)}">{html.escape(task)}'
                    + (f" (n = {n[task]})" if task in n else "") + "</th>" for task in tasks)
    head2 = "".join(f"<th>{html.escape(metric_label(t, m))}</th>" for t, m in cols)
    cells = table.set_index(["model", "task", "metric"])
    encoders = (dict(zip(table.model, table.encoder.fillna(""), strict=True)) if "encoder" in table.columns
                else None)
    body = []
    for model in sorted(table.model.unique()):
        tds = []
        for t, m in cols:
            if (model, t, m) not in cells.index:
                tds.append("<td>–</td>")
                continue
            c = cells.loc[(model, t, m)]
            fold = f"<b>{html.escape(c.fold_text)}</b>" if c.best else html.escape(c.fold_text)
            tds.append(f'<td{" class=best" if c.best else ""}>{fold}<br>'
                       f'<span class="pooled">{html.escape(c.pooled_text)}</span></td>')
        enc = f"<td>{html.escape(encoders[model])}</td>" if encoders is not None else ""
        body.append(f'<tr><td class="model">{html.escape(model)}</td>{enc}{"".join(tds)}</tr>')
    caption = (f"Top line: mean ± sd over folds (test patients of each fold). Second line: pooled out-of-fold "
               f"value [95 % CI from {n_bootstrap} patient-level bootstrap resamples]. Bold on green: best model "
               "per column (highest fold mean; the pooled value where no fold could be scored). "
               "n/a: not computable on these patients (e.g. one class only, no event or too few events, no "
               "comparable pair; the evaluate log gives the reason); –: not run.")
    enc_head = "<th rowspan='2'>encoder</th>" if encoders is not None else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h3>{html.escape(title)}</h3><table>"
            f"<caption>{caption}</caption><thead><tr><th rowspan='2'>model</th>{enc_head}{head1}</tr>"
            f"<tr>{head2}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></body></html>")


def write_html(table: pd.DataFrame, path: str, n_bootstrap: int, title: str = "Model comparison",
               n_patients: dict[str, int] | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(to_html(table, n_bootstrap, title, n_patients), encoding="utf-8")
