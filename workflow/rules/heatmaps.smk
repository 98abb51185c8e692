# Slide heatmaps: attention of the tile models on chosen slides, one grid figure per model × attention head
# (H&E models on H&E slides, mIF models such as fluoroformer on mIF images). The heads are whatever the
# models wrote (attention.parquet next to each predictions.parquet), so the figures live in a directory
# output and the report picks them up by pattern. With several encoders the heatmaps draw the primary (first)
# encoder's models, which keep their plain names (an imported primary encoder: tiles placed by its stores' coords).


rule heatmaps:
    input:
        predictions=model_outputs(P.PREDICTIONS, models=tile_models()),
        sheet=config["slides"] or [],
        slides=heatmap_slides,
        tiles=lambda w: heatmap_coords(drawn_slides().slide_id, inputs=True),
    output:
        grids=report(
            directory(str(P.heatmaps(RESULTS))),
            patterns=[P.HEATMAP_GRID],
            category=CATEGORY["heatmaps"],
            subcategory="{model}",
            caption="../report/heatmaps.rst",
            labels={"model": "{model}", "head": "{head}"},
        ),
        export=directory(str(P.heatmap_exports(RESULTS))),
    log:
        f"{LOGS}/heatmaps.log",
    benchmark:
        f"{BENCH}/heatmaps.tsv"
    threads: 1
    resources:
        **class_resources("cpu"),
    params:
        tiles=lambda w: shlex.quote(heatmap_store_folder()),
        cfg=json.dumps(config["evaluate"].get("heatmaps") or {}, sort_keys=True),
        code=code_hash("evaluate"),
    shell:
        "python -m pathomix.evaluate.heatmaps --predictions {input.predictions:q} --slides {input.sheet:q} "
        "--tiles {params.tiles} --params {params.cfg:q} --out {output.grids:q} --export {output.export:q} "
        "> {log:q} 2>&1"
