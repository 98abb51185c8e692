# Training: one job per model × task × fold (a student waits for its teacher of the same fold).
# `model` is a registered model or a variant (train.variants: ablations as config); each job gets
# only its own merged train: keys, so editing one variant reruns that variant alone.
# A joint model (umeml) trains on all its tasks in one job per fold: rule train_joint_<model>.
# Both rules are written once (train_inputs, train_outputs, train_params, train_shell, model_resources).
from pathomix import catalog

JOINT_MODELS = [m for m in config["train"]["models"] if is_joint(m, VARIANTS)]


def model_resources(name):
    """The resource class of a model (common.smk: RESOURCE_CLASSES): the catalogue's where it has one
    (pathomix.catalog.resources_of), else a GPU class for models that read features or images (gpu_long
    for a joint model: every task in one job) and cpu for genes-only models."""
    if hasattr(catalog, "resources_of"):
        return catalog.resources_of(name, VARIANTS)
    need = model_inputs(name, VARIANTS)
    if not (need["wsi"] or need["mif"] or need["images"]):
        return "cpu"
    return "gpu_long" if is_joint(name, VARIANTS) else "gpu"


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
        inputs["teacher"] = str(P.model_file(RESULTS, need["teacher"], w.task, w.fold, P.CHECKPOINT))
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


def train_outputs(model, task):
    """checkpoint, history, predictions of one job: `task` a task (rule train) or the list of a joint model's."""
    def files(name):
        if isinstance(task, str):
            return str(P.model_file(RESULTS, model, task, "{fold}", name))
        return [str(P.model_file(RESULTS, model, t, "{fold}", name)) for t in task]

    return {key: files(name) for key, name in P.MODEL_OUTPUTS.items()}


def train_params(model):
    """params of both rules: `model` a name, or None for the {model} wildcard (rule train)."""
    name = (lambda w: w.model) if model is None else (lambda w: model)
    return {
        "flags": lambda w, input: optional_flags(SimpleNamespace(model=name(w)), input),
        "cfg": lambda w: json.dumps(job_params(name(w), config["train"]), sort_keys=True),
        "code": code_hash("models", "train"),
    }


def train_shell(task, out):
    """The command of both rules; `task` and `out` are the parts in which they differ."""
    return (f"python -m pathomix.train --task {task} --fold {{wildcards.fold}} "
            "--clinical {input.clinical:q} --folds {input.folds:q} {params.flags} --params {params.cfg:q} "
            f"--threads {{threads}} --out {out} > {{log:q}} 2>&1")


rule train:
    input:
        unpack(train_inputs),
    output:
        **train_outputs("{model}", "{task}"),
    params:
        **train_params(None),
        out=lambda w, output: str(Path(output.checkpoint).parent),
    wildcard_constraints:
        fold=r"\d+",
        # not the joint models (their jobs train all tasks at once); the wildcard is followed by "/"
        model="(?!(?:{})(?:/|$))[^/]+".format("|".join(re.escape(m) for m in JOINT_MODELS)) if JOINT_MODELS else "[^/]+",
    log:
        f"{LOGS}/train/{{model}}/{{task}}/fold{{fold}}.log",
    benchmark:
        f"{BENCH}/train/{{model}}/{{task}}/fold{{fold}}.tsv"
    threads: class_threads(lambda w: model_resources(w.model), local=1)
    resources:
        **class_resources(lambda w: model_resources(w.model)),
    shell:
        train_shell("{wildcards.task}", "{params.out:q}")


for _model in JOINT_MODELS:
    _tasks = model_tasks(_model, config["train"])

    rule:
        name:
            "train_joint_" + re.sub(r"\W", "_", _model)
        input:
            unpack(lambda w, m=_model: train_inputs(SimpleNamespace(model=m, fold=w.fold))),
        output:
            **train_outputs(_model, _tasks),
        params:
            **train_params(_model),
            tasks=" ".join(_tasks),
            out=lambda w, output: " ".join(shlex.quote(str(Path(c).parent)) for c in output.checkpoint),
        wildcard_constraints:
            fold=r"\d+",
        log:
            f"{LOGS}/train/{_model}/joint/fold{{fold}}.log",
        benchmark:
            f"{BENCH}/train/{_model}/joint/fold{{fold}}.tsv"
        threads: class_threads(model_resources(_model), local=1)
        resources:
            **class_resources(model_resources(_model)),
        shell:
            train_shell("{params.tasks}", "{params.out}")
