# Feature extraction: one job per batch of slides (tile_extract_batch: tiling and the first extracted encoder;
# extract_batch: further encoders), or with slide_batches.size: 0 one job per slide and encoder (extract). Every encoder of features.encoders has its own folder,
# features/{encoder}/, and jobs (the {encoder} wildcard, constrained to the configured names); its job's params
# name only its encoder (extract_cfg), so adding an encoder reruns nothing of another. Imported stores
# (features.import) are converted by import_features, one light job per slide, with no tiling or extraction.
# What the rules share is written once: EXTRACT_*, resources.
EXTRACT_CODE = code_hash("features")
# GPU: the DataLoader workers plus the main process (slides one after another); CPU: slides side by side
EXTRACT_THREADS = class_threads("gpu_io", local=config["features"]["num_workers"] + 2 if GPU else 1)
# background tiling processes of a tile_extract_batch job (slide_batches.overlap): one tiles a slide in
# ~0.9 s, faster than a GPU encodes it (~1.9 s); on CPU none, the two would only share the same cores
TILE_WORKERS = int(OVERLAP)


rule extract:
    input:
        slide=lambda w: slide_row(w)["path"],
        channels=channel_sheet,
        tiles=slide_tile_inputs,
    output:
        [str(P.features(RESULTS, "{encoder}", m, "{slide_id}")) for m in MAGS],
    log:
        f"{LOGS}/extract/{{encoder}}/{{slide_id}}.log",
    benchmark:
        f"{BENCH}/extract/{{encoder}}/{{slide_id}}.tsv"
    wildcard_constraints:
        encoder=EXTRACTED_NAMES,
    threads: EXTRACT_THREADS
    resources:
        **class_resources("gpu_io"),
    params:
        modality=lambda w: slide_row(w)["modality"],
        mpp=lambda w: slide_row(w)["mpp_flag"],
        channels=channels_flag,
        cfg=lambda w: extract_cfg(w.encoder),
        on_bad_tile=config["features"]["on_bad_tile"],
        code=EXTRACT_CODE,
        # the stores (the input may be their batch's marker); `output`: evaluated at run time, not a rerun trigger
        tiles=lambda w, output: " ".join(shlex.quote(t) for t in tile_store_paths([w.slide_id])),
    shell:
        "python -m pathomix.features --slide-id={wildcards.slide_id:q} --path={input.slide:q} "
        "--modality {params.modality} {params.mpp} {params.channels} --tiles {params.tiles} "
        "--out {output:q} --params {params.cfg:q} --on-bad-tile {params.on_bad_tile} --threads {threads} "
        "--code {params.code} > {log:q} 2>&1"


rule extract_batch:
    input:
        tiles=str(P.tile_batch(RESULTS, "{batch}")),
        channels=batch_channel_sheet,
    output:
        str(P.feature_batch(RESULTS, "{encoder}", "{batch}")),
    log:
        f"{LOGS}/extract/{{encoder}}/batch{{batch}}.log",
    benchmark:
        f"{BENCH}/extract/{{encoder}}/batch{{batch}}.tsv"
    wildcard_constraints:
        batch=r"\d+",
        encoder=EXTRACTED_NAMES,
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
        cfg=lambda w: extract_cfg(w.encoder),
        on_bad_tile=config["features"]["on_bad_tile"],
        code=EXTRACT_CODE,
    shell:
        "python -m pathomix.batch extract --members {params.members:q} --results {params.results:q} --mag {params.mags} "
        "--encoder {params.encoder} --params {params.cfg:q} --code {params.code} --on-bad-tile {params.on_bad_tile} "
        "{params.channels} --threads {threads} --out {output:q} > {log:q} 2>&1"


