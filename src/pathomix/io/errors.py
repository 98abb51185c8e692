"""Moved to :mod:`pathomix.errors`; kept for old imports."""
from pathomix.errors import PathomixInputError  # noqa: F401
