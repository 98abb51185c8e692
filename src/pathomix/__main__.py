"""``pathomix COMMAND`` (also ``python -m pathomix COMMAND``): set up and check a study.

    pathomix init SLIDES_DIR --out STUDY [--clinical FILE] [--genes FILE]   sheets + config.yaml from a folder
    pathomix doctor [--config config.yaml]                                 what this machine can run
    pathomix verify RESULTS_DIR [--remove]                                 stores damaged from outside

The stages themselves run through Snakemake (``snakemake --cores all``); each is also ``python -m pathomix.<stage>``.
"""

from __future__ import annotations

import importlib
import sys

from pathomix.cli import exit_process

COMMANDS = {"init": "pathomix.study.init", "doctor": "pathomix.study.doctor", "verify": "pathomix.verify"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        sys.stderr.write(__doc__ or "")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


def console() -> None:
    """The ``pathomix`` console script."""
    exit_process(main())


if __name__ == "__main__":
    console()
