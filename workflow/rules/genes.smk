# Genes: log transform, highly variable genes, tumour/TME subspaces; per fold, on its training patients only.


rule hvg:
    input:
        genes=config["genes"] or [],
        clinical=config["clinical"],
        folds=str(P.folds(RESULTS)),
    output:
        hvg=str(P.hvg(RESULTS, "{fold}")),
        subspaces=str(P.subspaces(RESULTS, "{fold}")),
    log:
        f"{LOGS}/hvg/fold{{fold}}.log",
    benchmark:
        f"{BENCH}/hvg/fold{{fold}}.tsv"
    wildcard_constraints:
        fold=r"\d+",
    threads: 1
    resources:
        **class_resources("cpu"),
    params:
        cfg=subtree("genes_params"),
        code=code_hash("genes"),
    shell:
        "python -m pathomix.genes --genes {input.genes:q} --clinical {input.clinical:q} "
        "--folds {input.folds:q} --fold {wildcards.fold} --params {params.cfg:q} --out {output.hvg:q} "
        "--out-subspaces {output.subspaces:q} > {log:q} 2>&1"
