# pathomix: WSI + mIF + genes → features → teacher/student models → evaluation → report.
# Run: snakemake --cores all   (profiles/default is picked up automatically)
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


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


rule all:
    input:
        all_targets,
    default_target: True
