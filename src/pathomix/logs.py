"""Logging set-up shared by every stage's ``main``: one format, level from PATHOMIX_LOGLEVEL."""

from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("PATHOMIX_LOGLEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
