"""Command line: ``python -m pathomix.demo --out DIR [--seed 0] [--n-patients 36] [--n-mif 12] [--jobs 1]``."""

from __future__ import annotations

import argparse
import logging

from pathomix.demo.generate import generate_cohort

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m pathomix.demo",
        description="Generate the synthetic demo cohort (slides, mIF, clinical, genes) into a folder.",
    )
    parser.add_argument("--out", required=True, help="output folder (slides.tsv is written last)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed => same content")
    parser.add_argument("--n-patients", type=int, default=36, help="patients, split equally over 3 classes")
    parser.add_argument("--n-mif", type=int, default=12, help="patients that also get a 7-channel mIF image")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes rendering images (0 = one per CPU, up to 4); content does not depend on it")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    if args.n_patients < 3:
        parser.error("--n-patients must be at least 3 (one per WHO-2021 class)")
    if not 0 <= args.n_mif <= args.n_patients:
        parser.error("--n-mif must be between 0 and --n-patients")
    return args


def main(argv: list[str] | None = None) -> int:
    """Generate the demo cohort; returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    generate_cohort(args.out, seed=args.seed, n_patients=args.n_patients, n_mif=args.n_mif, jobs=args.jobs)
    return 0
