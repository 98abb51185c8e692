"""Torch-free facts about the registered models, for the Snakefile (which must load fast).

``pathomix.models.MODELS`` is the registry; this table states which input files a training
job of each model reads (its teacher's included). ``tests/test_models.py`` checks that the two
agree, so they cannot drift.
"""

from __future__ import annotations

MODEL_INPUTS: dict[str, dict[str, bool | str | None]] = {
    "abmil": {"wsi": True, "genes": False, "teacher": None},
    "snn": {"wsi": False, "genes": True, "teacher": None},
    "dmsf_teacher": {"wsi": True, "genes": True, "teacher": None},
    # a distilled student reads the genes too: it runs its frozen teacher during training
    "dmsf_student": {"wsi": True, "genes": True, "teacher": "dmsf_teacher"},
}
