"""The catalogue: every fact about the registered models, encoders, tasks and metrics, stated once, torch-free.

The Snakefile (workflow/rules/common.smk) imports it at parse time, so it must load fast: it names code by
import path and never imports torch.

- :data:`MODELS`: one :class:`ModelEntry` per registered model (builder, what it reads, magnifications,
  teacher, joint builder, task kinds, resources class, description). :data:`pathomix.models.MODELS` (the
  ``ModelSpec`` registry the training stage uses) is built from it, importing the builders.
- :data:`RESOURCES`: the resources classes (:class:`Resources`) a training job asks a cluster for.
- :data:`ENCODERS`: one :class:`EncoderEntry` per patch encoder, stated in :mod:`pathomix.features.entries` (so
  that the extraction rules' code hash covers them); :mod:`pathomix.features.encoders` builds them.
- :data:`TASK_NAMES` (from :data:`pathomix.tasks.TASKS`) and :func:`metric_names` (the registries of
  :mod:`pathomix.evaluate.metrics`).
- Variants and the questions the rules ask (:mod:`pathomix.catalog.variants`): :func:`resolve`,
  :func:`model_inputs`, :func:`job_params`, :func:`model_tasks`, :func:`is_joint`, :func:`slide_modality`,
  :func:`missing_cohort_inputs`, :func:`resources_of`.

The config schema's enums are generated from here: ``python -m pathomix.schema`` (``--check`` to verify).
Adding a model: docs/adding-a-model.md.
"""

from pathomix.catalog.entries import (
    INPUT_KINDS,
    MODELS,
    RESOURCES,
    TASK_KINDS_ALL,
    TASK_NAMES,
    ModelEntry,
    Resources,
    import_object,
    metric_names,
    model_entry,
)
from pathomix.catalog.variants import (
    COHORT_KEYS,
    INSTANCE_SEP,
    JOINT,
    MODALITY_OF,
    MODEL_INPUTS,
    OWN_INPUTS,
    TASK_KINDS,
    TEACHERS,
    Variant,
    is_joint,
    job_params,
    missing_cohort_inputs,
    model_inputs,
    model_instances,
    model_tasks,
    reads_features,
    resolve,
    resources_class,
    resources_of,
    selection_instances,
    selection_tasks,
    selections,
    slide_modality,
    split_instance,
)
from pathomix.features.entries import ENCODERS, EncoderEntry

__all__ = [
    "COHORT_KEYS", "ENCODERS", "INPUT_KINDS", "JOINT", "MODALITY_OF", "MODELS", "MODEL_INPUTS", "OWN_INPUTS",
    "RESOURCES", "TASK_KINDS", "TASK_KINDS_ALL", "TASK_NAMES", "TEACHERS", "EncoderEntry", "ModelEntry", "Resources",
    "Variant", "import_object", "is_joint", "job_params", "metric_names", "missing_cohort_inputs", "model_entry",
    "model_inputs", "model_tasks", "resolve", "resources_class", "resources_of", "selection_tasks", "selections",
    "selection_instances", "model_instances", "reads_features", "split_instance", "INSTANCE_SEP",
    "slide_modality",
]
