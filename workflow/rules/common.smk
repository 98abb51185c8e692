# Helpers shared by the rules: sheets, paths, code hashes, per-rule config subtrees.
import functools
import hashlib
import json
import re
import shlex
import shutil
import zlib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from snakemake.exceptions import WorkflowError

import pathomix
from pathomix import paths as P
from pathomix.config import validate_table
from pathomix.catalog import (
    is_joint,
    job_params,
    missing_cohort_inputs,
    model_inputs,
    model_tasks,
    resolve,
    slide_modality,
)
from pathomix.io.sheets import read_slides

RESULTS = config["results_dir"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
MAGS = list(config["tiling"]["magnifications"])
ENCODER = config["features"]["encoder"]
SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"
with open(SCHEMAS / "slides.schema.yaml") as _f:
    SLIDES_SCHEMA = yaml.safe_load(_f)
SRC = Path(pathomix.__file__).parent  # the package the jobs will import
VARIANTS = config["train"].get("variants") or {}
SLIDE_BATCHES = config.get("slide_batches") or {}
for _name in config["train"]["models"]:  # fail at parse time, naming the model and the fix
    try:
        resolve(_name, VARIANTS)
    except KeyError as err:
        raise WorkflowError(f"config train.models: {err.args[0]}") from None
# (model, task) pairs that train: every model on train.tasks, a variant on its own `tasks` if it lists them
MODEL_TASKS = [(m, t) for m in config["train"]["models"] for t in model_tasks(m, config["train"])]
# GPU rules claim resources gpu=1 (profiles/default caps it at 1) only where a GPU exists.
GPU = int(shutil.which("nvidia-smi") is not None and config["features"]["device"] != "cpu")


onstart:
    # Snakemake adds profiles/default to every run started here unless told `--workflow-profile none`; on a
    # cluster its run-wide gpu=1 would let one GPU job run at a time, and its cores/keep-going would win too.
    if workflow.non_local_exec and dict(workflow.global_resources).get("gpu") is not None:
        raise WorkflowError(
            "this cluster run has a run-wide `gpu` limit (from profiles/default, the settings for local runs, "
            "which Snakemake adds unless told otherwise): only that many GPU jobs would run at once. "
            "Run `snakemake --profile profiles/slurm --workflow-profile none` (README: Running on a SLURM cluster); "
            "to cap GPU use on a cluster, use `jobs:` or a SLURM QOS.")


def code_hash(*stages):
    """sha256 of a stage's source: a param, so editing src/pathomix/<stage> reruns that stage."""
    h = hashlib.sha256()
    for stage in stages:
        for f in sorted((SRC / stage).rglob("*.py")):
            h.update(f.relative_to(SRC).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def subtree(key, drop=()):
    """JSON of one config subtree (sorted), minus keys that must not trigger reruns."""
    return json.dumps({k: v for k, v in config[key].items() if k not in drop}, sort_keys=True)


def demo_pending():
    """True when the sheet is the demo's own and must first be generated (checkpoint)."""
    demo = config.get("demo", {})
    sheet = config.get("slides")
    return bool(demo.get("enabled")) and sheet and Path(sheet).parent == Path(demo.get("dir", ""))


@functools.lru_cache(maxsize=4)
def _read_sheet(path, mtime):
    df = read_slides(path, check_files=False)
    try:
        validate_table(df, SLIDES_SCHEMA, f"slides sheet {path}")
    except ValueError as err:
        raise WorkflowError(str(err)) from None
    # plain dicts: the scheduler re-evaluates params often, pandas lookups would cost seconds
    rows = {
        r["slide_id"]: {**r, "mpp_flag": "" if pd.isna(r["mpp"]) else f"--mpp {r['mpp']}"}
        for r in df.to_dict("records")
    }
    return df, rows


def _sheet():
    if not config.get("slides"):
        empty = pd.DataFrame(columns=["slide_id", "patient_id", "path", "modality", "mpp", "cohort"])
        return empty, {}
    if demo_pending():
        checkpoints.demo.get()
    return _read_sheet(config["slides"], Path(config["slides"]).stat().st_mtime)


def sheet_modalities():
    """Slide modalities of the cohort, known at parse time (the demo's from its config), or None."""
    if not config.get("slides"):
        return None
    if demo_pending():
        return {"he"} | ({"mif"} if config.get("demo", {}).get("n_mif", 0) else set())
    if not Path(config["slides"]).exists():
        return None  # the jobs that read the sheet report it
    return set(_read_sheet(config["slides"], Path(config["slides"]).stat().st_mtime)[0].modality)


# e.g. abmil with slides: null, fluoroformer on a cohort without mIF images: fail at parse time with the fix
if missing := missing_cohort_inputs(config["train"]["models"], config, sheet_modalities()):
    raise WorkflowError("\n".join(missing))


def slides():
    """The slide sheet as a DataFrame (empty for a genes-only cohort)."""
    return _sheet()[0]


@functools.lru_cache(maxsize=4)
def _batches(path, mtime, size, above):
    """→ (batch → its slides, slide → its batch); both empty below the threshold."""
    rows = _read_sheet(path, mtime)[1]
    if not size or len(rows) <= above:
        return {}, {}
    n = -(-len(rows) // size)
    members, batch_of = {}, {}
    for sid, r in rows.items():  # a slide keeps its batch while the number of batches stays
        batch_of[sid] = zlib.crc32(sid.encode()) % n
        members.setdefault(batch_of[sid], []).append({
            "slide_id": sid, "path": r["path"], "modality": r["modality"],
            "mpp": None if pd.isna(r["mpp"]) else float(r["mpp"])})
    return members, batch_of


def _batch_tables():
    if not config.get("slides"):
        return {}, {}
    _sheet()  # the demo's sheet is generated first
    return _batches(config["slides"], Path(config["slides"]).stat().st_mtime, SLIDE_BATCHES.get("size", 0),
                    SLIDE_BATCHES.get("above", 500))


def batch_map():
    """batch → its slides (dicts for `python -m pathomix.batch`); {} when every slide has its own jobs
    (cohorts of at most slide_batches.above slides, or slide_batches.size 0)."""
    return _batch_tables()[0]


def batch_of(slide_id):
    return _batch_tables()[1][slide_id]


def batch_channel_sheet(wildcards):
    """The mIF channel sheet as an input of a batch job with an mIF slide, else nothing."""
    sheet = config.get("mif_channels")
    return [sheet] if sheet and any(m["modality"] == "mif" for m in batch_map()[int(wildcards.batch)]) else []


def tile_dependencies(slide_ids):
    """What a job reading the tile stores of `slide_ids` waits for: the stores, or their batches' markers."""
    if batch_map():
        return [str(P.tile_batch(RESULTS, b)) for b in sorted({batch_of(s) for s in slide_ids})]
    return [str(P.tiles(RESULTS, m, s)) for s in slide_ids for m in MAGS]


def tile_store_paths(slide_ids):
    """The tile stores of `slide_ids` (per-slide files in either mode)."""
    return [str(P.tiles(RESULTS, m, s)) for s in slide_ids for m in MAGS]


def slide_row(wildcards):
    """One slide as a dict: slide_id, patient_id, path, modality, mpp, mpp_flag, cohort."""
    return _sheet()[1][wildcards.slide_id]


def channel_sheet(wildcards):
    """The mIF channel sheet as an input of mIF jobs (so editing it reruns them), else nothing."""
    sheet = config.get("mif_channels")
    return [sheet] if sheet and slide_row(wildcards)["modality"] == "mif" else []


def channels_flag(wildcards, input):
    return f"--channels-sheet {shlex.quote(input.channels[0])}" if input.channels else ""


def feature_stores(wildcards=None):
    """The feature stores, or in batch mode the extraction batches' markers (which list them)."""
    if batches := batch_map():
        return [str(P.feature_batch(RESULTS, ENCODER, b)) for b in sorted(batches)]
    df = slides()
    return [str(P.features(RESULTS, ENCODER, m, s)) for s in df.slide_id for m in MAGS]


def all_targets(wildcards):
    targets = [P.metrics(RESULTS), f"{RESULTS}/eval/summary.csv", *report_targets()]
    if batches := batch_map():  # the batch jobs write the QC images next to the stores
        targets += [str(P.tile_batch(RESULTS, b)) for b in sorted(batches)]
    elif config.get("slides"):
        targets += [str(P.tile_qc(RESULTS, m, s)) for s in slides().slide_id for m in MAGS]
    return targets

