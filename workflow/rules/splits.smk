# Patient-level stratified k-fold splits.


rule splits:
    input:
        clinical=config["clinical"],
    output:
        str(P.folds(RESULTS)),
    params:
        cfg=subtree("splits"),
        code=code_hash("splits"),
    log:
        f"{LOGS}/splits.log",
    benchmark:
        f"{BENCH}/splits.tsv"
    threads: 1
    shell:
        "python -m pathomix.splits --clinical {input.clinical:q} --params {params.cfg:q} "
        "--out {output:q} > {log:q} 2>&1"
