"""One typed interface per stage: the shared params loader, the exit convention, defaults stated once."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pathomix.config import move_legacy_keys
from pathomix.constants import BAD_TILE_POLICIES, MODALITIES, SUBSPACES
from pathomix.demo.generate import DemoParams
from pathomix.errors import PathomixInputError
from pathomix.evaluate.cli import EvalParams
from pathomix.evaluate.heatmaps import HeatmapParams
from pathomix.features.extract import ExtractParams
from pathomix.genes.hvg import GeneParams
from pathomix.params import load_params
from pathomix.splits.folds import SplitParams
from pathomix.tiling.params import MIN_TILE_PX, WORKFLOW_KEYS, TilingParams
from pathomix.train.params import TrainParams

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())


# ---- the loader ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    steps: int = 2


@dataclass(frozen=True)
class Example:
    size: int = 4
    ratio: float = 0.5
    flag: bool = False
    name: str = "a"
    path: str | None = None
    batch: int | str = 64
    names: tuple[str, ...] = ()
    items: list[str] = field(default_factory=list)
    weights: Mapping[str, float] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def test_values_are_coerced_once_from_the_type_hints() -> None:
    got = load_params(Example, {"size": "8", "ratio": 1, "flag": "false", "name": 3, "path": None, "batch": "auto",
                                "names": ["x", "y"], "items": ("p",), "weights": {"igc": "0.5"},
                                "inner": {"rate": "2", "steps": 3.0}}, where="example")
    assert got == Example(size=8, ratio=1.0, flag=False, name="3", path=None, batch="auto", names=("x", "y"),
                          items=["p"], weights={"igc": 0.5}, inner=Inner(rate=2.0, steps=3))
    assert isinstance(got.ratio, float) and isinstance(got.size, int) and isinstance(got.names, tuple)
    assert load_params(Example, '{"batch": "32", "flag": "yes"}', where="example") == Example(batch=32, flag=True)
    assert load_params(Example, {"size": None}, where="example") == Example()  # null = the default


def test_json_text_a_file_or_at_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"size": 16}')
    assert load_params(Example, str(path), where="example").size == 16
    assert load_params(Example, f"@{path}", where="example").size == 16
    assert load_params(Example, "", where="example") == Example()
    with pytest.raises(PathomixInputError, match="not valid JSON"):
        load_params(Example, "{size: 3", where="example")
    with pytest.raises(PathomixInputError, match="must be a JSON object"):
        load_params(Example, "[1, 2]", where="example")


@pytest.mark.parametrize(("values", "message"), [
    ({"sise": 3}, r"config `example`: unknown key\(s\) \['sise'\]; `example` knows \[.*'size'.*\]"),
    ({"size": "big"}, r"config `example.size`='big' is not a valid int"),
    ({"size": 2.5}, r"example.size"),
    ({"flag": "maybe"}, r"example.flag"),
    ({"names": "abc"}, r"example.names"),
    ({"inner": {"rat": 1}}, r"config `example.inner`: unknown key\(s\) \['rat'\]"),
    ({"inner": 3}, r"example.inner"),
])
def test_bad_values_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(PathomixInputError, match=message):
        load_params(Example, values, where="example")


def test_snakefile_keys_are_dropped_explicitly() -> None:
    assert load_params(TilingParams, {"magnifications": {"20x": 0.5}}, where="tiling", drop=WORKFLOW_KEYS) \
        == TilingParams()
    with pytest.raises(PathomixInputError, match="magnifications"):
        load_params(TilingParams, {"magnifications": {"20x": 0.5}}, where="tiling")
    train = {**CONFIG["train"], "models": ["abmil"], "tasks": ["diagnosis"], "variants": {}}
    assert TrainParams.from_mapping(train) == TrainParams()
    with pytest.raises(PathomixInputError, match=r"config `train`: unknown key\(s\) \['epoch'\]"):
        TrainParams.from_mapping({"epoch": 3})
    with pytest.raises(PathomixInputError, match=r"unknown key\(s\) \['kl'\]"):
        TrainParams.from_mapping({"distill": {"kl": 3}})
    with pytest.raises(PathomixInputError, match=r"config `train.hidden`='wide' is not a valid int"):
        TrainParams.from_mapping({"hidden": "wide"})
    with pytest.raises(PathomixInputError, match=r"config `train.distill.temperature`"):
        TrainParams.from_mapping({"distill": {"temperature": "hot"}})
    assert TrainParams.from_mapping({"hidden": "64", "aux_losses": {"igc": 0}, "mags": ["20x"]}).model == \
        dataclasses.replace(TrainParams().model, hidden=64, aux_losses={"igc": 0.0}, mags=("20x",))


# ---- every stage parses --params the same way ------------------------------------------------------------

STAGE_PARAMS = {  # config subtree → the stage's dataclass
    "tiling": TilingParams, "features": ExtractParams, "genes_params": GeneParams, "splits": SplitParams,
}


@pytest.mark.parametrize("section", sorted(STAGE_PARAMS))
def test_each_stage_refuses_an_unknown_key(section: str) -> None:
    with pytest.raises(PathomixInputError, match=rf"config `{section}`: unknown key\(s\) \['bogus'\]"):
        load_params(STAGE_PARAMS[section], {"bogus": 1}, where=section)


# (module, argv that reaches the params before touching any file)
CLI = {
    "pathomix.tiling": ["--slide-id", "S", "--path", "S.svs", "--modality", "he", "--mag", "20x", "--target-mpp",
                        "0.5", "--out", "o.h5", "--qc", "q.png"],
    "pathomix.features": ["--slide-id", "S", "--path", "S.svs", "--tiles", "t.h5", "--out", "o.h5"],
    "pathomix.splits": ["--clinical", "c.tsv", "--out", "f.parquet"],
    "pathomix.genes": ["--genes", "g.parquet", "--clinical", "c.tsv", "--out", "h.parquet", "--out-subspaces", "s"],
    "pathomix.evaluate": ["--predictions", "p.parquet", "--out", "m.parquet", "--summary", "s.csv", "--figures", "f",
                          "--comparison-csv", "c.csv", "--comparison-html", "c.html"],
    "pathomix.evaluate.heatmaps": ["--predictions", "p.parquet", "--slides", "s.tsv", "--tiles", "t.h5", "--out", "o",
                                   "--export", "e"],
    "pathomix.evaluate.gene_view": ["--hvg", "h.parquet", "--subspaces", "s.parquet", "--out", "o.png"],
    "pathomix.train": ["--model", "abmil", "--task", "diagnosis", "--fold", "0", "--clinical", "c.tsv", "--folds",
                       "f.parquet", "--out", "o"],
    "pathomix.batch": ["extract", "--members", "[]", "--results", "r", "--mag", "20x", "--encoder", "resnet18_trunc",
                       "--out", "m.parquet"],
    "pathomix.batch tile": ["tile", "--members", '[{"slide_id": "S", "path": "S.svs"}]', "--results", "r", "--mag",
                            "20x", "--target-mpp", "0.5", "--out", "m.parquet"],
}


def _main(module: str):
    import importlib

    name = {"pathomix.tiling": "pathomix.tiling.stage", "pathomix.features": "pathomix.features.cli",
            "pathomix.splits": "pathomix.splits.folds", "pathomix.genes": "pathomix.genes.hvg",
            "pathomix.evaluate": "pathomix.evaluate.cli", "pathomix.train": "pathomix.train.cli",
            "pathomix.batch": "pathomix.batch.cli", "pathomix.batch tile": "pathomix.batch.cli"}.get(module, module)
    return importlib.import_module(name).main


@pytest.mark.parametrize("module", sorted(CLI))
def test_one_exit_convention(module: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in --params: exit status 1, one ERROR naming the key, no traceback, nothing written."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.ERROR):
        assert _main(module)([*CLI[module], "--params", json.dumps({"bogus": 1})]) == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "bogus" in errors[0].getMessage() and errors[0].exc_info is None
    assert list(tmp_path.iterdir()) == []


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathomix.splits import folds

    def broken(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(folds, "run", broken)
    with pytest.raises(ZeroDivisionError):
        folds.main(["--clinical", "c.tsv", "--out", "f.parquet"])


# ---- each default stated once ----------------------------------------------------------------------------

# config.yaml is the demo's config: the keys it sets away from the package default on purpose, each with a
# comment there (a real cohort keeps the package default)
DEMO_OVERRIDES = {"features": {"allow_random_init": True}}


def _defaults_agree(cls: type, section: Mapping, where: str) -> None:
    """Every key that both config.yaml's ``section`` and ``cls`` define has the same default (except the
    documented demo overrides, which must hold the demo's value)."""
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = DEMO_OVERRIDES.get(where, {})
    assert {k: section.get(k) for k in overrides} == overrides, where
    shared = {k: v for k, v in section.items() if k in names and k not in overrides}
    assert shared, where
    loaded = load_params(cls, shared, where=where)
    differ = {k: (v, getattr(cls(), k)) for k, v in shared.items() if getattr(loaded, k) != getattr(cls(), k)}
    assert not differ, f"config.yaml `{where}` and {cls.__name__} disagree (config, dataclass): {differ}"


