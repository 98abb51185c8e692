# Tiling: batches of slides (slide_batches, pathomix.batch.policy) are tiled by tile_extract_batch (features.smk),
# together with their extraction; tile_batch tiles a batch where nothing is extracted (models reading tile images
# of imported stores' slides). slide_batches.size: 0: rule tile, one job per slide, every magnification (coords
# h5 + QC thumbnail per magnification). Same stores either way; a batch rerun redoes only stale slides.
# What both rules share is written once: TILING_PARAMS, TILING_ARGS, the log/benchmark folders, resources.
TILING_PARAMS = {
    "mags": " ".join(MAGS),
    "target_mpp": " ".join(str(v) for v in config["tiling"]["magnifications"].values()),
    "cfg": subtree("tiling", drop=("magnifications",)),
    "code": code_hash("tiling"),
}
TILING_ARGS = "--mag {params.mags} --target-mpp {params.target_mpp} --params {params.cfg:q}"


rule tile:
    input:
        slide=lambda w: slide_row(w)["path"],
        channels=channel_sheet,
    output:
        tiles=[str(P.tiles(RESULTS, m, "{slide_id}")) for m in MAGS],
        qc=[
            report(
                str(P.tile_qc(RESULTS, m, "{slide_id}")),
                category="Tiling QC",
                subcategory=m,
                caption="../report/tiling.rst",
            )
            for m in MAGS
        ],
    log:
        f"{LOGS}/tile/{{slide_id}}.log",
    benchmark:
        f"{BENCH}/tile/{{slide_id}}.tsv"
    threads: 1
    resources:
        **class_resources("cpu", runtime=10),
    params:
        **TILING_PARAMS,
        modality=lambda w: slide_row(w)["modality"],
        mpp=lambda w: slide_row(w)["mpp_flag"],
        channels=channels_flag,
    shell:
        shell_command(
            "python -m pathomix.tiling --slide-id={wildcards.slide_id:q} --path={input.slide:q}",
            "--modality {params.modality} {params.mpp} {params.channels}",
            TILING_ARGS,
            "--out {output.tiles:q} --qc {output.qc:q} --code {params.code} > {log:q} 2>&1",
        )


rule tile_batch:
    input:
        channels=batch_channel_sheet,
    output:
        str(P.tile_batch(RESULTS, "{batch}")),
    log:
        f"{LOGS}/tile/batch{{batch}}.log",
    benchmark:
        f"{BENCH}/tile/batch{{batch}}.tsv"
    wildcard_constraints:
        batch=r"\d+",
    threads: 1
    resources:
        **class_resources("cpu", runtime=60),
    params:
        **TILING_PARAMS,
        members=batch_members,
        slides=batch_slide_state,
        results=lambda w, output: str(Path(output[0]).parents[2]),  # from the output: not a rerun trigger
        channels=channels_flag,
    shell:
        shell_command(
            "python -m pathomix.batch tile --members {params.members:q} --results {params.results:q}",
            TILING_ARGS,
            "--code {params.code} {params.channels} --out {output:q} > {log:q} 2>&1",
        )


rule tiling_qc:  # batch runs: the QC images the batch jobs wrote, gathered for the report (one light job)
    input:
        markers=lambda w: [str(P.tile_batch(RESULTS, b)) for b in sorted(batch_map())],
    output:
        report(
            directory(f"{RESULTS}/tiles/qc_report"),
            patterns=["{name}.png"],
            category="Tiling QC",
            caption="../report/tiling.rst",
        ),
    log:
        f"{LOGS}/tile/qc_report.log",
    benchmark:
        f"{BENCH}/tile/qc_report.tsv"
    threads: 1
    resources:
        **class_resources("light"),
    params:
        results=lambda w, output: str(Path(output[0]).parents[1]),  # from the output: not a rerun trigger
    shell:
        "python -m pathomix.batch.qc_report --markers {input.markers:q} --results {params.results:q} "
        "--out {output:q} > {log:q} 2>&1"
