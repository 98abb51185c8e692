# The embedded demo cohort, generated when missing (a checkpoint: the slide sheet drives the DAG).


checkpoint demo:
    output:
        slides=f"{config['demo']['dir']}/slides.tsv",
        clinical=f"{config['demo']['dir']}/clinical.tsv",
        genes=f"{config['demo']['dir']}/genes.parquet",
        channels=f"{config['demo']['dir']}/mif_channels.tsv",
    log:
        f"{LOGS}/demo.log",
    benchmark:
        f"{BENCH}/demo.tsv"
    threads: 1
    resources:
        **class_resources("light"),
    params:
        # the folder of the outputs (a function: a plain string that prefixes outputs is a lint)
        out=lambda w: config["demo"]["dir"],
        seed=config["demo"]["seed"],
        n_patients=config["demo"]["n_patients"],
        n_mif=config["demo"]["n_mif"],
    shell:
        "python -m pathomix.demo --out {params.out:q} --seed {params.seed} "
        "--n-patients {params.n_patients} --n-mif {params.n_mif} > {log:q} 2>&1"