if EXTRACT_ENCODERS:

    ruleorder: tile_extract_batch > extract_batch
    ruleorder: tile_extract_batch > tile_batch

    # A batch of slides, tiled and encoded with the first extracted encoder in one job: one start-up, and with
    # TILE_WORKERS (slide_batches.overlap: on GPU nodes) tiling runs ahead in a background process, so slide
    # k+1 tiles while slide k is encoded. Other encoders' extract_batch jobs read the tiles it writes.
    rule tile_extract_batch:
        input:
            channels=batch_channel_sheet,
        output:
            tiles=str(P.tile_batch(RESULTS, "{batch}")),
            features=str(P.feature_batch(RESULTS, EXTRACT_ENCODERS[0], "{batch}")),
        log:
            f"{LOGS}/tile_extract/{EXTRACT_ENCODERS[0]}/batch{{batch}}.log",
        benchmark:
            f"{BENCH}/tile_extract/{EXTRACT_ENCODERS[0]}/batch{{batch}}.tsv"
        wildcard_constraints:
            batch=r"\d+",
        threads: EXTRACT_THREADS + TILE_WORKERS
        resources:
            **class_resources("gpu_io", runtime=120),
        params:
            members=batch_members,
            slides=batch_slide_state,
            results=lambda w, output: str(Path(output.tiles).parents[2]),
            mags=TILING_PARAMS["mags"],
            target_mpp=TILING_PARAMS["target_mpp"],
            tile_cfg=TILING_PARAMS["cfg"],
            tile_code=TILING_PARAMS["code"],
            channels=channels_flag,
            cfg=extract_cfg(EXTRACT_ENCODERS[0]),
            on_bad_tile=config["features"]["on_bad_tile"],
            code=EXTRACT_CODE,
        shell:
            shell_command(
                "python -m pathomix.batch tile-extract --members {params.members:q} --results {params.results:q}",
                "--mag {params.mags} --target-mpp {params.target_mpp} --tile-params {params.tile_cfg:q}",
                f"--tile-code {{params.tile_code}} --tile-workers {TILE_WORKERS} --tile-out {{output.tiles:q}}",
                f"--encoder {EXTRACT_ENCODERS[0]} --params {{params.cfg:q}} --code {{params.code}}",
                "--on-bad-tile {params.on_bad_tile} {params.channels} --threads {threads}",
                "--out {output.features:q} > {log:q} 2>&1",
            )


rule manifest:
    input:
        sheet=config["slides"] or [],
        stores=feature_stores,
    output:
        str(P.manifest(RESULTS, "{encoder}")),
    log:
        f"{LOGS}/manifest/{{encoder}}.log",
    benchmark:
        f"{BENCH}/manifest/{{encoder}}.tsv"
    wildcard_constraints:
        encoder=ENCODER_NAMES,
    threads: 1
    resources:
        **class_resources("light"),
    params:
        source=lambda w: (
            f"--encoder {w.encoder} --stores" if w.encoder in IMPORTS else "--batches" if batch_map() else "--stores"
        ),
        code=EXTRACT_CODE,
    shell:
        "python -m pathomix.features.manifest --slides {input.sheet:q} {params.source} {input.stores:q} "
        "--out {output:q} > {log:q} 2>&1"


ruleorder: import_features > extract  # a slide an import lacks: extract with features.import.<name>.fallback


rule import_features:
    input:
        source=import_source,
    output:
        f"{RESULTS}/features/{{encoder}}/{{mag}}/{{slide_id}}.h5",  # P.features with a {mag} wildcard
    log:
        f"{LOGS}/import/{{encoder}}/{{mag}}/{{slide_id}}.log",
    benchmark:
        f"{BENCH}/import/{{encoder}}/{{mag}}/{{slide_id}}.tsv"
    wildcard_constraints:
        encoder=IMPORTED_NAMES,
        mag=r"[^/]+",
    threads: 1
    resources:
        **class_resources("light"),
    params:
        fmt=lambda w: import_plan(w.encoder).layout,
        target_mpp=lambda w: config["tiling"]["magnifications"][w.mag],
        slide=lambda w: import_slide_flags(w.slide_id),
        code=hashlib.sha256((SRC / "io" / "imported.py").read_bytes()).hexdigest()[:16],
    shell:
        "python -m pathomix.io.imported --slide-id {wildcards.slide_id:q} --source {input.source:q} "
        "--format {params.fmt} --encoder {wildcards.encoder:q} --mag {wildcards.mag} "
        "--target-mpp {params.target_mpp} {params.slide} --out {output:q} > {log:q} 2>&1"
