# Helpers shared by the rules: sheets, paths, code hashes, per-rule config subtrees, resources, and the
# target lists. The other rule files call only what is defined here (and their own helpers), never each other.
import ast
import functools
import hashlib
import json
import os
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from snakemake.exceptions import WorkflowError

import pathomix
from pathomix import catalog
from pathomix import paths as P
from pathomix.batch import policy
from pathomix.config import validate_table
from pathomix.devices import count_gpus
from pathomix.evaluate import layout as L
from pathomix.catalog import (
    is_joint,
    model_instances,
    reads_features,
    selection_instances,
    split_instance,
    selection_tasks,
    selections,
    job_params,
    missing_cohort_inputs,
    model_inputs,
    model_tasks,
    resolve,
    slide_modality,
)
from pathomix.errors import PathomixInputError
from pathomix.io.imported import parse_imports, plan
from pathomix.io.sheets import read_slides
from pathomix.tasks import TASKS

RESULTS = config["results_dir"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
MAGS = list(config["tiling"]["magnifications"])
# Encoders of the run (README: Several encoders in one run): `features.encoders` (a list, [] = extract none)
# wins over `features.encoder` (one name, used when `encoders` is absent or null); the names of
# `features.import` follow (stores users already have; a name in both lists is imported, not extracted).
# The first is the primary encoder: its models keep their plain names, the heatmaps draw them.
try:
    IMPORTS = parse_imports(config["features"].get("import"))
except PathomixInputError as err:
    raise WorkflowError(str(err)) from None
_listed = config["features"].get("encoders")
ENCODERS = list(dict.fromkeys([*(_listed if _listed is not None else [config["features"]["encoder"]]), *IMPORTS]))
EXTRACT_ENCODERS = [e for e in ENCODERS if e not in IMPORTS]  # extracted by pathomix (rule extract)
ENCODER = ENCODERS[0] if ENCODERS else config["features"]["encoder"]
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
# trained names: a model that reads patch features once per encoder ({model}, {model}@{encoder}), others once
# imported stores are H&E: a model that reads mIF stores trains on the extracted encoders only
MODEL_INSTANCES = [
    m
    for m in model_instances(config["train"]["models"], VARIANTS, ENCODERS)
    if not (split_instance(m)[1] in IMPORTS and model_inputs(m, VARIANTS)["mif"])
]
if not ENCODERS and (_feat := [m for m in config["train"]["models"] if reads_features(m, VARIANTS)]):
    raise WorkflowError(
        f"train.models {_feat} read patch features, but features.encoders is [] and features.import is empty; "
        "name an encoder in features.encoders (or features.encoder with encoders: null) or import stores"
    )
if ENCODER in IMPORTS and (_mif := [m for m in config["train"]["models"] if model_inputs(m, VARIANTS)["mif"]]):
    raise WorkflowError(
        f"train.models {_mif} read mIF feature stores, but the first encoder {ENCODER} is imported "
        "(features.import: H&E stores); list an extracted encoder first in features.encoders or remove them"
    )
# (model, task) pairs that train: every model on train.tasks, a variant on its own `tasks` if it lists them
MODEL_TASKS = [(m, t) for m in MODEL_INSTANCES for t in model_tasks(m, config["train"])]
try:  # train.select: name → candidates (every encoder's instance); per task and fold the best on validation
    SELECTIONS = {s: selection_instances(c, VARIANTS, ENCODERS) for s, c in selections(config["train"]).items()}
except KeyError as err:
    raise WorkflowError(f"config {err.args[0]}") from None
for _name, _cands in SELECTIONS.items():
    if _untrained := [c for c in _cands if c not in MODEL_INSTANCES and split_instance(c)[1] is not None]:
        if any(split_instance(c)[1] not in ENCODERS for c in _untrained):
            raise WorkflowError(
                f"config train.select.{_name}: {_untrained} name no encoder of this run (features.encoders, "
                f"features.import: {ENCODERS})"
            )
        SELECTIONS[_name] = tuple(c for c in _cands if c not in _untrained)  # mIF models on imported stores
SELECT_TASKS = [(s, t) for s, cands in SELECTIONS.items() for t in selection_tasks(cands, config["train"])]
EVAL_MODEL_TASKS = MODEL_TASKS + SELECT_TASKS  # what evaluation and the report show: models and selections
FOLDS = range(config["splits"]["n_folds"])
# report categories: the number fixes their order in the report's menu
CATEGORY = {
    "comparison": "1. Model comparison",
    "roc": "2. Discrimination",
    "km": "2. Discrimination",
    "calibration": "3. Calibration",
    "training": "4. Training curves",
    "heatmaps": "5. Slide heatmaps",
    "genes": "6. Genes",
    "provenance": "7. Provenance",
    "cohorts": "8. External cohorts",
}


# ---- resources --------------------------------------------------------------------------------------
def site_setting(name):
    """A site setting of a cluster profile, or None. Profiles pass them as default resources
    (profiles/slurm: `default-resources: gpu_partition`), the only profile values the Snakefile sees at
    parse time: a profile's `config:` is replaced by any --config on the command line, and Snakemake
    names the executor only after parsing (workflow.non_local_exec is False here, and in every dry run)."""
    defaults = workflow.resource_settings.default_resources
    res = defaults.get(name) if defaults is not None else None
    if res is None:
        return None
    raw = getattr(res, "raw", None)  # a profile's value (an expression); Resource.value would evaluate it
    try:
        return ast.literal_eval(raw) if isinstance(raw, str) else raw
    except (ValueError, SyntaxError):  # a bare name such as gpu or <gpu-partition>
        return raw


GPU_PARTITION = site_setting("gpu_partition")
CLUSTER = GPU_PARTITION is not None  # planned for a cluster whose profile names its GPU partition


def local_gpus():
    """The GPUs local jobs share: config `gpus` (a number), else those of this node (`auto`: nvidia-smi -L,
    CUDA_VISIBLE_DEVICES or PATHOMIX_GPUS; pathomix.devices.count_gpus); 0 with features.device: cpu."""
    if config["features"]["device"] == "cpu":
        return 0
    wanted = config.get("gpus", "auto")
    return count_gpus() if wanted == "auto" else int(wanted)


GPUS = 0 if CLUSTER else local_gpus()
# GPU rules claim resources gpu=1: on a cluster always, locally only where a GPU exists. Locally the run-wide
# `gpu` resource (unless --resources or a profile sets it) is the GPUs there are, so that many GPU jobs run at
# once, each pinned to its own device by pathomix.devices.pin_gpu (Snakemake names no slot).
GPU = int(CLUSTER or GPUS > 0)
if not CLUSTER and workflow.global_resources.get("gpu") is None:
    workflow.register_resource("gpu", GPUS)
# a batch job with extraction tiles in a background process while it encodes (slide_batches.overlap)
OVERLAP = bool(GPU) if SLIDE_BATCHES.get("overlap", "auto") == "auto" else bool(SLIDE_BATCHES["overlap"])
# Resource classes (mem_mb and runtime in minutes are doubled on a retry, attempt 2). cpus is the threads
# of a job on a cluster; locally each rule keeps its own threads (sized for the machine).
RESOURCE_CLASSES = {
    "light": {"gpu": 0, "cpus": 1, "mem_mb": 2000, "runtime": 10},  # tables, sheets, reports
    "cpu": {"gpu": 0, "cpus": 1, "mem_mb": 4000, "runtime": 30},
    "gpu": {"gpu": 1, "cpus": 4, "mem_mb": 16000, "runtime": 60},
    "gpu_long": {"gpu": 1, "cpus": 4, "mem_mb": 16000, "runtime": 90},
    "gpu_io": {"gpu": 1, "cpus": 8, "mem_mb": 32000, "runtime": 15},  # feature extraction: tile-decoding workers
}


def resource_class(cls, w=None):
    """A class as a dict: `cls` a name in RESOURCE_CLASSES, a dict of the same keys (such as
    pathomix.catalog.resources_of gives), or a function wildcards → either."""
    cls = cls(w) if callable(cls) else cls
    return RESOURCE_CLASSES[cls] if isinstance(cls, str) else cls


def class_resources(cls, **override):
    """`resources:` of a rule of class `cls` (see resource_class); `override` replaces mem_mb or runtime.
    mem_mb and runtime double on a retry (attempt 2). Rules that may need a GPU (a GPU class, or a class
    that depends on the wildcards) get gpu=GPU or 0 and, on a cluster, slurm_partition (the profile's
    gpu_partition for GPU jobs, its slurm_partition otherwise) and cpus_per_gpu = the job's threads."""

    def get(key):
        return lambda w: override.get(key) or resource_class(cls, w)[key]

    mem, runtime, gpu = get("mem_mb"), get("runtime"), get("gpu")
    res = {"mem_mb": lambda w, attempt: mem(w) * attempt, "runtime": lambda w, attempt: runtime(w) * attempt}
    if callable(cls) or resource_class(cls)["gpu"]:
        # locally every such job claims the GPU there is (a CPU-class model such as snn runs on it too,
        # device: auto), so GPU jobs never share it; on a cluster only GPU-class jobs get one
        res["gpu"] = lambda w: GPU if gpu(w) or not CLUSTER else 0
        if CLUSTER:
            cpu_partition = site_setting("slurm_partition")
            res["slurm_partition"] = lambda w: GPU_PARTITION if gpu(w) else cpu_partition
            res["cpus_per_gpu"] = lambda w, threads: threads if gpu(w) else None
    return res


def class_threads(cls, local):
    """The threads of a job of class `cls`: `local` (sized for this machine) unless on a cluster, where it
    is the class's cpus (capped by the profile's `cores`)."""
    if not CLUSTER:
        return local
    return (lambda w: resource_class(cls, w)["cpus"]) if callable(cls) else resource_class(cls)["cpus"]


onstart:
    # Snakemake adds profiles/default to every run started here unless told `--workflow-profile none`; on a
    # cluster its run-wide gpu=1 would let one GPU job run at a time, and its cores/keep-going would win too.
    if workflow.non_local_exec and dict(workflow.global_resources).get("gpu") is not None:
        raise WorkflowError(
            "this cluster run has a run-wide `gpu` limit (from profiles/default, the settings for local runs, "
            "which Snakemake adds unless told otherwise): only that many GPU jobs would run at once. "
            "Run `snakemake --profile profiles/slurm --workflow-profile none` (README: Running on a SLURM cluster); "
            "to cap GPU use on a cluster, use `jobs:` or a SLURM QOS."
        )


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


def _mpp(mpp):
    """A sheet's mpp as a float or None (mpp_value) and as the flag of the per-slide jobs (mpp_flag)."""
    missing = mpp is None or mpp != mpp  # NaN
    return {"mpp_value": None if missing else float(mpp), "mpp_flag": "" if missing else f"--mpp {mpp}"}


@functools.lru_cache(maxsize=4)
def _read_sheet(path, mtime):
    df = read_slides(path, check_files=False, unique_files=True)
    try:
        validate_table(df, SLIDES_SCHEMA, f"slides sheet {path}")
    except ValueError as err:
        raise WorkflowError(str(err)) from None
    # plain dicts: the scheduler re-evaluates params often, pandas lookups would cost seconds
    rows = {r["slide_id"]: {**r, **_mpp(r["mpp"])} for r in df.to_dict("records")}
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


def clinical_columns():
    """The clinical sheet's columns, known at parse time (None for the demo before it is generated)."""
    sheet = config.get("clinical")
    if not sheet or not Path(sheet).exists():
        return None
    sep = "," if str(sheet).endswith(".csv") else "\t"
    return {str(c).strip() for c in pd.read_csv(sheet, sep=sep, nrows=0).columns}


# e.g. abmil with slides: null, fluoroformer on a cohort without mIF images, a covariate the clinical sheet
# lacks: fail at parse time with the fix
if missing := missing_cohort_inputs(config["train"]["models"], config, sheet_modalities(), clinical_columns()):
    raise WorkflowError("\n".join(missing))


def slides():
    """The slide sheet as a DataFrame (empty for a genes-only cohort)."""
    return _sheet()[0]


@functools.lru_cache(maxsize=4)
def _batches(path, mtime, n_batches):
    """→ (batch → its slides, slide → its batch); both empty with 0 batches (one job per slide)."""
    rows = _read_sheet(path, mtime)[1]
    batch_of = policy.assign(rows, n_batches)
    members = {}
    for sid, b in batch_of.items():
        r = rows[sid]
        members.setdefault(b, []).append(
            {"slide_id": sid, "path": r["path"], "modality": r["modality"], "mpp": r["mpp_value"]}
        )
    return members, batch_of


def n_batches(n_slides):
    """How many batch jobs tile and extract `n_slides` slides (pathomix.batch.policy; 0 = one job per slide)."""
    minimum = policy.min_batches(n_slides, GPUS, os.cpu_count() or 1, CLUSTER)
    return policy.batch_count(n_slides, SLIDE_BATCHES.get("size", "auto"), SLIDE_BATCHES.get("above", 500), minimum)


def _batch_tables():
    if not config.get("slides"):
        return {}, {}
    rows = _sheet()[1]  # the demo's sheet is generated first
    return _batches(config["slides"], Path(config["slides"]).stat().st_mtime, n_batches(len(rows)))


def batch_map():
    """batch → its slides (dicts for `python -m pathomix.batch`); {} when every slide has its own jobs
    (cohorts of at most slide_batches.above slides, or slide_batches.size 0)."""
    return _batch_tables()[0]


def batch_of(slide_id):
    return _batch_tables()[1][slide_id]


def shell_command(*pieces):
    """A shell command from pieces joined by spaces: pieces that two rules share are written once."""
    return " ".join(pieces)


def batch_members(wildcards):
    """params of a batch job: its slides as JSON (for `python -m pathomix.batch --members`)."""
    return json.dumps(batch_map()[int(wildcards.batch)])


def batch_slide_state(wildcards):
    """params of a batch job: a digest of its slide files' paths, sizes and mtimes. A changed, replaced or added
    slide file changes it, which reruns the batch (its stamps then redo that slide alone). A param, not the files
    as inputs: for 100 000 slides Snakemake would spend about 10 s of planning matching each file to the rules."""
    return _slide_states(config["slides"], Path(config["slides"]).stat().st_mtime, int(wildcards.batch))


@functools.lru_cache(maxsize=None)
def _slide_states(sheet, mtime, batch):
    h = hashlib.sha256()
    for m in batch_map()[batch]:
        try:
            st = os.stat(m["path"])
        except OSError:
            raise WorkflowError(
                f"slides sheet {sheet}: slide {m['slide_id']}: file {m['path']} does not exist or cannot be read"
            ) from None
        h.update(f"{m['path']}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def batch_channel_sheet(wildcards):
    """The mIF channel sheet as an input of a batch job with an mIF slide, else nothing."""
    sheet = config.get("mif_channels")
    return [sheet] if sheet and any(m["modality"] == "mif" for m in batch_map()[int(wildcards.batch)]) else []


def tile_dependencies(slide_ids):
    """What a job reading the tile stores of `slide_ids` waits for: the stores, or their batches' markers."""
    if batch_map():
        batches = _batch_tables()[1]
        return [str(P.tile_batch(RESULTS, b)) for b in sorted({batches[s] for s in slide_ids})]
    return tile_store_paths(slide_ids)


# tiles/{mag}/{slide}.h5 per magnification, from P.tiles once: a hundred thousand Path objects cost seconds
TILE_TEMPLATES = [str(P.tiles(RESULTS, m, "\0")) for m in MAGS]


def tile_store_paths(slide_ids):
    """The tile stores of `slide_ids` (per-slide files in either mode)."""
    return [t.replace("\0", s) for s in slide_ids for t in TILE_TEMPLATES]


def slide_tile_inputs(wildcards):
    """What a per-slide extraction (an import's fallback in batch mode) waits for: its tile stores, made by a
    per-slide tile job, or where the run tiles every slide in batches anyway, its batch's marker (one writer)."""
    if needs_tiles():
        return tile_dependencies([wildcards.slide_id])
    return tile_store_paths([wildcards.slide_id])


def slide_row(wildcards):
    """One slide as a dict: slide_id, patient_id, path, modality, mpp, mpp_flag, cohort."""
    return _sheet()[1][wildcards.slide_id]


def channel_sheet(wildcards):
    """The mIF channel sheet as an input of mIF jobs (so editing it reruns them), else nothing."""
    sheet = config.get("mif_channels")
    return [sheet] if sheet and slide_row(wildcards)["modality"] == "mif" else []


def channels_flag(wildcards, input):
    return f"--channels-sheet {shlex.quote(input.channels[0])}" if input.channels else ""


def encoder_of(model):
    """The encoder whose features a trained name reads: its @suffix, else the primary encoder."""
    return split_instance(model)[1] or ENCODER


def he_slide_ids():
    df = slides()
    return list(df[df.modality == "he"].slide_id)


@functools.lru_cache(maxsize=16)
def _import_plan(name, sheet_key):
    try:
        return plan(IMPORTS[name], he_slide_ids(), config["tiling"]["magnifications"])
    except PathomixInputError as err:
        raise WorkflowError(str(err)) from None


def import_plan(name):
    """The validated import of `name` (features.import): layout, magnification, dimension, slide → store."""
    return _import_plan(name, (config.get("slides"), Path(config["slides"]).stat().st_mtime))


# features.import is checked before any job runs (the demo's sheet: once the demo is generated)
if IMPORTS and config.get("slides") and not demo_pending() and Path(config["slides"]).exists():
    for _name in IMPORTS:
        import_plan(_name)


def extract_cfg(encoder):
    """The `features:` subtree one extraction job of `encoder` runs with (JSON): its encoder, its own weights
    where `weights` maps encoders to files, without the keys that choose encoders (so adding an encoder or
    an import reruns no other encoder's extraction)."""
    cfg = {k: v for k, v in config["features"].items() if k not in ("encoders", "import")}
    if encoder in IMPORTS:  # the slides an import lacks, extracted with its fallback encoder
        encoder = IMPORTS[encoder].fallback
    cfg["encoder"] = encoder
    if isinstance(cfg.get("weights"), dict):
        cfg["weights"] = {k: v for k, v in cfg["weights"].items() if k == encoder}
    return json.dumps(cfg, sort_keys=True)


def _names_regex(names):
    """A wildcard constraint matching exactly `names` (none: matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# extracted encoders, and imports with a fallback encoder (rule extract makes their missing slides' stores)
EXTRACTED_NAMES = _names_regex(EXTRACT_ENCODERS + [n for n, spec in IMPORTS.items() if spec.fallback])
IMPORTED_NAMES = _names_regex(IMPORTS)
ENCODER_NAMES = _names_regex(ENCODERS)


def import_source(wildcards):
    """The original store of an imported slide; for a slide the import lacks, the path it would have (which no
    rule makes, so the higher-ranked import_features gives way to extract with the fallback encoder)."""
    p = import_plan(wildcards.encoder)
    return str(p.files.get(wildcards.slide_id) or IMPORTS[wildcards.encoder].store(wildcards.slide_id, p.layout))


def import_slide_flags(slide_id):
    """The slide file (when it exists: its µm/px and size) and the sheet's mpp of an imported store's slide."""
    row = _sheet()[1][slide_id]
    flags = f"--slide {shlex.quote(str(row['path']))}" if Path(str(row["path"])).exists() else ""
    return f"{flags} {row['mpp_flag']}".strip()


def heatmap_coords(slide_ids, inputs=False):
    """The coords stores the heatmaps place tiles with: the tile stores (`inputs`: what a job waits for,
    see tile_dependencies), or the primary encoder's feature stores when it is imported (no tiling)."""
    if ENCODER in IMPORTS:
        p = import_plan(ENCODER)
        return [str(P.features(RESULTS, ENCODER, p.mag, s)) for s in slide_ids if s in p.files or s in p.missing]
    return tile_dependencies(slide_ids) if inputs else tile_store_paths(slide_ids)


def heatmap_store_folder():
    """The folder of the coords stores heatmap_coords lists ({mag}/{slide}.h5 below it): the heatmaps job gets
    it instead of one path per store (200 000 paths at 100 000 slides would not fit on a command line)."""
    return str(Path(RESULTS) / "features" / ENCODER) if ENCODER in IMPORTS else str(Path(RESULTS) / "tiles")


def needs_tiles():
    """Whether the run tiles the slides: an extracted encoder, or a model that reads tile images."""
    return bool(config.get("slides")) and (
        bool(EXTRACT_ENCODERS) or any(model_inputs(m, VARIANTS)["images"] for m in config["train"]["models"])
    )


def feature_stores(wildcards):
    """The feature stores of {encoder}, or in batch mode the extraction batches' markers (which list them)."""
    enc = wildcards.encoder
    if enc in IMPORTS:  # the imported stores and those its fallback encoder extracts
        p = import_plan(enc)
        return [str(P.features(RESULTS, enc, p.mag, s)) for s in he_slide_ids() if s in p.files or s in p.missing]
    if batches := batch_map():
        return [str(P.feature_batch(RESULTS, enc, b)) for b in sorted(batches)]
    df = slides()
    return [str(P.features(RESULTS, enc, m, s)) for s in df.slide_id for m in MAGS]


# ---- target lists (rule all) and the outputs several rule files read ---------------------------------
def model_outputs(name, models=None):
    """One output file (P.CHECKPOINT, P.PREDICTIONS, ...) of every training job, or of `models` only."""
    return [
        str(P.model_file(RESULTS, m, t, k, name))
        for m, t in MODEL_TASKS
        if models is None or m in models
        for k in FOLDS
    ]


def evaluated_outputs(name):
    """P.PREDICTIONS or P.HISTORY of every training job and every selection (train.select)."""
    return [str(P.model_file(RESULTS, m, t, k, name)) for m, t in EVAL_MODEL_TASKS for k in FOLDS]


def selection_outputs():
    """The report's table of what each selection chose per task and fold (when train.select names any)."""
    if not SELECTIONS:
        return {}
    cat = dict(category=CATEGORY["comparison"], caption="../report/selection.rst")
    return {
        "selection_html": report(str(P.selection(RESULTS, "html")), **cat, labels={"table": "model selection"}),
        "selection_csv": report(str(P.selection(RESULTS, "csv")), **cat, labels={"table": "model selection (CSV)"}),
    }


def tile_models():
    """The models with slide heatmaps: those that read tiles of H&E or mIF slides."""
    return [m for m in config["train"]["models"] if slide_modality(m, VARIANTS)]


def report_targets():
    """Outputs of the report's own rules (evaluate's come with metrics.parquet)."""
    targets = [str(P.provenance(RESULTS, "html"))]
    if config.get("genes"):
        targets.append(str(P.gene_view(RESULTS)))
    if config.get("slides") and tile_models():
        targets.append(str(P.heatmaps(RESULTS)))
    return targets


def all_targets(wildcards):
    targets = [str(P.metrics(RESULTS)), str(P.summary(RESULTS)), *report_targets()]
    if not needs_tiles():
        return targets
    if batches := batch_map():  # the batch jobs write the QC images next to the stores; tiling_qc gathers them
        targets += [str(P.tile_batch(RESULTS, b)) for b in sorted(batches)] + [f"{RESULTS}/tiles/qc_report"]
    else:
        targets += [str(P.tile_qc(RESULTS, m, s)) for s in slides().slide_id for m in MAGS]
    return targets


# ---- training (train.smk: rule train and one rule train_joint_<model> per joint model, written once) ----
JOINT_MODELS = [m for m in MODEL_INSTANCES if is_joint(m, VARIANTS)]
FOLDS_PER_JOB = config["train"].get("folds_per_job", "auto")


def folds_together(name):
    """Whether one job trains every fold of `name` (train_folds jobs; train.folds_per_job) — `all` always,
    `1` never, `auto` on one machine (start-up, 2-3 s a job, costs more than one job per fold gains there)
    except for image models, whose folds are minutes each; on a cluster, one job per fold spreads them."""
    if FOLDS_PER_JOB == "all":
        return True
    return FOLDS_PER_JOB == "auto" and not CLUSTER and not model_inputs(name, VARIANTS)["images"]


FOLD_GROUPED = [m for m in MODEL_INSTANCES if not is_joint(m, VARIANTS) and folds_together(m)]
# model folders the train rule leaves to others (the joint models' train_joint_<model>, the selections' select,
# the models whose folds train in one job: train_folds)
NOT_TRAIN = "|".join(re.escape(m) for m in JOINT_MODELS + list(SELECTIONS) + FOLD_GROUPED)


def model_resources(name):
    """The resource class of a model (common.smk: RESOURCE_CLASSES): the catalogue's where it has one
    (pathomix.catalog.resources_of), else a GPU class for models that read features or images (gpu_long
    for a joint model: every task in one job) and cpu for genes-only models."""
    if hasattr(catalog, "resources_of"):
        return catalog.resources_of(name, VARIANTS)
    need = model_inputs(name, VARIANTS)
    if not (need["wsi"] or need["mif"] or need["images"]):
        return "cpu"
    return "gpu_long" if is_joint(name, VARIANTS) else "gpu"


def train_inputs(w):
    need = model_inputs(w.model, VARIANTS)
    inputs = {"clinical": config["clinical"], "folds": str(P.folds(RESULTS))}
    if need["wsi"] or need["mif"]:  # H&E and mIF feature stores are listed in one manifest
        inputs["manifest"] = str(P.manifest(RESULTS, encoder_of(w.model)))
    if need["genes"]:
        inputs["hvg"], inputs["subspaces"] = str(P.hvg(RESULTS, w.fold)), str(P.subspaces(RESULTS, w.fold))
    if need["images"]:  # image models read the H&E tiles from the slides, through the coords stores
        he = slides()[slides().modality == "he"]
        inputs["slides"] = config["slides"]
        inputs["tiles"] = tile_dependencies(he.slide_id)
    if need["teacher"]:
        inputs["teacher"] = str(P.model_file(RESULTS, need["teacher"], w.task, w.fold, P.CHECKPOINT))
    return inputs


PER_FOLD_INPUTS = ("hvg", "subspaces", "teacher")  # the train_inputs that differ between folds


def train_folds_inputs(w):
    """train_inputs of every fold of one train_folds job: the per-fold files as lists in fold order."""
    per = [train_inputs(SimpleNamespace(model=w.model, task=w.task, fold=k)) for k in FOLDS]
    return {k: [p[k] for p in per] if k in PER_FOLD_INPUTS else v for k, v in per[0].items()}


def optional_flags(w, input):
    names = {
        "manifest": "--manifest",
        "hvg": "--hvg",
        "subspaces": "--subspaces",
        "teacher": "--teacher-checkpoint",
        "slides": "--slides",
    }
    quoted = lambda v: shlex.quote(v) if isinstance(v, str) else " ".join(shlex.quote(f) for f in v)
    flags = [f"{flag} {quoted(input[k])}" for k, flag in names.items() if k in input.keys()]
    if "tiles" in input.keys():  # the folder of the stores (the input may be their batches' markers)
        flags.append(f"--tiles {shlex.quote(str(Path(RESULTS) / 'tiles'))}")
    v = resolve(w.model, VARIANTS)
    flags += [f"--model {v.model} --name {shlex.quote(v.name)}"]
    if v.teacher is not None:
        flags.append(f"--teacher-name {shlex.quote(v.teacher)}")
    elif model_inputs(v.model)["teacher"]:  # a distilled model trained from scratch
        flags.append("--scratch")
    return " ".join(flags)


def train_outputs(model, task, folds=("{fold}",)):
    """checkpoint, history, predictions of one job: `task` a task (rule train) or the list of a joint model's;
    `folds` the folds it trains (train_folds jobs every fold, fold-major as --out takes them)."""

    def files(name):
        if isinstance(task, str) and len(folds) == 1:
            return str(P.model_file(RESULTS, model, task, folds[0], name))
        tasks = [task] if isinstance(task, str) else task
        return [str(P.model_file(RESULTS, model, t, k, name)) for k in folds for t in tasks]

    return {key: files(name) for key, name in P.MODEL_OUTPUTS.items()}


def train_folds_resources(w_model):
    """resources of a train_folds job: its model's class, with the runtime of every fold."""
    res = class_resources(w_model)
    per_fold = lambda w: resource_class(w_model, w)["runtime"]
    return {**res, "runtime": lambda w, attempt: per_fold(w) * len(FOLDS) * attempt}


def train_params(model):
    """params of both rules: `model` a name, or None for the {model} wildcard (rule train)."""
    name = (lambda w: w.model) if model is None else (lambda w: model)
    return {
        "flags": lambda w, input: optional_flags(SimpleNamespace(model=name(w)), input),
        "cfg": lambda w: json.dumps(job_params(name(w), config["train"]), sort_keys=True),
        "code": code_hash("catalog", "models", "train"),
    }


def train_shell(task, out, fold="{wildcards.fold}"):
    """The command of the train rules; `task`, `out` and `fold` are the parts in which they differ."""
    return (
        f"python -m pathomix.train --task {task} --fold {fold} "
        "--clinical {input.clinical:q} --folds {input.folds:q} {params.flags} --params {params.cfg:q} "
        f"--threads {{threads}} --out {out} > {{log:q}} 2>&1"
    )


# ---- evaluation and report (evaluate.smk) --------------------------------------------------------------
EXTERNAL = config["splits"].get("external_cohorts") or []
FIGURE_LABEL = {
    "roc": "ROC + confusion matrix",
    "km": "Kaplan–Meier by predicted risk",
    "calibration": "reliability diagram",
    "training": "loss and validation metric per epoch",
}


def marker_output(m, t, name):
    """mIF models: the attention per marker, next to the model's slide heatmaps."""
    return report(
        str(P.figures(RESULTS) / name),
        category=CATEGORY["heatmaps"],
        subcategory=m,
        labels={"model": m, "head": f"per mIF marker ({t})"},
        caption="../report/markers.rst",
    )


def figure_outputs():
    """Named, report-tagged outputs: one per model × task × figure kind of the task's kind."""
    out = {}
    for m, t in EVAL_MODEL_TASKS:
        mif = m not in SELECTIONS and model_inputs(m, VARIANTS)["mif"]  # a selection has no marker attention
        for kind, name in L.figure_names(m, t, TASKS[t].kind, mif=mif).items():
            if kind == L.MARKER_FIGURE:
                out[f"{kind}_{m}_{t}"] = marker_output(m, t, name)
                continue
            out[f"{kind}_{m}_{t}"] = report(
                str(P.figures(RESULTS) / name),
                category=CATEGORY[kind],
                subcategory=t,
                labels={"model": m, "figure": FIGURE_LABEL[kind]},
                caption=f"../report/{kind}.rst",
            )
    return out


def encoder_outputs():
    """Several encoders: the encoder × model × task table and figure (report category 1)."""
    if len(ENCODERS) < 2:
        return {}
    cat = dict(category=CATEGORY["comparison"], caption="../report/encoders.rst")
    return {
        "encoders_html": report(str(P.encoders(RESULTS, "html")), **cat, labels={"table": "encoder × model × task"}),
        "encoders_csv": report(str(P.encoders(RESULTS, "csv")), **cat, labels={"table": "encoders (CSV)"}),
        "encoders_png": report(
            str(P.figures(RESULTS) / P.ENCODER_FIGURE), **cat, labels={"table": "encoders: pooled AUC / C-index"}
        ),
    }


def cohort_outputs():
    if not EXTERNAL:
        return {}
    cat = dict(category=CATEGORY["cohorts"], caption="../report/cohorts.rst")
    return {
        "cohorts_html": report(str(P.cohorts(RESULTS, "html")), **cat, labels={"table": "per cohort"}),
        "cohorts_csv": report(str(P.cohorts(RESULTS, "csv")), **cat, labels={"table": "per cohort (CSV)"}),
    }


def table(path, label):
    return report(path, category=CATEGORY["comparison"], caption="../report/comparison.rst", labels={"table": label})


def subspace_model_checkpoints(wildcards=None):
    """checkpoint.pt of every task and fold of the first model that reads the gene subspaces."""
    teachers = [m for m in config["train"]["models"] if resolve(m, VARIANTS).model == "dmsf_teacher"]
    if not teachers:
        return []
    return model_outputs(P.CHECKPOINT, models=teachers[:1])


# ---- slide heatmaps (heatmaps.smk) --------------------------------------------------------------------
def heatmap_slides(wildcards):
    """The slide files of the heatmaps job: none in batch mode, where the tile batches it waits for carry their
    state (batch_slide_state; 100 000 files as one job's inputs would cost Snakemake seconds to plan)."""
    return [] if batch_map() else list(drawn_slides().path)


def drawn_slides():
    """The slides the heatmaps may draw: H&E slides for H&E models, mIF images for mIF models."""
    wanted = {slide_modality(m, VARIANTS) for m in tile_models()}
    df = slides()
    return df[df.modality.isin(wanted)]