@pytest.mark.parametrize(("where", "cls"), [
    ("tiling", TilingParams), ("features", ExtractParams), ("genes_params", GeneParams), ("splits", SplitParams),
    ("evaluate", EvalParams), ("evaluate.heatmaps", HeatmapParams), ("demo", DemoParams), ("train", TrainParams),
    ("train.distill", None),
])
def test_config_yaml_and_dataclass_defaults_agree(where: str, cls: type | None) -> None:
    section = CONFIG
    for part in where.split("."):
        section = section[part]
    if where == "train":  # flat: TrainParams' own keys and the model's (ModelParams) side by side
        assert TrainParams.from_mapping(section) == TrainParams()
        return
    if cls is None:
        assert TrainParams.from_mapping({"distill": section}).distill == TrainParams().distill
        return
    _defaults_agree(cls, section, where)


def test_schema_agrees_with_the_dataclasses() -> None:
    props = SCHEMA["properties"]
    assert props["tiling"]["properties"]["tile_px"]["minimum"] == MIN_TILE_PX
    with pytest.raises(PathomixInputError, match=f">= {MIN_TILE_PX}"):
        TilingParams(tile_px=MIN_TILE_PX - 1)
    assert tuple(props["features"]["properties"]["on_bad_tile"]["enum"]) == BAD_TILE_POLICIES
    assert props["features"]["properties"]["on_bad_tile"]["default"] == ExtractParams().on_bad_tile
    assert props["features"]["properties"]["allow_random_init"]["default"] is ExtractParams().allow_random_init is False
    slides = yaml.safe_load((ROOT / "workflow/schemas/slides.schema.yaml").read_text())
    assert tuple(slides["properties"]["modality"]["enum"]) == MODALITIES
    demo = props["demo"]["properties"]
    assert (demo["seed"]["default"], demo["n_patients"]["default"], demo["n_mif"]["default"]) == \
        dataclasses.astuple(DemoParams())
    from pathomix.genes.hvg import load_gene_sets
    assert set(load_gene_sets(None).unique()) <= set(SUBSPACES)


