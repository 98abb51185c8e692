# Patient-level stratified k-fold splits (external cohorts held out, from the slides sheet's `cohort`).


rule splits:
    input:
        clinical=config["clinical"],
        slides=config["slides"] or [],
    output:
        str(P.folds(RESULTS)),
    log:
        f"{LOGS}/splits.log",
    benchmark:
        f"{BENCH}/splits.tsv"
    threads: 1
    resources:
        **class_resources("light"),
    params:
        cfg=subtree("splits"),
        slides=lambda w, input: f"--slides {shlex.quote(input.slides)}" if input.slides else "",
        code=code_hash("splits"),
    shell:
        "python -m pathomix.splits --clinical {input.clinical:q} {params.slides} --params {params.cfg:q} "
        "--out {output:q} > {log:q} 2>&1"
