"""Model names as the workflow uses them: registered models and their variants, what a job reads,
which tasks it trains on and what it asks a cluster for; all derived from :data:`catalog.MODELS
<pathomix.catalog.entries.MODELS>`.

A *variant* (``train.variants`` in the config) is a new model name for a registered model
with some ``train:`` keys overridden, e.g. the ablations of the DMSF paper::

    dmsf_teacher-noCGC: {model: dmsf_teacher, cgc: false}
    dmsf_student-scratch: {model: dmsf_student, teacher: null}

``tasks`` restricts a variant to some of ``train.tasks``. An entry named after a registered model
(e.g. ``umeml: {patience: 20}``) overrides that model's own ``train:`` keys. ``teacher`` (only for a model that
has one) names the model it is distilled from: the registered teacher by default, another
variant, or null for training from scratch. A variant trains through the same rule on the same
folds, with its registered model's resources class, and is reported under its own name.

*Model instances* (several encoders, ``features.encoders``): a model that reads patch features (``wsi`` or
``mif`` in ``ModelEntry.reads``) trains once per encoder. The first encoder's instance keeps the model's own
name (and today's ``models/{model}/{task}/fold{k}/``), every further encoder's is ``{model}@{encoder}``
(``models/abmil@vit_tiny/diagnosis/fold0/``), so adding an encoder never renames, nor reruns, what the first
one trained. :func:`resolve` takes an instance name like a model name (a distilled student's teacher is the
teacher of the same encoder); :func:`model_instances` lists them and :func:`split_instance` splits one.

:func:`missing_cohort_inputs` checks a config's models against the cohort it names (a
genes-only cohort has ``slides: null``; a cohort without mIF has no slides-sheet row with
modality ``mif``, which the ``mif`` models need).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pathomix.catalog.entries import INPUT_KINDS, MODELS, RESOURCES, TASK_KINDS_ALL
from pathomix.tasks import TASKS

# Views of the entries, kept for older callers: what each registered model itself reads, whom it is distilled
# from, which models train all tasks in one job, and the models limited to some task kinds
OWN_INPUTS: dict[str, dict[str, bool]] = {n: {k: k in e.reads for k in INPUT_KINDS} for n, e in MODELS.items()}
TEACHERS: dict[str, str] = {n: e.teacher for n, e in MODELS.items() if e.teacher is not None}
JOINT: frozenset[str] = frozenset(n for n, e in MODELS.items() if e.joint)
TASK_KINDS: dict[str, tuple[str, ...]] = {n: e.task_kinds for n, e in MODELS.items()
                                          if set(e.task_kinds) != set(TASK_KINDS_ALL)}
_KEEP = object()
# input kind → (config key that names it, what it is, how to add it)
COHORT_KEYS: dict[str, tuple[str, str, str]] = {
    "wsi": ("slides", "H&E slides", "add a slides sheet"),
    "genes": ("genes", "a gene table", "add a gene table"),
    "mif": ("slides", "mIF images", "add a slides sheet with mIF rows (modality mif)"),
    "images": ("slides", "H&E slides", "add a slides sheet"),
}
# slide-image input kind → the slides sheet's `modality` value, and what to add to the sheet
MODALITY_OF: dict[str, tuple[str, str]] = {
    "wsi": ("he", "H&E slides"),
    "mif": ("mif", "mIF images (one row per image, modality mif; channel names in `mif_channels`)"),
    "images": ("he", "H&E slides"),
}


@dataclass(frozen=True)
class Variant:
    """A model name resolved: the registered ``model``, its ``teacher`` name (or None) and the
    ``train:`` keys it overrides."""

    name: str
    model: str
    teacher: str | None
    overrides: Mapping[str, Any] = field(default_factory=dict)


INSTANCE_SEP = "@"  # {model}@{encoder}: the instance of a feature-reading model trained on a further encoder


def split_instance(name: str) -> tuple[str, str | None]:
    """``"abmil@vit_tiny"`` → ``("abmil", "vit_tiny")``; ``"abmil"`` → ``("abmil", None)`` (the first encoder's)."""
    base, sep, encoder = name.partition(INSTANCE_SEP)
    return (base, encoder) if sep else (name, None)


def reads_features(name: str, variants: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    """Whether a job of ``name`` reads patch-feature stores (H&E or mIF), so it trains once per encoder."""
    need = model_inputs(name, variants)
    return bool(need["wsi"] or need["mif"])


def model_instances(models: Collection[str], variants: Mapping[str, Mapping[str, Any]] | None,
                    encoders: Collection[str]) -> list[str]:
    """The trained names of ``models`` (``train.models``) with ``encoders`` (``features.encoders``, first =
    the plain names): a feature-reading model once per encoder, the others once, in ``models`` order."""
    further = list(encoders)[1:]
    out = []
    for m in models:
        out.append(m)
        if reads_features(m, variants):
            out += [f"{m}{INSTANCE_SEP}{e}" for e in further]
    return out


def resolve(name: str, variants: Mapping[str, Mapping[str, Any]] | None = None) -> Variant:
    """``name`` as a registered model or a variant of one, or an instance ``{model}@{encoder}`` of either;
    a KeyError names the known ones."""
    variants = variants or {}
    base, encoder = split_instance(name)
    if encoder is not None:
        v = resolve(base, variants)
        if not reads_features(base, variants):
            raise KeyError(f"{name!r}: {base} reads no patch features, so it has no per-encoder instance")
        teacher = None if v.teacher is None else f"{v.teacher}{INSTANCE_SEP}{encoder}"
        return Variant(name, v.model, teacher, v.overrides)
    if name in MODELS:  # an entry under its own name overrides the registered model's train: keys
        own = dict(variants.get(name) or {})
        if own.pop("model", name) != name or "teacher" in own:
            raise KeyError(f"train.variants.{name}: {name} is a registered model, so this entry can only override "
                           "its train: keys (no `model` or `teacher`); give a variant another name")
        return Variant(name, name, MODELS[name].teacher, own)
    if name not in variants:
        raise KeyError(f"unknown model {name!r}: neither a registered model {sorted(MODELS)} nor a "
                       f"variant in train.variants {sorted(variants)}")
    spec = dict(variants[name])
    base = spec.pop("model", None)
    if base not in MODELS:
        raise KeyError(f"train.variants.{name}: `model` must be one of {sorted(MODELS)}, got {base!r}")
    teacher = spec.pop("teacher", _KEEP)
    default_teacher = MODELS[base].teacher
    if teacher is _KEEP:
        teacher = default_teacher
    elif teacher is not None and default_teacher is None:
        raise KeyError(f"train.variants.{name}: {base} is not distilled, so it takes no `teacher`")
    elif teacher is not None and resolve(teacher, variants).model != default_teacher:
        raise KeyError(f"train.variants.{name}: teacher {teacher!r} is not a {default_teacher}")
    return Variant(name, base, teacher, spec)  # type: ignore[arg-type]


def model_inputs(name: str, variants: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> dict[str, bool | str | None]:
    """Input files a training job of ``name`` reads: ``{wsi, genes, mif, images, teacher}``, its teacher's
    inputs included (a distilled student runs its teacher on the genes)."""
    v = resolve(name, variants)
    reads = set(MODELS[v.model].reads)
    if v.teacher is not None:
        reads |= set(MODELS[resolve(v.teacher, variants).model].reads)
    return {**{k: k in reads for k in INPUT_KINDS}, "teacher": v.teacher}


SNAKEFILE_KEYS = ("models", "tasks", "variants", "select", "folds_per_job")  # train: keys only the Snakefile reads


def job_params(name: str, train: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train:`` subtree one job of ``name`` runs with: the shared keys, then the variant's
    overrides (nested ``distill`` and ``aux_losses`` merged key by key); without the keys that
    only the Snakefile reads."""
    v = resolve(name, train.get("variants"))
    out = {k: val for k, val in train.items() if k not in SNAKEFILE_KEYS}
    for key, val in v.overrides.items():
        if isinstance(val, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **val}
        else:
            out[key] = val
    return out


MODEL_INPUTS: dict[str, dict[str, bool | str | None]] = {name: model_inputs(name) for name in MODELS}


def selections(train: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """``train.select``: selection name → its candidates (names in ``train.models``). Per task and fold, the
    workflow keeps the candidate with the best validation metric (``pathomix.train.select``); the selection is
    evaluated and reported like a model, from the chosen candidate's test predictions. A KeyError names what
    is wrong (a name that is also a model, a candidate that does not train)."""
    out = {}
    models, variants = list(train.get("models") or []), train.get("variants")
    for name, spec in (train.get("select") or {}).items():
        candidates = tuple((spec or {}).get("candidates") or ())
        if name in models or name in MODELS or name in (variants or {}):
            raise KeyError(f"train.select.{name}: the name is already a model or variant; give the selection its own")
        if missing := [c for c in candidates if split_instance(c)[0] not in models]:
            raise KeyError(f"train.select.{name}: candidate(s) {missing} are not in train.models; add them there")
        if len(candidates) < 2:
            raise KeyError(f"train.select.{name}: name at least two candidates")
        out[name] = candidates
    return out


def selection_instances(candidates: Collection[str], variants: Mapping[str, Mapping[str, Any]] | None,
                        encoders: Collection[str]) -> tuple[str, ...]:
    """A selection's candidates as trained names: with several encoders a feature-reading candidate stands for
    its instance on every encoder (the encoder is chosen on validation patients like any setting); a candidate
    written ``{model}@{encoder}`` (or a model reading no features) stands for itself."""
    out: list[str] = []
    for c in candidates:
        out += [c] if split_instance(c)[1] is not None else model_instances([c], variants, encoders)
    return tuple(dict.fromkeys(out))


def selection_tasks(candidates: tuple[str, ...], train: Mapping[str, Any]) -> list[str]:
    """The tasks every candidate trains on (in ``train.tasks`` order)."""
    each = [set(model_tasks(c, train)) for c in candidates]
    return [t for t in train["tasks"] if all(t in e for e in each)]


def missing_cohort_inputs(models: list[str], config: Mapping[str, Any],
                          modalities: Collection[str] | None = None,
                          clinical_columns: Collection[str] | None = None) -> list[str]:
    """One message per requested model and input the cohort lacks: a config key that is null
    (e.g. abmil with ``slides: null``) or, when ``modalities`` (the slides sheet's ``modality``
    values) is given, a slide modality the sheet has no row of (e.g. fluoroformer, no mIF); covariates
    (``train.covariates``) that are empty for a model that needs them or, when ``clinical_columns`` (the
    clinical sheet's header) is given, that the sheet has no column of; magnifications a model reads tiles at
    that ``tiling.magnifications`` does not make."""
    variants = (config.get("train") or {}).get("variants")
    out = []
    for m in models:
        need = model_inputs(m, variants)
        for kind, (key, what, fix) in COHORT_KEYS.items():
            if not need[kind]:
                continue
            if not config.get(key):
                out.append(f"model {m} needs {what} but `{key}` is null; remove it from train.models or {fix}")
            elif modalities is not None and kind in MODALITY_OF and MODALITY_OF[kind][0] not in modalities:
                value, add = MODALITY_OF[kind]
                out.append(f"model {m} needs {what} but the slides sheet {config.get('slides')} has no row with "
                           f"modality `{value}`; remove it from train.models or add {add} to the sheet")
        params = job_params(m, config.get("train") or {})
        configured = list((config.get("tiling") or {}).get("magnifications") or [])
        if any(need[k] for k in ("wsi", "mif", "images")) and configured:
            mags = params.get("mags") or MODELS[resolve(m, variants).model].mags
            if mags and mags[0] not in configured:  # the first is required, the others are used when tiled
                out.append(f"model {m} reads tiles at {mags[0]} (its first magnification), but tiling.magnifications "
                           f"has {configured}; add {mags[0]} there (e.g. `20x: 0.5`) or give it a variant with "
                           f"`mags: {configured[:1]}`")
        covariates = params.get("covariates") or []
        if need.get("covariates") and not covariates:
            out.append(f"model {m} learns from clinical covariates but train.covariates is empty; list clinical "
                       "sheet columns there (e.g. covariates: [age]) or remove it from train.models")
        if clinical_columns is not None and (absent := [c for c in covariates if c not in clinical_columns]):
            out.append(f"model {m} takes the covariates {absent}, but the clinical sheet {config.get('clinical')} has "
                       "no such column; add it to the sheet or change train.covariates (or the model's variant)")
    return out


def slide_modality(name: str, variants: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
    """The slides whose tiles a model's attention weighs: ``he`` (H&E features or images), ``mif``, or None."""
    need = model_inputs(name, variants)
    return "mif" if need["mif"] else "he" if need["wsi"] or need["images"] else None


def is_joint(name: str, variants: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    """Whether ``name`` (a model or a variant) trains on all its tasks in one job."""
    return MODELS[resolve(name, variants).model].joint


def model_tasks(name: str, train: Mapping[str, Any]) -> list[str]:
    """The tasks ``name`` trains on: ``train.tasks``, or the subset a variant lists in ``tasks``
    (e.g. ablations on the diagnosis task only); a model limited to some task kinds (``ModelEntry.task_kinds``:
    ``fof`` classifies tiles) skips the others."""
    v = resolve(name, train.get("variants"))
    own = v.overrides.get("tasks")
    kinds = MODELS[v.model].task_kinds
    return [t for t in train["tasks"] if (own is None or t in own) and TASKS[t].kind in kinds]


def resources_class(name: str, variants: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The :data:`RESOURCES` class of ``name``: its registered model's (a variant of a GPU model is a GPU job)."""
    return MODELS[resolve(name, variants).model].resources


def resources_of(name: str, variants: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, int]:
    """What one training job of ``name`` (a model or a variant) asks a cluster for:
    ``{gpu, cpus, mem_mb, runtime (minutes), cpus_per_gpu}`` of its resources class."""
    return RESOURCES[resources_class(name, variants)].as_dict()