def test_demo_command_line_defaults_are_the_config_defaults() -> None:
    import inspect

    from pathomix.demo.cli import parse_args
    from pathomix.demo.generate import generate_cohort

    args = parse_args(["--out", "x"])
    assert (args.seed, args.n_patients, args.n_mif) == dataclasses.astuple(DemoParams())
    sig = inspect.signature(generate_cohort).parameters
    assert (sig["seed"].default, sig["n_patients"].default, sig["n_mif"].default) == dataclasses.astuple(DemoParams())
    with pytest.raises(PathomixInputError, match="n_mif"):
        DemoParams(n_patients=6, n_mif=7)


# ---- on_bad_tile belongs to extraction -------------------------------------------------------------------

def test_on_bad_tile_is_an_extraction_key() -> None:
    assert "on_bad_tile" not in CONFIG["tiling"] and CONFIG["features"]["on_bad_tile"] == "error"
    assert "on_bad_tile" not in {f.name for f in dataclasses.fields(TilingParams)}
    assert load_params(ExtractParams, {"on_bad_tile": "skip"}, where="features").on_bad_tile == "skip"
    with pytest.raises(PathomixInputError, match=r"features.on_bad_tile.*'ignore'.*\['error', 'skip'\]"):
        ExtractParams(on_bad_tile="ignore")


