# Evaluation: metrics with bootstrap CIs, the comparison table and figures over every model × task × fold;
# the gene view and the provenance record. Every report-tagged output is declared here in advance.
from pathomix.evaluate import layout as L
from pathomix.io.tasks import TASKS

EVAL = config["evaluate"]
EXTERNAL = config["splits"].get("external_cohorts") or []
FIGURE_LABEL = {"roc": "ROC + confusion matrix", "km": "Kaplan–Meier by predicted risk",
                "calibration": "reliability diagram", "training": "loss and validation metric per epoch"}


def marker_output(m, t, name):
    """mIF models: the attention per marker, next to the model's slide heatmaps."""
    return report(str(P.figures(RESULTS) / name), category=CATEGORY["heatmaps"], subcategory=m,
                  labels={"model": m, "head": f"per mIF marker ({t})"}, caption="../report/markers.rst")


def figure_outputs():
    """Named, report-tagged outputs: one per model × task × figure kind of the task's kind."""
    out = {}
    for m, t in MODEL_TASKS:
        for kind, name in L.figure_names(m, t, TASKS[t].kind, mif=model_inputs(m, VARIANTS)["mif"]).items():
            if kind == L.MARKER_FIGURE:
                out[f"{kind}_{m}_{t}"] = marker_output(m, t, name)
                continue
            out[f"{kind}_{m}_{t}"] = report(str(P.figures(RESULTS) / name), category=CATEGORY[kind],
                                            subcategory=t, labels={"model": m, "figure": FIGURE_LABEL[kind]},
                                            caption=f"../report/{kind}.rst")
    return out


def cohort_outputs():
    if not EXTERNAL:
        return {}
    cat = dict(category=CATEGORY["cohorts"], caption="../report/cohorts.rst")
    return {"cohorts_html": report(str(P.cohorts(RESULTS, "html")), **cat, labels={"table": "per cohort"}),
            "cohorts_csv": report(str(P.cohorts(RESULTS, "csv")), **cat, labels={"table": "per cohort (CSV)"})}


def table(path, label):
    return report(path, category=CATEGORY["comparison"], caption="../report/comparison.rst", labels={"table": label})


rule evaluate:
    input:
        predictions=model_outputs(P.PREDICTIONS),
        histories=model_outputs(P.HISTORY),
    output:
        metrics=str(P.metrics(RESULTS)),
        comparison_html=table(str(P.comparison(RESULTS, "html")), "comparison (mean ± sd, pooled [95 % CI])"),
        comparison_csv=table(str(P.comparison(RESULTS, "csv")), "comparison, CSV for papers"),
        summary=table(str(P.summary(RESULTS)), "summary, long numeric CSV"),
        summary_png=table(str(P.summary_figure(RESULTS)), "pooled AUC / C-index with 95 % CI"),
        **cohort_outputs(),
        **figure_outputs(),
    params:
        figures=str(P.figures(RESULTS)),
        cohorts=lambda w, output: (f"--cohorts-csv {shlex.quote(output.cohorts_csv)} "
                                   f"--cohorts-html {shlex.quote(output.cohorts_html)}" if EXTERNAL else ""),
        cfg=json.dumps({**{k: v for k, v in EVAL.items() if k != "heatmaps"}, "external_cohorts": EXTERNAL},
                       sort_keys=True),
        code=code_hash("evaluate"),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    threads: 1
    resources:
        **class_resources("cpu"),
    shell:
        "python -m pathomix.evaluate --predictions {input.predictions:q} --params {params.cfg:q} "
        "--out {output.metrics:q} --summary {output.summary:q} --figures {params.figures:q} "
        "--comparison-csv {output.comparison_csv:q} --comparison-html {output.comparison_html:q} "
        "{params.cohorts} > {log:q} 2>&1"


def subspace_model_checkpoints(wildcards=None):
    """checkpoint.pt of every task and fold of the first model that reads the gene subspaces."""
    teachers = [m for m in config["train"]["models"] if resolve(m, VARIANTS).model == "dmsf_teacher"]
    if not teachers:
        return []
    return model_outputs(P.CHECKPOINT, models=teachers[:1])


rule gene_view:
    input:
        genes=config["genes"] or [],
        importance=subspace_model_checkpoints,
        hvg=str(P.hvg(RESULTS)),
        subspaces=str(P.subspaces(RESULTS)),
    output:
        report(str(P.gene_view(RESULTS)), category=CATEGORY["genes"], caption="../report/genes.rst",
               labels={"figure": "HVG selection and top genes per subspace"}),
    params:
        genes=lambda w, input: f"--genes {shlex.quote(input.genes)}" if input.genes else "",
        cfg=subtree("genes_params"),
        code=code_hash("evaluate"),
    log:
        f"{LOGS}/gene_view.log",
    benchmark:
        f"{BENCH}/gene_view.tsv"
    threads: 1
    resources:
        **class_resources("light"),
    shell:
        "python -m pathomix.evaluate.gene_view {params.genes} --hvg {input.hvg:q} --subspaces {input.subspaces:q} "
        "--importance {input.importance:q} --params {params.cfg:q} --out {output:q} > {log:q} 2>&1"


rule provenance:
    input:
        metrics=str(P.metrics(RESULTS)),  # recorded after each evaluation: its date is the results' date
        manifest=str(P.manifest(RESULTS, ENCODER)) if config.get("slides") else [],
    output:
        json=report(str(P.provenance(RESULTS, "json")), category=CATEGORY["provenance"],
                    caption="../report/provenance.rst", labels={"record": "JSON"}),
        html=report(str(P.provenance(RESULTS, "html")), category=CATEGORY["provenance"],
                    caption="../report/provenance.rst", labels={"record": "config, versions, weights, commit"}),
    params:
        cfg=json.dumps(config, sort_keys=True, default=str),
        manifest=lambda w, input: f"--manifest {shlex.quote(input.manifest)}" if input.manifest else "",
        workflow=workflow.basedir,
        code=hashlib.sha256((SRC / "provenance.py").read_bytes()).hexdigest()[:16],
    log:
        f"{LOGS}/provenance.log",
    benchmark:
        f"{BENCH}/provenance.tsv"
    threads: 1
    resources:
        **class_resources("light"),
    shell:
        "python -m pathomix.provenance --config-json {params.cfg:q} --workflow-dir {params.workflow:q} "
        "{params.manifest} --out-json {output.json:q} --out-html {output.html:q} > {log:q} 2>&1"

