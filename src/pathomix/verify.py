"""``python -m pathomix.verify RESULTS_DIR [--remove]``: find the stores under a results folder that a failed
disk, a copy that stopped or another program left unreadable, and (with ``--remove``) delete them so that the
same ``snakemake`` command recomputes just those (no ``--forcerun`` needed: a missing output is rerun).

Checks every ``.h5`` (opens it and reads the last rows of each dataset: where a truncation shows) and every
``.parquet`` (reads it whole). Exit status 0 when all read whole (or all corrupt ones were removed), 1 when
corrupt stores remain.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pathomix.cli import exit_process, stage_main
from pathomix.errors import PathomixInputError
from pathomix.io.corrupt import scan

log = logging.getLogger("pathomix.verify")


@stage_main("pathomix.verify")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pathomix.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="the results folder (config `results_dir`)")
    p.add_argument("--remove", action="store_true", help="delete the corrupt stores (the rerun recomputes them)")
    args = p.parse_args(argv)
    if not args.results.is_dir():
        raise PathomixInputError(f"{args.results} is not a folder; give the run's `results_dir`")
    bad = scan(args.results)
    for path, problem in bad:
        log.error("%s", problem)
        if args.remove:
            path.unlink()
            log.warning("removed %s; rerun the same snakemake command to recompute it", path)
    if not bad:
        log.info("every store under %s reads whole", args.results)
    return 1 if bad and not args.remove else 0


if __name__ == "__main__":
    exit_process(main())
