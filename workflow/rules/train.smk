# Training: one job per model × task × fold (a student waits for its teacher of the same fold), or one per
# model × task for every fold (rule train_folds, train.folds_per_job: on one machine, start-up is paid once).
# `model` is a registered model or a variant (train.variants: ablations as config); each job gets
# only its own merged train: keys, so editing one variant reruns that variant alone.
# A joint model (umeml) trains on all its tasks in one job per fold: rule train_joint_<model>.
# Both rules are written once: common.smk's train_inputs, train_outputs, train_params, train_shell and
# model_resources (the resource class of a model).


rule train:
    input:
        unpack(train_inputs),
    output:
        **train_outputs("{model}", "{task}"),
    log:
        f"{LOGS}/train/{{model}}/{{task}}/fold{{fold}}.log",
    benchmark:
        f"{BENCH}/train/{{model}}/{{task}}/fold{{fold}}.tsv"
    wildcard_constraints:
        fold=r"\d+",
        # not the joint models (their jobs train all tasks at once) nor the selections (rule select)
        model=f"(?!(?:{NOT_TRAIN})(?:/|$))[^/]+" if NOT_TRAIN else "[^/]+",
    threads: class_threads(lambda w: model_resources(w.model), local=1)
    resources:
        **class_resources(lambda w: model_resources(w.model)),
    params:
        **train_params(None),
        out=lambda w, output: str(Path(output.checkpoint).parent),
    shell:
        train_shell("{wildcards.task}", "{params.out:q}")


rule train_folds:  # every fold of a model × task in one process (train.folds_per_job; common.smk folds_together)
    input:
        unpack(train_folds_inputs),
    output:
        **train_outputs("{model}", "{task}", folds=list(FOLDS)),
    log:
        f"{LOGS}/train/{{model}}/{{task}}/folds.log",
    benchmark:
        f"{BENCH}/train/{{model}}/{{task}}/folds.tsv"
    wildcard_constraints:
        model="|".join(re.escape(m) for m in FOLD_GROUPED) or "(?!)",
    threads: class_threads(lambda w: model_resources(w.model), local=1)
    resources:
        **train_folds_resources(lambda w: model_resources(w.model)),
    params:
        **train_params(None),
        folds=" ".join(str(k) for k in FOLDS),
        out=lambda w, output: " ".join(shlex.quote(str(Path(c).parent)) for c in output.checkpoint),
    shell:
        train_shell("{wildcards.task}", "{params.out}", fold="{params.folds}")


for _model in JOINT_MODELS:
    _tasks = model_tasks(_model, config["train"])
    _rule_name = re.sub(r"\W", "_", _model)

    rule:
        name:
            f"train_joint_{_rule_name}"
        input:
            unpack(lambda w, m=_model: train_inputs(SimpleNamespace(model=m, fold=w.fold))),
        output:
            **train_outputs(_model, _tasks),
        log:
            f"{LOGS}/train/{_model}/joint/fold{{fold}}.log",
        benchmark:
            f"{BENCH}/train/{_model}/joint/fold{{fold}}.tsv"
        wildcard_constraints:
            fold=r"\d+",
        threads: class_threads(model_resources(_model), local=1)
        resources:
            **class_resources(model_resources(_model)),
        params:
            **train_params(_model),
            tasks=" ".join(_tasks),
            out=lambda w, output: " ".join(shlex.quote(str(Path(c).parent)) for c in output.checkpoint),
        shell:
            train_shell("{params.tasks}", "{params.out}")


rule select:  # train.select: per task and fold, the candidate with the best validation metric
    input:
        predictions=lambda w: [
            str(P.model_file(RESULTS, c, w.task, w.fold, P.PREDICTIONS)) for c in SELECTIONS[w.model]
        ],
        histories=lambda w: [str(P.model_file(RESULTS, c, w.task, w.fold, P.HISTORY)) for c in SELECTIONS[w.model]],
    output:
        predictions=str(P.model_file(RESULTS, "{model}", "{task}", "{fold}", P.PREDICTIONS)),
        history=str(P.model_file(RESULTS, "{model}", "{task}", "{fold}", P.HISTORY)),
        choice=str(P.model_file(RESULTS, "{model}", "{task}", "{fold}", P.SELECTION)),
    log:
        f"{LOGS}/select/{{model}}/{{task}}/fold{{fold}}.log",
    benchmark:
        f"{BENCH}/select/{{model}}/{{task}}/fold{{fold}}.tsv"
    wildcard_constraints:
        fold=r"\d+",
        model="|".join(re.escape(s) for s in SELECTIONS) or "(?!)",
    threads: 1
    resources:
        **class_resources("light"),
    params:
        candidates=lambda w: " ".join(shlex.quote(c) for c in SELECTIONS[w.model]),
        out=lambda w, output: str(Path(output.predictions).parent),
        code=code_hash("train"),
    shell:
        "python -m pathomix.train.select --selection {wildcards.model:q} --candidates {params.candidates} "
        "--predictions {input.predictions:q} --histories {input.histories:q} --out {params.out:q} > {log:q} 2>&1"
