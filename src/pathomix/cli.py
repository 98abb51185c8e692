"""One exit convention for every ``python -m pathomix.<stage>``.

    @stage_main("pathomix.tiling")
    def main(argv: list[str] | None = None) -> int | None: ...

- a :class:`PathomixInputError` (bad input: the message is the whole story) → logged at ERROR,
  no traceback, exit status 1;
- any other exception → propagates with its traceback (a bug: Python exits non-zero);
- argparse's own usage errors keep argparse's convention (message + usage, exit status 2).

``run()`` functions raise, never ``SystemExit``; only ``main`` turns errors into a status.
The undecorated function stays reachable as ``main.__wrapped__`` (tests that want the exception).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from pathomix.errors import PathomixInputError
from pathomix.logs import setup_logging

Main = Callable[[list[str] | None], int | None]

INPUT_ERROR = 1  # exit status of a PathomixInputError


def stage_main(logger: str) -> Callable[[Main], Callable[[list[str] | None], int]]:
    """Decorator for a stage's ``main(argv)``: logging set up, the exit convention above."""
    log = logging.getLogger(logger)

    def wrap(body: Main) -> Callable[[list[str] | None], int]:
        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> int:
            setup_logging()
            try:
                status = body(argv)
            except PathomixInputError as err:
                log.error("%s", err)
                return INPUT_ERROR
            return 0 if status is None else int(status)
        return main
    return wrap
