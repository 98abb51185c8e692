# Training: one job per model × task × fold (a student waits for its teacher of the same fold).
# `model` is a registered model or a variant (train.variants: ablations as config); each job gets
# only its own merged train: keys, so editing one variant reruns that variant alone.
# A joint model (umeml) trains on all its tasks in one job per fold: rule train_joint_<model>.

FOLDS = range(config["splits"]["n_folds"])
JOINT_MODELS = [m for m in config["train"]["models"] if is_joint(m, VARIANTS)]


def train_inputs(w):
    need = model_inputs(w.model, VARIANTS)
    inputs = {"clinical": config["clinical"], "folds": str(P.folds(RESULTS))}
    if need["wsi"] or need["mif"]:  # H&E and mIF feature stores are listed in one manifest
        inputs["manifest"] = str(P.manifest(RESULTS, ENCODER))
    if need["genes"]:
        inputs["hvg"], inputs["subspaces"] = str(P.hvg(RESULTS)), str(P.subspaces(RESULTS))
    if need["images"]:  # image models read the H&E tiles from the slides, through the coords stores
        he = slides()[slides().modality == "he"]
        inputs["slides"] = config["slides"]
        inputs["tiles"] = tile_dependencies(he.slide_id)
    if need["teacher"]:
        inputs["teacher"] = str(P.model_dir(RESULTS, need["teacher"], w.task, w.fold) / "checkpoint.pt")
    return inputs


def optional_flags(w, input):
    names = {"manifest": "--manifest", "hvg": "--hvg", "subspaces": "--subspaces",
             "teacher": "--teacher-checkpoint", "slides": "--slides"}
    flags = [f"{flag} {shlex.quote(input[k])}" for k, flag in names.items() if k in input.keys()]
    if "tiles" in input.keys():  # the folder of the stores (the input may be their batches' markers)
        flags.append(f"--tiles {shlex.quote(str(Path(RESULTS) / 'tiles'))}")
    v = resolve(w.model, VARIANTS)
    flags += [f"--model {v.model} --name {shlex.quote(v.name)}"]
    if v.teacher is not None:
        flags.append(f"--teacher-name {shlex.quote(v.teacher)}")
    elif model_inputs(v.model)["teacher"]:  # a distilled model trained from scratch
        flags.append("--scratch")
    return " ".join(flags)


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=str(P.model_dir(RESULTS, "{model}", "{task}", "{fold}") / "checkpoint.pt"),
        history=str(P.model_dir(RESULTS, "{model}", "{task}", "{fold}") / "history.parquet"),
        predictions=str(P.model_dir(RESULTS, "{model}", "{task}", "{fold}") / "predictions.parquet"),
    params:
        flags=optional_flags,
        out=lambda w, output: str(Path(output.checkpoint).parent),
        cfg=lambda w: json.dumps(job_params(w.model, config["train"]), sort_keys=True),
        code=code_hash("models", "train"),
    wildcard_constraints:
        fold=r"\d+",
        # not the joint models (their jobs train all tasks at once); the wildcard is followed by "/"
        model="(?!(?:{})(?:/|$))[^/]+".format("|".join(re.escape(m) for m in JOINT_MODELS)) if JOINT_MODELS else "[^/]+",
    log:
        f"{LOGS}/train/{{model}}/{{task}}/fold{{fold}}.log",
    benchmark:
        f"{BENCH}/train/{{model}}/{{task}}/fold{{fold}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        gpu=GPU,
    shell:
        "python -m pathomix.train --task {wildcards.task} --fold {wildcards.fold} "
        "--clinical {input.clinical:q} --folds {input.folds:q} {params.flags} --params {params.cfg:q} "
        "--threads {threads} --out {params.out:q} > {log:q} 2>&1"


def joint_outputs(model, name):
    return [str(P.model_dir(RESULTS, model, t, "{fold}") / name) for t in model_tasks(model, config["train"])]


for _model in JOINT_MODELS:

    rule:
        name:
            "train_joint_" + re.sub(r"\W", "_", _model)
        input:
            unpack(lambda w, m=_model: train_inputs(SimpleNamespace(model=m, fold=w.fold))),
        output:
            checkpoint=joint_outputs(_model, "checkpoint.pt"),
            history=joint_outputs(_model, "history.parquet"),
            predictions=joint_outputs(_model, "predictions.parquet"),
        params:
            flags=lambda w, input, m=_model: optional_flags(SimpleNamespace(model=m), input),
            tasks=" ".join(model_tasks(_model, config["train"])),
            out=lambda w, output: " ".join(shlex.quote(str(Path(c).parent)) for c in output.checkpoint),
            cfg=json.dumps(job_params(_model, config["train"]), sort_keys=True),
            code=code_hash("models", "train"),
        wildcard_constraints:
            fold=r"\d+",
        log:
            f"{LOGS}/train/{_model}/joint/fold{{fold}}.log",
        benchmark:
            f"{BENCH}/train/{_model}/joint/fold{{fold}}.tsv"
        threads: 1
        resources:
            mem_mb=8000,
            gpu=GPU,
        shell:
            "python -m pathomix.train --task {params.tasks} --fold {wildcards.fold} "
            "--clinical {input.clinical:q} --folds {input.folds:q} {params.flags} --params {params.cfg:q} "
            "--threads {threads} --out {params.out} > {log:q} 2>&1"
