"""The SLURM profile: its keys are ones Snakemake and the executor plugin accept, and the test cluster's
profile (tests/cluster/profile) fills in the same rules and resources. The real SLURM run is
tests/cluster/run_slurm_test.sh (see tests/cluster/README.md)."""

from __future__ import annotations

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
SITE_KEYS = ("default-resources", "set-resources", "set-threads")


def test_test_cluster_profile_fills_in_the_same_resources():
    slurm, test = yaml.safe_load(SLURM.read_text()), yaml.safe_load(TEST_CLUSTER.read_text())
    for key in SITE_KEYS:
        assert set(test[key]) == set(slurm[key]), key
    for rule, resources in slurm["set-resources"].items():
        assert set(test["set-resources"][rule]) == set(resources), rule
    # everything else comes from profiles/slurm, unchanged
    assert set(test) - set(SITE_KEYS) <= {"cores", "slurm-init-seconds-before-status-checks"}


def test_slurm_profile_placeholders_and_groups():
    slurm = yaml.safe_load(SLURM.read_text())
    assert slurm["executor"] == "slurm" and slurm["keep-going"] and slurm["retries"] >= 1
    placeholders = {v for r in [slurm["default-resources"], *slurm["set-resources"].values()]
                    for v in r.values() if isinstance(v, str) and v.startswith("<")}
    assert placeholders == {"<partition>", "<gpu-partition>", "<account>"}
    assert set(slurm["groups"].values()) == set(slurm["group-components"])
    for profile in (slurm, yaml.safe_load(TEST_CLUSTER.read_text())):
        for rule in ("extract", "train"):
            gpu_job = profile["set-resources"][rule]
            assert gpu_job["gpu"] == 1 and profile["set-threads"][rule] == gpu_job["cpus_per_gpu"] <= profile["cores"]
        # one extraction at a time in a group job: Snakemake would add up gpu and cpus_per_gpu of parallel ones
        assert profile["set-threads"]["extract"] == profile["cores"]


def test_profiles_are_accepted_by_snakemake(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    for item in ("Snakefile", "config.yaml", "workflow", "profiles", "src"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    shutil.copytree(ROOT / "tests" / "cluster" / "profile", tmp_path / "test-cluster")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for profiles in (["--profile", "profiles/slurm"], ["--profile", "profiles/slurm", "--profile", "test-cluster"]):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *profiles, "--workflow-profile", "none"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert "checkpoint demo" in out and re.search(r"slurm_account=(<account>|pathomix)", out), out[-3000:]
