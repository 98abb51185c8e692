"""One exit convention for every ``python -m pathomix.<stage>``.

    @stage_main("pathomix.tiling")
    def main(argv: list[str] | None = None) -> int | None: ...

- a :class:`PathomixInputError` (bad input: the message is the whole story) → logged at ERROR,
  no traceback, exit status 1;
- any other exception → propagates with its traceback (a bug: Python exits non-zero);
- argparse's own usage errors keep argparse's convention (message + usage, exit status 2);
- SIGTERM (a scheduler's time limit or preemption, ``scancel``, Snakemake stopping) → :class:`Terminated` is
  raised where the job is, so every ``finally`` runs (atomic writes drop their temporary file): nothing partial
  is left, exit status 143 (128 + SIGTERM).

``run()`` functions raise, never ``SystemExit``; only ``main`` turns errors into a status.
The undecorated function stays reachable as ``main.__wrapped__`` (tests that want the exception).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from pathomix.errors import PathomixInputError
from pathomix.logs import setup_logging

Main = Callable[[list[str] | None], int | None]

INPUT_ERROR = 1  # exit status of a PathomixInputError
TERMINATED = 128 + signal.SIGTERM  # the shell's status of a process ended by SIGTERM


class Terminated(BaseException):  # noqa: N818 — a signal, like KeyboardInterrupt, not an error of the job
    """SIGTERM arrived. A BaseException, so ``except Exception`` clauses do not swallow it on its way out."""


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def stage_main(logger: str) -> Callable[[Main], Callable[[list[str] | None], int]]:
    """Decorator for a stage's ``main(argv)``: logging set up, the exit convention above."""
    log = logging.getLogger(logger)

    def wrap(body: Main) -> Callable[[list[str] | None], int]:
        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> int:
            setup_logging()
            main_thread = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
            try:
                status = body(argv)
            except PathomixInputError as err:
                log.error("%s", err)
                return INPUT_ERROR
            except Terminated:
                log.error("stopped by SIGTERM (a scheduler's time limit or preemption, or snakemake stopping): "
                          "no partial output was kept; rerun the same command to finish")
                return TERMINATED
            finally:
                if main_thread:
                    signal.signal(signal.SIGTERM, previous)
            return 0 if status is None else int(status)
        return main
    return wrap


def exit_process(status: int | None) -> NoReturn:
    """End a ``python -m pathomix.<stage>`` process with ``status`` once its work is done and its outputs are
    written, flushing the logs and standard streams but skipping the interpreter's teardown. pyarrow's parquet
    thread pool can abort a process there ("terminate called without an active exception", apache/arrow#34314;
    seen here once under load in a short-lived job that had written all its outputs), which would turn a finished
    job into a failed one. Only for the ``__main__`` entry points: tests call ``main()`` in-process."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be written to it
            pass
    os._exit(0 if status is None else int(status))
