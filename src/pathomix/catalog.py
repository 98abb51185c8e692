"""Torch-free facts about the registered models, for the Snakefile (which must load fast).

``pathomix.models.MODELS`` is the registry; this table states which input files a training
job of each model reads (its teacher's included). ``tests/test_models.py`` checks that the two
agree, so they cannot drift. :func:`missing_cohort_inputs` checks a config's models against
the cohort it names (a genes-only cohort has ``slides: null``).
"""

from __future__ import annotations

MODEL_INPUTS: dict[str, dict[str, bool | str | None]] = {
    "abmil": {"wsi": True, "genes": False, "teacher": None},
    "snn": {"wsi": False, "genes": True, "teacher": None},
    "dmsf_teacher": {"wsi": True, "genes": True, "teacher": None},
    # a distilled student reads the genes too: it runs its frozen teacher during training
    "dmsf_student": {"wsi": True, "genes": True, "teacher": "dmsf_teacher"},
}

# input kind → (config key that names it, what it is, how to add it)
COHORT_KEYS: dict[str, tuple[str, str, str]] = {
    "wsi": ("slides", "H&E slides", "add a slides sheet"),
    "genes": ("genes", "a gene table", "add a gene table"),
}


def missing_cohort_inputs(models: list[str], config: dict) -> list[str]:
    """One message per requested model whose inputs the cohort lacks (e.g. abmil with ``slides: null``)."""
    return [f"model {m} needs {what} but `{key}` is null; remove it from train.models or {fix}"
            for m in models for kind, (key, what, fix) in COHORT_KEYS.items()
            if MODEL_INPUTS[m][kind] and not config.get(key)]
