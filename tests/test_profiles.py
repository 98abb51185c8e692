"""The SLURM profile: its keys are ones Snakemake and the executor plugin accept, it holds site settings only
(the rules declare their resources), and the test cluster's profile (tests/cluster/profile) fills in the same
site settings. The real SLURM run is tests/cluster/run_slurm_test.sh (see tests/cluster/README.md)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "profiles" / "slurm" / "config.yaml"
TEST_CLUSTER = ROOT / "tests" / "cluster" / "profile" / "config.yaml"


def test_slurm_profile_holds_site_settings_only():
    slurm = yaml.safe_load(SLURM.read_text())
    assert slurm["executor"] == "slurm" and slurm["keep-going"] and slurm["retries"] >= 1
    # no rule names: a rule's resources (and a model variant's, under any name) come from the rule
    assert "set-resources" not in slurm and "set-threads" not in slurm
    placeholders = {v for v in slurm["default-resources"].values() if isinstance(v, str) and v.startswith("<")}
    assert placeholders == {"<partition>", "<gpu-partition>", "<account>"}
    assert set(slurm["groups"].values()) == set(slurm["group-components"])


def test_test_cluster_profile_fills_in_the_same_site_settings():
    slurm, test = yaml.safe_load(SLURM.read_text()), yaml.safe_load(TEST_CLUSTER.read_text())
    assert set(test["default-resources"]) == set(slurm["default-resources"])
    # sizing for its 2-CPU node only: memory and threads, never a partition or a GPU
    assert all(set(r) == {"mem_mb"} for r in test["set-resources"].values())
    assert test["set-threads"]["extract"] == test["cores"]  # one extraction at a time in a group job
    # everything else comes from profiles/slurm, unchanged
    assert set(test) - {"default-resources", "set-resources", "set-threads"} <= {
        "cores", "slurm-init-seconds-before-status-checks"}


def _resources(out: str, rule: str) -> list[dict[str, str]]:
    """The resources of every job of `rule` in a dry run's output."""
    blocks = re.findall(rf"^\s*rule {rule}:\n(.*?)(?=^\s*\[|\Z)", out, re.M | re.S)
    return [dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", b).group(1).split(", ")) for b in blocks]


def test_profiles_are_accepted_by_snakemake(tmp_path):
    """Dry runs with the SLURM profile (alone, and with the test cluster's): the GPU jobs, a model variant
    under a new name among them, get a GPU, the GPU partition and their class's runtime from the rules."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    for item in ("Snakefile", "config.yaml", "workflow", "profiles", "src"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    shutil.copytree(ROOT / "tests" / "cluster" / "profile", tmp_path / "test-cluster")
    spec = importlib.util.spec_from_file_location("dag_scale", ROOT / "benchmarks" / "dag_scale.py")
    dag_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag_scale)
    dag_scale.make_cohort(tmp_path, 4, models=("snn",))  # stub slides (no file is read in a dry run)
    (tmp_path / "genes.parquet").touch()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "src"), *sys.path]),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    variant = "train={variants: {umeml_wide: {model: umeml, hidden: 64}}, models: [snn, umeml_wide]}"
    runs = {"slurm": ["--profile", "profiles/slurm"],
            "test cluster": ["--profile", "profiles/slurm", "--profile", "test-cluster"]}
    for name, profiles in runs.items():
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *profiles, "--workflow-profile", "none",
                               "--config", variant, "genes=genes.parquet"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        gpu_partition = {"slurm": "<gpu-partition>", "test cluster": "gpu"}[name]
        joint = _resources(out, "train_joint_umeml_wide")
        assert len(joint) == 3, out[-3000:]  # one job per fold
        for res in joint:  # the variant: umeml's class (GPU, long), from the rule, not from a profile entry
            assert res["gpu"] == "1" and res["slurm_partition"] == gpu_partition, res
            threads = {"slurm": "4", "test cluster": "2"}[name]  # the class's 4 CPUs, capped by the profile's cores
            assert res["runtime"] == "90" and res["cpus_per_gpu"] == threads, res
        for res in _resources(out, "train"):  # snn reads genes only: a CPU job on the CPU partition
            assert res.get("gpu", "0") == "0" and res["slurm_partition"] != gpu_partition, res
        assert re.search(r"slurm_account=(<account>|pathomix)", out), out[-3000:]
