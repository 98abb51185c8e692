"""The catalogue's entries: one frozen record per registered model and resources class (the encoders' entries
live in :mod:`pathomix.features.entries`, hashed with the features stage; re-exported here).

Torch-free on purpose: the Snakefile reads it at parse time, and the config schema's enums are generated
from it (:mod:`pathomix.schema`). Code is named by import path (``"pathomix.models.abmil:build"``) and
imported only by :func:`import_object`, i.e. by :mod:`pathomix.models` when a stage builds a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from pathomix.tasks import TASKS

# H&E features, genes, mIF features, H&E tile images, clinical covariates alone (train.covariates: the clinical
# baseline; the other models take the covariates on top of what they read when train.covariates is set)
INPUT_KINDS = ("wsi", "genes", "mif", "images", "covariates")
TASK_KINDS_ALL = ("classification", "survival")  # the Task.kind values


@dataclass(frozen=True)
class Resources:
    """What one training job of a model asks a cluster for (profiles/slurm: set-resources of train /
    train_joint_umeml): ``cpus`` (the job's threads; on a GPU also ``cpus_per_gpu``), ``mem_mb``,
    ``runtime`` in minutes, ``gpu`` (count)."""

    name: str
    cpus: int
    mem_mb: int
    runtime: int
    gpu: int = 0
    cpus_per_gpu: int = 0
    description: str = ""

    def as_dict(self) -> dict[str, int]:
        """``{gpu, cpus, mem_mb, runtime, cpus_per_gpu}``, the shape of the rules' resource classes
        (common.smk); gpu and cpus_per_gpu are 0 for a CPU class."""
        return {"gpu": self.gpu, "cpus": self.cpus, "mem_mb": self.mem_mb, "runtime": self.runtime,
                "cpus_per_gpu": self.cpus_per_gpu}


RESOURCES: dict[str, Resources] = {
    r.name: r
    for r in (
        Resources("cpu", cpus=1, mem_mb=8000, runtime=30, description="small dense models (genes only)"),
        Resources("gpu", cpus=4, mem_mb=16000, runtime=60, gpu=1, cpus_per_gpu=4,
                  description="MIL and multimodal models, one task per job"),
        Resources("gpu_long", cpus=4, mem_mb=16000, runtime=90, gpu=1, cpus_per_gpu=4,
                  description="joint models: every task in one job"),
    )
}


@dataclass(frozen=True)
class ModelEntry:
    """One registered model (DESIGN.md §6).

    ``builder`` (and ``joint_builder``, for a model trained on all its tasks in one job) name the function
    ``build(dims, task, params)`` as ``"module:attribute"`` (contract: :mod:`pathomix.models.spec`).
    ``reads``: the :data:`INPUT_KINDS` the model itself reads (a distilled model's teacher may read more).
    ``mags``: the magnifications it uses, the first required. ``teacher``: the registered model it is
    distilled from. ``task_kinds``: the Task kinds it can train on. ``resources``: a :data:`RESOURCES` name.
    """

    name: str
    builder: str
    reads: tuple[str, ...]
    mags: tuple[str, ...] = ()
    teacher: str | None = None
    joint_builder: str | None = None
    task_kinds: tuple[str, ...] = TASK_KINDS_ALL
    resources: str = "gpu"
    description: str = ""

    def __post_init__(self) -> None:
        bad = [f"reads {k!r}" for k in self.reads if k not in INPUT_KINDS]
        bad += [f"task kind {k!r}" for k in self.task_kinds if k not in TASK_KINDS_ALL]
        bad += [f"resources {self.resources!r}"] if self.resources not in RESOURCES else []
        bad += [f"builder {b!r} (want 'module:attribute')" for b in (self.builder, self.joint_builder)
                if b is not None and b.count(":") != 1]
        if bad:
            raise ValueError(f"catalogue entry {self.name}: unknown {', '.join(bad)}")

    @property
    def joint(self) -> bool:
        """Trained on all its tasks in one job (it has a joint builder)."""
        return self.joint_builder is not None

    @property
    def trainer(self) -> str:
        """The training path (:data:`pathomix.train.cli.TRAINERS`): ``images`` (tile images), ``clinical``
        (covariates only, fitted in closed form) or ``features`` (feature bags and genes, the gradient loop)."""
        return "images" if "images" in self.reads else "clinical" if self.reads == ("covariates",) else "features"


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry("abmil", "pathomix.models.abmil:build", reads=("wsi",), mags=("20x",),
                   description="gated-attention MIL on 20x H&E features"),
        ModelEntry("snn", "pathomix.models.snn:build", reads=("genes",), resources="cpu",
                   description="self-normalising network on all HVG genes"),
        ModelEntry("dmsf_teacher", "pathomix.models.dmsf:build_teacher", reads=("wsi", "genes"), mags=("20x", "10x"),
                   description="DMSF teacher: tumour/TME gene tokens select patches at 20x and 10x"),
        ModelEntry("dmsf_student", "pathomix.models.dmsf:build_student", reads=("wsi",), mags=("20x", "10x"),
                   teacher="dmsf_teacher", description="DMSF WSI-only student distilled from dmsf_teacher"),
        ModelEntry("ksfusion", "pathomix.models.ksfusion:build", reads=("wsi", "genes"), mags=("20x",),
                   description="KS-Fusion: tumour/TME gene queries, deformable attention on the 20x tile grid"),
        ModelEntry("umeml", "pathomix.models.umeml:build", reads=("wsi", "genes"), mags=("20x",),
                   joint_builder="pathomix.models.umeml:build_joint", resources="gpu_long",
                   description="UMEML: prototype queries + modularity, register tokens, one decoder for all tasks"),
        ModelEntry("fluoroformer", "pathomix.models.fluoroformer:build", reads=("mif",), mags=("20x",),
                   description="Fluoroformer: marker self-attention per mIF tile, then gated attention MIL"),
        ModelEntry("fof", "pathomix.models.fof:build", reads=("images",), mags=("20x",),
                   task_kinds=("classification",),
                   description="FoF: ViT-Tiny on H&E tile images, Grad-CAM focus views, EMA contrast, biomarker "
                               "alignment; histology-only inference"),
        ModelEntry("cox_clinical", "pathomix.models.clinical:build", reads=("covariates",), resources="cpu",
                   description="clinical baseline on train.covariates: penalised Cox (survival), logistic "
                               "regression (classification)"),
    )
}


TASK_NAMES: tuple[str, ...] = tuple(TASKS)  # pathomix.tasks.TASKS (labels need pandas, not torch)


def metric_names() -> tuple[str, ...]:
    """The names in :mod:`pathomix.evaluate.metrics`' registries, classification then survival. Imported on
    call (scikit-learn, lifelines; no torch): only the schema tool and tests need them."""
    from pathomix.evaluate import metrics

    return (*metrics.CLASSIFICATION, *metrics.SURVIVAL)


def model_entry(name: str) -> ModelEntry:
    """The catalogue entry of registered model ``name``; a KeyError lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(MODELS)}") from None


def import_object(path: str) -> Any:
    """The object ``"module:attribute"`` names (a builder of a catalogue entry), importing its module."""
    module, _, attr = path.partition(":")
    return getattr(import_module(module), attr)
