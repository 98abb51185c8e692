"""Command line: ``python -m pathomix.demo --out DIR [--seed 0] [--n-patients 24] [--n-mif 8] [--jobs 1]``
(defaults: :class:`pathomix.demo.generate.DemoParams`, equal to config.yaml's ``demo:``)."""

from __future__ import annotations

import argparse
import logging

from pathomix.cli import stage_main
from pathomix.demo.generate import DemoParams, generate_cohort

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m pathomix.demo",
        description="Generate the synthetic demo cohort (slides, mIF, clinical, genes) into a folder.",
    )
    parser.add_argument("--out", required=True, help="output folder (slides.tsv is written last)")
    parser.add_argument("--seed", type=int, default=DemoParams.seed, help="random seed; same seed => same content")
    parser.add_argument("--n-patients", type=int, default=DemoParams.n_patients,
                        help="patients, split equally over 3 classes")
    parser.add_argument("--n-mif", type=int, default=DemoParams.n_mif,
                        help="patients that also get a 7-channel mIF image")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes rendering images (0 = one per CPU, up to 4); content does not depend on it")
    parser.add_argument("--log-level", default=None, help="logging level (default INFO, or PATHOMIX_LOGLEVEL)")
    return parser.parse_args(argv)


def run(params: DemoParams, out: str, jobs: int = 1) -> dict:
    """Generate the demo cohort into ``out`` (in-process entry point); → its summary."""
    return generate_cohort(out, seed=params.seed, n_patients=params.n_patients, n_mif=params.n_mif, jobs=jobs)


@stage_main("pathomix.demo")
def main(argv: list[str] | None = None) -> int:
    """Generate the demo cohort: 0 on success, 1 on bad counts (logged, no traceback)."""
    args = parse_args(argv)
    if args.log_level:
        logging.getLogger().setLevel(args.log_level.upper())
    run(DemoParams(args.seed, args.n_patients, args.n_mif), args.out, args.jobs)
    return 0
