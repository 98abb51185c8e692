"""Provenance record of a run: what produced these results (torch-free, fast to import).

``record()`` gathers the run date, the git commit of the workflow (when it is a git checkout),
the versions of the packages that shape the numbers, the encoder and its weights hash (from the
feature manifest's ``encoder_weights_sha256``; ``random-init`` when no pretrained weights were
used) and the config. ``python -m pathomix.provenance`` writes it as JSON and as a small HTML
page for the report; any stage may call :func:`write_json` to leave one next to its artifacts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import logging
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pathomix.cli import exit_process, stage_main
from pathomix.io.atomic import atomic_path
from pathomix.io.corrupt import read_parquet

log = logging.getLogger("pathomix.provenance")
RANDOM_INIT = "random-init"
PACKAGES = ("pathomix", "torch", "torchvision", "timm", "openslide-python", "openslide-bin", "tifffile",
            "h5py", "snakemake", "numpy", "pandas", "scikit-learn", "scikit-survival", "lifelines", "matplotlib")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed distribution versions (read from metadata: nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state(path: str | Path) -> dict[str, Any]:
    """Commit and uncommitted-changes flag of the git checkout holding ``path`` (None when not one)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True,
                              timeout=20).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError) as err:
        log.info("%s is not a git checkout (or git is missing): %s", path, str(err).strip()[:200])
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _manifests(manifests: Sequence[str | Path]) -> pd.DataFrame | None:
    """The feature manifests of the run (one per encoder, extracted or imported) as one table."""
    tables = [read_parquet(m) for m in manifests]
    return pd.concat(tables, ignore_index=True) if tables else None


def encoder_weights(manifests: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One entry per (encoder, weights hash) of the feature manifests, with the number of slides."""
    m = _manifests(manifests)
    if m is None:
        return []
    rows = m.groupby(["encoder", "encoder_weights_sha256"]).slide_id.nunique().reset_index()
    return [{"encoder": r.encoder, "weights_sha256": r.encoder_weights_sha256, "n_slides": int(r.slide_id),
             "random_init": r.encoder_weights_sha256 == RANDOM_INIT} for r in rows.itertuples()]


def skipped_tiles(manifests: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Feature stores that left out unreadable tiles (``features.on_bad_tile: skip``)."""
    m = _manifests(manifests)
    if m is None or "n_skipped" not in m.columns:
        return []
    m = m[m.n_skipped > 0]
    return [{"encoder": r.encoder, "slide_id": r.slide_id, "mag": r.mag, "n_skipped": int(r.n_skipped),
             "n_tiles": int(r.n_tiles)} for r in m.itertuples()]


def record(config: dict[str, Any], workflow_dir: str | Path, manifests: Sequence[str | Path] = ()) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(workflow_dir),
        "workflow_dir": str(Path(workflow_dir).resolve()),
        "packages": package_versions(),
        "encoders": encoder_weights(manifests),
        "skipped_tiles": skipped_tiles(manifests),
        "config": config,
    }


def write_json(rec: dict[str, Any], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rec, indent=2, sort_keys=True, default=str), encoding="utf-8")


_CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#222;font-size:14px}
table{border-collapse:collapse;margin-bottom:14px}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f2f4f7}.warn{color:#c00;font-weight:700}pre{background:#f6f8fa;padding:10px;font-size:12px}"""


def _weights_cell(e: dict[str, Any]) -> str:
    if e["random_init"]:
        return ('<span class="warn">RANDOM-INIT: not pretrained — features are random projections, '
                "so histology results do not reflect a pathology encoder</span>")
    return f"<code>{html.escape(str(e['weights_sha256']))}</code>"


def to_html(rec: dict[str, Any]) -> str:
    g = rec["git"]
    commit = "not a git checkout" if not g["commit"] else html.escape(g["commit"]) + (
        ' <span class="warn">(uncommitted changes)</span>' if g["dirty"] else "")
    enc = "".join(f"<tr><td>{html.escape(e['encoder'])}</td><td>{_weights_cell(e)}</td><td>{e['n_slides']}</td></tr>"
                  for e in rec["encoders"]) or "<tr><td colspan='3'>no histology features (genes only)</td></tr>"
    skipped = "".join(f"<tr><td>{html.escape(str(r['slide_id']))}</td><td>{r['mag']}</td>"
                      f"<td class='warn'>{r['n_skipped']}</td><td>{r['n_tiles']}</td></tr>"
                      for r in rec.get("skipped_tiles", [])) or "<tr><td colspan='4'>none</td></tr>"
    pkgs = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rec["packages"].items())
    cfg = html.escape(yaml.safe_dump(rec["config"], sort_keys=False, allow_unicode=True))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Provenance</title><style>{_CSS}</style>"
            "</head><body><h3>Provenance</h3><table>"
            f"<tr><th>run date (UTC)</th><td>{html.escape(rec['date'])}</td></tr>"
            f"<tr><th>git commit</th><td>{commit}</td></tr><tr><th>workflow</th>"
            f"<td>{html.escape(rec['workflow_dir'])}</td></tr></table>"
            f"<h4>Encoder weights</h4><table><tr><th>encoder</th><th>weights sha256</th><th>slides</th></tr>{enc}"
            "</table><h4>Tiles left out as unreadable (features.on_bad_tile: skip; coordinates in each store's "
            "<code>skipped_coords</code>)</h4><table><tr><th>slide</th><th>mag</th><th>skipped</th><th>kept</th></tr>"
            f"{skipped}</table><h4>Package versions</h4><table>{pkgs}</table><h4>Config used</h4><pre>{cfg}</pre>"
            "</body></html>")


@stage_main("pathomix.provenance")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.provenance", description=__doc__)
    p.add_argument("--config-json", required=True, help="the run's config as JSON")
    p.add_argument("--workflow-dir", required=True)
    p.add_argument("--manifest", nargs="*", default=[],
                   help="features/{encoder}/manifest.parquet, one per encoder (none for a genes-only cohort)")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-html", required=True)
    args = p.parse_args(argv)
    rec = record(json.loads(args.config_json), args.workflow_dir, args.manifest)
    write_json(rec, args.out_json)
    with atomic_path(args.out_html) as tmp:
        tmp.write_text(to_html(rec), encoding="utf-8")
    for e in rec["encoders"]:
        (log.warning if e["random_init"] else log.info)("encoder %s: weights %s", e["encoder"], e["weights_sha256"])
    log.info("provenance: commit %s, pathomix %s", rec["git"]["commit"], rec["packages"]["pathomix"])
    return 0


if __name__ == "__main__":
    exit_process(main())
