# Evaluation: metrics with bootstrap CIs and figures over every model × task × fold.


def all_predictions(wildcards=None):
    return [str(P.model_dir(RESULTS, m, t, k) / "predictions.parquet")
            for m in config["train"]["models"] for t in config["train"]["tasks"] for k in FOLDS]


rule evaluate:
    input:
        all_predictions,
    output:
        metrics=str(P.metrics(RESULTS)),
        summary=report(f"{RESULTS}/eval/summary.csv", category="Metrics", caption="../report/summary.rst"),
        figures=report(
            [str(P.figures(RESULTS) / f"{m}_{t}.png") for m in config["train"]["models"]
             for t in config["train"]["tasks"]] + [str(P.figures(RESULTS) / "summary.png")],
            category="Figures", caption="../report/figures.rst"),
    params:
        figures=str(P.figures(RESULTS)),
        cfg=subtree("evaluate"),
        code=code_hash("evaluate"),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    threads: 1
    shell:
        "python -m pathomix.evaluate --predictions {input:q} --params {params.cfg:q} --out {output.metrics:q} "
        "--summary {output.summary:q} --figures {params.figures:q} > {log:q} 2>&1"
