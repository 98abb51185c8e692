# Training: one job per model × task × fold (a student waits for its teacher of the same fold).
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
        # not the joint models (their jobs train all tasks at once); the wildcard is followed by "/"
        model="(?!(?:{})(?:/|$))[^/]+".format("|".join(re.escape(m) for m in JOINT_MODELS)) if JOINT_MODELS else "[^/]+",
    threads: class_threads(lambda w: model_resources(w.model), local=1)
    resources:
        **class_resources(lambda w: model_resources(w.model)),
    params:
        **train_params(None),
        out=lambda w, output: str(Path(output.checkpoint).parent),
    shell:
        train_shell("{wildcards.task}", "{params.out:q}")


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
