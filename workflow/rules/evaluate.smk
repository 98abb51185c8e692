# Evaluation: metrics with bootstrap CIs, the comparison table and figures over every model × task × fold;
# the gene view and the provenance record. Every report-tagged output is declared here in advance.
# Its helpers (figure_outputs, cohort_outputs, table, ...) are in common.smk.
EVAL = config["evaluate"]


rule evaluate:
    input:
        predictions=evaluated_outputs(P.PREDICTIONS),
        histories=evaluated_outputs(P.HISTORY),
    output:
        **cohort_outputs(),
        **selection_outputs(),
        **encoder_outputs(),
        **figure_outputs(),
        metrics=str(P.metrics(RESULTS)),
        comparison_html=table(str(P.comparison(RESULTS, "html")), "comparison (mean ± sd, pooled [95 % CI])"),
        comparison_csv=table(str(P.comparison(RESULTS, "csv")), "comparison, CSV for papers"),
        summary=table(str(P.summary(RESULTS)), "summary, long numeric CSV"),
        summary_png=table(str(P.summary_figure(RESULTS)), "pooled AUC / C-index with 95 % CI"),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    threads: 1
    resources:
        **class_resources("cpu"),
    params:
        figures=lambda w, output: str(Path(output.summary_png).parent),
        selection=lambda w, output: (
            f"--selection-csv {shlex.quote(output.selection_csv)} --selection-html {shlex.quote(output.selection_html)}"
            if SELECTIONS
            else ""
        ),
        cohorts=lambda w, output: (
            f"--cohorts-csv {shlex.quote(output.cohorts_csv)} " f"--cohorts-html {shlex.quote(output.cohorts_html)}"
            if EXTERNAL
            else ""
        ),
        encoders=lambda w, output: (
            f"--encoders-csv {shlex.quote(output.encoders_csv)} --encoders-html {shlex.quote(output.encoders_html)}"
            if len(ENCODERS) > 1
            else ""
        ),
        cfg=json.dumps(
            {**{k: v for k, v in EVAL.items() if k != "heatmaps"}, "external_cohorts": EXTERNAL}, sort_keys=True
        ),
        code=code_hash("evaluate"),
    shell:
        "python -m pathomix.evaluate --predictions {input.predictions:q} --params {params.cfg:q} "
        "--out {output.metrics:q} --summary {output.summary:q} --figures {params.figures:q} "
        "--comparison-csv {output.comparison_csv:q} --comparison-html {output.comparison_html:q} "
        "{params.cohorts} {params.selection} {params.encoders} > {log:q} 2>&1"


rule gene_view:
    input:
        genes=config["genes"] or [],
        importance=subspace_model_checkpoints,
        hvg=str(P.hvg(RESULTS, 0)),  # the figure shows fold 0's selection
        subspaces=str(P.subspaces(RESULTS, 0)),
    output:
        report(
            str(P.gene_view(RESULTS)),
            category=CATEGORY["genes"],
            caption="../report/genes.rst",
            labels={"figure": "HVG selection and top genes per subspace"},
        ),
    log:
        f"{LOGS}/gene_view.log",
    benchmark:
        f"{BENCH}/gene_view.tsv"
    threads: 1
    resources:
        **class_resources("light"),
    params:
        genes=lambda w, input: f"--genes {shlex.quote(input.genes)}" if input.genes else "",
        cfg=subtree("genes_params"),
        code=code_hash("evaluate"),
    shell:
        "python -m pathomix.evaluate.gene_view {params.genes} --hvg {input.hvg:q} --subspaces {input.subspaces:q} "
        "--importance {input.importance:q} --params {params.cfg:q} --out {output:q} > {log:q} 2>&1"


rule provenance:
    input:
        metrics=str(P.metrics(RESULTS)),  # recorded after each evaluation: its date is the results' date
        manifest=[str(P.manifest(RESULTS, e)) for e in ENCODERS] if config.get("slides") else [],
    output:
        json=report(
            str(P.provenance(RESULTS, "json")),
            category=CATEGORY["provenance"],
            caption="../report/provenance.rst",
            labels={"record": "JSON"},
        ),
        html=report(
            str(P.provenance(RESULTS, "html")),
            category=CATEGORY["provenance"],
            caption="../report/provenance.rst",
            labels={"record": "config, versions, weights, commit"},
        ),
    log:
        f"{LOGS}/provenance.log",
    benchmark:
        f"{BENCH}/provenance.tsv"
    threads: 1
    resources:
        **class_resources("light"),
    params:
        cfg=json.dumps(config, sort_keys=True, default=str),
        manifest=lambda w, input: f"--manifest {' '.join(map(shlex.quote, input.manifest))}" if input.manifest else "",
        workflow=workflow.basedir,
        code=hashlib.sha256((SRC / "provenance.py").read_bytes()).hexdigest()[:16],
    shell:
        "python -m pathomix.provenance --config-json {params.cfg:q} --workflow-dir {params.workflow:q} "
        "{params.manifest} --out-json {output.json:q} --out-html {output.html:q} > {log:q} 2>&1"
