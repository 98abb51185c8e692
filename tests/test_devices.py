"""GPU pinning on a node with several GPUs (pathomix.devices), faked on CPU with PATHOMIX_GPUS: concurrent
jobs get distinct devices, a crashed job's device is free again, SLURM's choice is respected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# a job: pins a GPU, prints CUDA_VISIBLE_DEVICES, then holds it until its stdin closes (or it is killed)
JOB = ("import os, sys; from pathomix.devices import pin_gpu; pin_gpu(wait_s=0.05); "
       "print(os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True); sys.stdin.read()")


def start(env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", JOB], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


@pytest.fixture
def env(tmp_path: Path) -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    e = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return dict(e, PATHOMIX_GPUS="3", PATHOMIX_GPU_LOCKS=str(tmp_path / "locks"),
                PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))


def test_concurrent_jobs_get_distinct_gpus_and_a_crash_frees_its_own(env: dict) -> None:
    jobs = [start(env) for _ in range(3)]
    try:
        devices = [j.stdout.readline().strip() for j in jobs]
        assert sorted(devices) == ["0", "1", "2"]
        waiting = start(env)  # every device taken: it waits for one
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=1.0)
        jobs[1].send_signal(signal.SIGKILL)  # a job crashing releases its device (the kernel drops the lock)
        jobs[1].wait()
        assert waiting.stdout.readline().strip() == devices[1]
        jobs.append(waiting)
    finally:
        for j in jobs:
            j.kill()
            j.wait()


def test_nothing_is_locked_where_the_scheduler_chose_or_one_gpu_is_visible(env: dict) -> None:
    for extra in ({"SLURM_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "5"}, {"PATHOMIX_GPUS": "1"}):
        job = subprocess.run([sys.executable, "-c", JOB], env=dict(env, **extra), input="", capture_output=True,
                             text=True, timeout=60, check=True)
        assert job.stdout.strip() == extra.get("CUDA_VISIBLE_DEVICES", "None")
    assert not (Path(env["PATHOMIX_GPU_LOCKS"])).exists()


def test_a_job_takes_one_of_the_devices_cuda_visible_devices_lists(env: dict) -> None:
    job = subprocess.run([sys.executable, "-c", JOB], env=dict(env, CUDA_VISIBLE_DEVICES="4,6"), input="",
                         capture_output=True, text=True, timeout=60, check=True)
    assert job.stdout.strip() == "4"
