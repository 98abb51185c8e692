"""How the tests start Snakemake: with the Python of the README's first command when CI gives one.

CI (``.ci/run``) installs a second venv exactly as the README's first command does (``pip install -e .``,
no extras) and names its Python in ``PATHOMIX_WORKFLOW_PYTHON``; every Snakemake run of the tests, and
the jobs it starts (``python -m pathomix...`` found on PATH), then use that install. A dependency that
only the test extras bring (pygments for ``snakemake --report`` was one) fails the workflow tests
instead of a newcomer's first run. Without the variable, the tests' own Python runs the workflow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

WORKFLOW_PYTHON = Path(os.environ.get("PATHOMIX_WORKFLOW_PYTHON") or sys.executable)


def snakemake_cmd(*args: str) -> list[str]:
    """``python -m snakemake ARGS`` with the workflow's Python."""
    return [str(WORKFLOW_PYTHON), "-m", "snakemake", *args]


def workflow_env(**extra: str) -> dict[str, str]:
    """The environment of a Snakemake run: the workflow's Python first on PATH (its jobs call ``python``)."""
    return dict(os.environ, PATH=f"{WORKFLOW_PYTHON.parent}{os.pathsep}{os.environ['PATH']}", **extra)
