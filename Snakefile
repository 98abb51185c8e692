# pathomix: WSI + mIF + genes → features → teacher/student models → evaluation → report.
# Run: snakemake --cores all   (profiles/default is picked up automatically)
# SLURM: snakemake --profile profiles/slurm --workflow-profile none   (README: Running on a SLURM cluster)
from pathlib import Path

import yaml
from snakemake.logging import logger
from snakemake.utils import min_version, validate

from pathomix.config import coerce_to_schema, move_legacy_keys

min_version("9.0")


# the working directory's config.yaml, else the workflow's own (the demo); --configfile adds to it
configfile: "config.yaml" if Path("config.yaml").exists() else f"{workflow.basedir}/config.yaml"


with open(f"{workflow.basedir}/workflow/schemas/config.schema.yaml") as f:
    config.update(coerce_to_schema(config, yaml.safe_load(f)))  # nested --config values arrive as str
for _moved in move_legacy_keys(config):  # e.g. tiling.on_bad_tile → features.on_bad_tile
    logger.warning(_moved)
validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tiling.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/genes.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/heatmaps.smk"


rule all:
    default_target: True
    input:
        all_targets,


onerror:
    # a job's log may sit on the disk that filled up: say it here, on the terminal
    from pathomix.io.atomic import low_space_warning

    for _where in dict.fromkeys([RESULTS, ".snakemake"]):
        if _warning := low_space_warning(_where):
            logger.error(f"pathomix: {_warning}")
