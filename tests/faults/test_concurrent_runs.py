"""Two runs at once (issue 20, item 5). In one working directory, a second run while the first is going is
refused with Snakemake's lock message (Snakemake locks the files a run will write, per working directory);
two runs with different ``results_dir`` values on the same inputs both complete, with the same results."""

from __future__ import annotations

import subprocess
import time

import pytest
from faultlib import ROOT, assert_same_outputs, genes_only_config
from snake import snakemake_cmd, workflow_env

pytestmark = pytest.mark.slow


def _run(work, *args: str, wait: bool = True):
    cmd = [*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "1", *args]
    kw = dict(cwd=work, env=workflow_env(PYTHONPATH=str(ROOT / "src")), stdout=subprocess.PIPE,
              stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, timeout=600, **kw) if wait else subprocess.Popen(cmd, **kw)


def test_a_second_run_in_the_same_directory_is_refused_while_the_first_goes_on(shared_data, tmp_path):
    work = genes_only_config(tmp_path / "w", shared_data, tmp_path / "w" / "results")
    first = _run(work, wait=False)
    deadline = time.monotonic() + 120
    while not list((work / "results").glob("logs/train/*/*/*.log")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read()[-2000:]
    second = _run(work)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stdout, second.stdout[-2000:]
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]  # the refused run did not disturb the first


def test_two_runs_with_their_own_results_dir_both_complete(shared_data, tmp_path):
    work = genes_only_config(tmp_path / "w", shared_data, tmp_path / "w" / "results")
    runs = {name: _run(work, "--config", f"results_dir={tmp_path / name}", wait=False) for name in ("a", "b")}
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"run {name}:\n{out[-3000:]}"
    assert_same_outputs(tmp_path / "a", tmp_path / "b")
