# Feature extraction: one job per slide, every magnification, one encoder load; large cohorts: one job per
# batch of slides (see tiling.smk). What both rules share is written once: EXTRACT_*, resources.
EXTRACT_CFG = subtree("features")
EXTRACT_CODE = code_hash("features")
# GPU: the DataLoader workers plus the main process (slides one after another); CPU: slides side by side
EXTRACT_THREADS = class_threads("gpu_io", local=config["features"]["num_workers"] + 2 if GPU else 1)


rule extract:
    input:
        slide=lambda w: slide_row(w)["path"],
        channels=channel_sheet,
        tiles=[str(P.tiles(RESULTS, m, "{slide_id}")) for m in MAGS],
    output:
        [str(P.features(RESULTS, ENCODER, m, "{slide_id}")) for m in MAGS],
    log:
        f"{LOGS}/extract/{{slide_id}}.log",
    benchmark:
        f"{BENCH}/extract/{{slide_id}}.tsv"
    threads: EXTRACT_THREADS
    resources:
        **class_resources("gpu_io"),
    params:
        modality=lambda w: slide_row(w)["modality"],
        mpp=lambda w: slide_row(w)["mpp_flag"],
        channels=channels_flag,
        cfg=EXTRACT_CFG,
        on_bad_tile=config["features"]["on_bad_tile"],
        code=EXTRACT_CODE,
    shell:
        "python -m pathomix.features --slide-id={wildcards.slide_id:q} --path={input.slide:q} "
        "--modality {params.modality} {params.mpp} {params.channels} --tiles {input.tiles:q} "
        "--out {output:q} --params {params.cfg:q} --on-bad-tile {params.on_bad_tile} --threads {threads} "
        "--code {params.code} > {log:q} 2>&1"


rule extract_batch:
    input:
        tiles=str(P.tile_batch(RESULTS, "{batch}")),
        channels=batch_channel_sheet,
    output:
        str(P.feature_batch(RESULTS, ENCODER, "{batch}")),
    log:
        f"{LOGS}/extract/batch{{batch}}.log",
    benchmark:
        f"{BENCH}/extract/batch{{batch}}.tsv"
    wildcard_constraints:
        batch=r"\d+",
    threads: EXTRACT_THREADS
    resources:
        **class_resources("gpu_io", runtime=120),
    params:
        members=batch_members,
        # results_dir and encoder from the output's path (derived params are not rerun triggers)
        results=lambda w, output: str(Path(output[0]).parents[3]),
        encoder=lambda w, output: Path(output[0]).parents[1].name,
        channels=channels_flag,
        mags=" ".join(MAGS),
        cfg=EXTRACT_CFG,
        on_bad_tile=config["features"]["on_bad_tile"],
        code=EXTRACT_CODE,
    shell:
        "python -m pathomix.batch extract --members {params.members:q} --results {params.results:q} --mag {params.mags} "
        "--encoder {params.encoder} --params {params.cfg:q} --code {params.code} --on-bad-tile {params.on_bad_tile} "
        "{params.channels} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule manifest:
    input:
        sheet=config["slides"] or [],
        stores=feature_stores,
    output:
        str(P.manifest(RESULTS, ENCODER)),
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCH}/manifest.tsv"
    threads: 1
    resources:
        **class_resources("light"),
    params:
        source=lambda w: "--batches" if batch_map() else "--stores",
        code=EXTRACT_CODE,
    shell:
        "python -m pathomix.features.manifest --slides {input.sheet:q} {params.source} {input.stores:q} "
        "--out {output:q} > {log:q} 2>&1"
