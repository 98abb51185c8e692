"""Moved to :mod:`pathomix.tasks` (domain, not io); this shim serves workflow/rules/evaluate.smk and old imports."""
from pathomix.tasks import *  # noqa: F403
