"""SIGTERM to the Snakemake process group (issue 20, item 2) — what SLURM sends at a time limit or preemption,
and what ``scancel`` sends — during extraction, training and evaluation of a small demo run. The running jobs
stop within seconds, nothing partial remains (no ``.tmp-*`` file, every store reads whole), and the same
command (after ``--unlock`` when Snakemake asks for it) finishes with the outputs of an undisturbed run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from faultlib import ROOT, assert_same_outputs, mini_demo_config, snakemake
from snake import snakemake_cmd, workflow_env

from pathomix.io.corrupt import scan

pytestmark = pytest.mark.slow

# stage → a job log that exists once a job of that stage has started
STAGES = {"extraction": "logs/*extract/**/*.log", "training": "logs/train/**/fold*.log",
          "evaluation": "logs/evaluate.log"}


def _terminate_during(work: Path, started: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Start the run in its own process group; SIGTERM the whole group once ``started`` matches a file."""
    results = work / "results"
    proc = subprocess.Popen([*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "2"],
                            cwd=work, env=workflow_env(PYTHONPATH=str(ROOT / "src")), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not any(results.glob(started)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before {started} appeared:\n{proc.stdout.read()[-3000:]}"
    time.sleep(1.0)  # into the job's work, not its start-up
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    stopped = time.monotonic() - sent
    time.sleep(1.0)
    with pytest.raises(ProcessLookupError):  # every job of the group is gone, none left running
        os.killpg(proc.pid, 0)
    assert stopped < 60, f"the run took {stopped:.0f} s to stop after SIGTERM"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def _nothing_partial(results: Path) -> None:
    left = [p for p in results.rglob(".tmp-*")]
    assert not left, left
    assert scan(results) == []


def test_sigterm_in_each_stage_leaves_nothing_partial_and_the_rerun_matches(tmp_path):
    ref = mini_demo_config(tmp_path / "ref")
    proc = snakemake(ref)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = mini_demo_config(tmp_path / "run")
    for stage, started in STAGES.items():
        stopped = _terminate_during(work, started)
        assert stopped.returncode != 0, f"{stage}: the run was not interrupted"
        _nothing_partial(work / "results")
        if "unlock" in stopped.stdout.lower():  # Snakemake asks for it after a hard stop
            subprocess.run([*snakemake_cmd(), "-s", str(ROOT / "Snakefile"), "-d", str(work), "--unlock"],
                           cwd=work, env=workflow_env(), check=True, capture_output=True)
    proc = snakemake(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_outputs(ref / "results", work / "results")
