# Feature extraction: one job per slide, every magnification, one encoder load.


rule extract:
    input:
        slide=lambda w: slide_row(w)["path"],
        channels=channel_sheet,
        tiles=[str(P.tiles(RESULTS, m, "{slide_id}")) for m in MAGS],
    output:
        [str(P.features(RESULTS, ENCODER, m, "{slide_id}")) for m in MAGS],
    params:
        modality=lambda w: slide_row(w)["modality"],
        mpp=lambda w: slide_row(w)["mpp_flag"],
        channels=channels_flag,
        cfg=subtree("features"),
        on_bad_tile=config["features"]["on_bad_tile"],
        code=code_hash("features"),
    log:
        f"{LOGS}/extract/{{slide_id}}.log",
    benchmark:
        f"{BENCH}/extract/{{slide_id}}.tsv"
    # GPU: the DataLoader workers plus the main process (slides one after another); CPU: slides side by side
    threads: config["features"]["num_workers"] + 2 if GPU else 1
    resources:
        mem_mb=8000,
        gpu=GPU,
    shell:
        "python -m pathomix.features --slide-id {wildcards.slide_id:q} --path {input.slide:q} "
        "--modality {params.modality} {params.mpp} {params.channels} --tiles {input.tiles:q} "
        "--out {output:q} --params {params.cfg:q} --on-bad-tile {params.on_bad_tile} --threads {threads} "
        "--code {params.code} > {log:q} 2>&1"


rule extract_batch:  # large cohorts: one job per batch of slides (see rule tile_batch)
    input:
        tiles=str(P.tile_batch(RESULTS, "{batch}")),
        channels=batch_channel_sheet,
    output:
        str(P.feature_batch(RESULTS, ENCODER, "{batch}")),
    params:
        members=lambda w: json.dumps(batch_map()[int(w.batch)]),
        channels=channels_flag,
        mags=" ".join(MAGS),
        cfg=subtree("features"),
        on_bad_tile=config["features"]["on_bad_tile"],
        code=code_hash("features"),
    wildcard_constraints:
        batch=r"\d+",
    log:
        f"{LOGS}/extract/batch{{batch}}.log",
    benchmark:
        f"{BENCH}/extract/batch{{batch}}.tsv"
    threads: config["features"]["num_workers"] + 2 if GPU else 1
    resources:
        mem_mb=8000,
        gpu=GPU,
    shell:
        "python -m pathomix.batch extract --members {params.members:q} --results {RESULTS:q} --mag {params.mags} "
        "--encoder {ENCODER} --params {params.cfg:q} --code {params.code} --on-bad-tile {params.on_bad_tile} "
        "{params.channels} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule manifest:
    input:
        sheet=config["slides"] or [],
        stores=feature_stores,
    output:
        str(P.manifest(RESULTS, ENCODER)),
    params:
        source=lambda w: "--batches" if batch_map() else "--stores",
        code=code_hash("features"),
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCH}/manifest.tsv"
    threads: 1
    shell:
        "python -m pathomix.features.manifest --slides {input.sheet:q} {params.source} {input.stores:q} "
        "--out {output:q} > {log:q} 2>&1"