def test_old_tiling_on_bad_tile_still_works_and_no_longer_reaches_tiling() -> None:
    old = json.loads(json.dumps(CONFIG))
    old["tiling"]["on_bad_tile"] = "skip"
    warnings = move_legacy_keys(old)
    assert len(warnings) == 1 and "tiling.on_bad_tile" in warnings[0] and "features.on_bad_tile" in warnings[0]
    assert old["features"]["on_bad_tile"] == "skip" and "on_bad_tile" not in old["tiling"]
    assert move_legacy_keys(old) == []  # nothing left to move
    # the tiling rule's params (common.smk `subtree("tiling", drop=("magnifications",))`) equal the
    # default config's: flipping on_bad_tile, old key or new, reruns extraction only
    tiling = {k: v for k, v in old["tiling"].items() if k not in WORKFLOW_KEYS}
    assert tiling == {k: v for k, v in CONFIG["tiling"].items() if k not in WORKFLOW_KEYS}


def test_tile_stamps_do_not_depend_on_on_bad_tile(tmp_path: Path) -> None:
    from pathomix.features.cli import stamp as extract_stamp
    from pathomix.tiling.stage import TilePaths
    from pathomix.tiling.stage import stamp as tile_stamp

    paths = TilePaths("S", tmp_path / "S.svs", "he", ("20x",), (0.5,), (tmp_path / "S.h5",), (tmp_path / "S.png",))
    old_style = TilingParams.from_mapping({**CONFIG["tiling"], "on_bad_tile": "skip"})
    assert tile_stamp(old_style, paths, "c") == tile_stamp(TilingParams.from_mapping(CONFIG["tiling"]), paths, "c")
    tiles = (tmp_path / "S.h5",)
    assert extract_stamp(ExtractParams(on_bad_tile="skip"), tiles, "c") != extract_stamp(ExtractParams(), tiles, "c")


@pytest.mark.slow
def test_flipping_on_bad_tile_plans_extraction_but_not_tiling(shared_data: Path, tmp_path: Path) -> None:
    """Through Snakemake on a tiled and extracted slide: features.on_bad_tile (or the old tiling.on_bad_tile)
    changed → extract is planned again (its params changed), tile is not."""
    import re
    import shutil
    import subprocess

    import pandas as pd
    from snake import snakemake_cmd, workflow_env

    (tmp_path / "slides").mkdir()
    shutil.copy(shared_data / "wsi" / "CMU-1-Small-Region.svs", tmp_path / "slides" / "S0.svs")
    pd.DataFrame([{"slide_id": "S0", "patient_id": "P0", "path": "slides/S0.svs", "modality": "he"}]).to_csv(
        tmp_path / "slides.tsv", sep="\t", index=False)
    pd.DataFrame([{"patient_id": "P0", "idh": "wt"}]).to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    cfg = json.loads(json.dumps(CONFIG))
    cfg.update(slides="slides.tsv", clinical="clinical.tsv", genes=None, mif_channels=None, demo={"enabled": False})
    cfg["tiling"]["magnifications"] = {"20x": 0.5}
    cfg["features"].update(num_workers=0, device="cpu")
    cfg["train"]["models"] = ["abmil"]
    # one job per slide: the rules say what reruns (a batch job tiles and extracts, its stamps skip what is current)
    cfg["slide_batches"] = {"size": 0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/features/resnet18_trunc/20x/S0.h5"

    def snakemake(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "1",
                               target, *args], env=workflow_env(PYTHONPATH=str(ROOT / "src")), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def planned(*config: str) -> set[str]:
        proc = snakemake("-n", "--quiet", "rules", *(("--config", *config) if config else ()))
        return set(re.findall(r"^(\w+)\s+\d+$", proc.stdout, re.M)) - {"total"}

    snakemake()
    assert planned() == set()
    assert planned("features={on_bad_tile: skip}") == {"extract"}
    old = snakemake("-n", "--quiet", "rules", "--config", "tiling={on_bad_tile: skip}")
    assert set(re.findall(r"^(\w+)\s+\d+$", old.stdout, re.M)) - {"total"} == {"extract"}
    assert "tiling.on_bad_tile" in old.stderr + old.stdout


def test_exit_process_flushes_the_logs_and_keeps_the_status(tmp_path):
    """The `python -m` entry points end with exit_process: the status is the stage's and the log is complete,
    although the interpreter's teardown (where pyarrow's threads can abort a finished job) is skipped."""
    code = ("import logging, sys; from pathomix.cli import exit_process; "
            f"logging.basicConfig(filename={str(tmp_path / 'x.log')!r}, level=logging.INFO); "
            "logging.getLogger('t').info('last line'); print('out', end=''); exit_process(3)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and proc.stdout == "out"
    assert "last line" in (tmp_path / "x.log").read_text()
