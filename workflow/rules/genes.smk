# Genes: log transform, highly variable genes, tumour/TME subspaces.


rule hvg:
    input:
        genes=config["genes"] or [],
        clinical=config["clinical"],
    output:
        hvg=str(P.hvg(RESULTS)),
        subspaces=str(P.subspaces(RESULTS)),
    log:
        f"{LOGS}/hvg.log",
    benchmark:
        f"{BENCH}/hvg.tsv"
    threads: 1
    resources:
        **class_resources("cpu"),
    params:
        cfg=subtree("genes_params"),
        code=code_hash("genes"),
    shell:
        "python -m pathomix.genes --genes {input.genes:q} --clinical {input.clinical:q} "
        "--params {params.cfg:q} --out {output.hvg:q} --out-subspaces {output.subspaces:q} > {log:q} 2>&1"
