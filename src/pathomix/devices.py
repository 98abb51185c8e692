"""The one place that turns a config ``device`` (``auto`` | ``cpu`` | ``cuda[:k]``) into a torch device, and
pins a job to one GPU of a node with several.

Snakemake runs up to ``gpu`` GPU jobs at once (the run-wide resource: the GPUs this node has, see
workflow/rules/common.smk) but tells no job *which* GPU is its own. So before CUDA is initialised,
:func:`pin_gpu` takes the first free device index with an exclusive, non-blocking ``fcntl.flock`` on a lock
file per device (``$PATHOMIX_GPU_LOCKS``, else ``<tmp>/pathomix-gpu-locks-<uid>``: per node, shared by every
run of the user on it), sets ``CUDA_VISIBLE_DEVICES`` to it and keeps the file open until the process ends.
The kernel drops the lock when the process exits, however it exits (a crash, SIGKILL), so a device is never
left taken. Where ``CUDA_VISIBLE_DEVICES`` lists several devices, the job takes one of those. Nothing is
locked inside a SLURM job (``SLURM_JOB_ID``: the scheduler chose its GPUs), where the config names a device
(``cuda:1``), or where one GPU or none is visible.

``PATHOMIX_GPUS=N`` overrides the count that ``nvidia-smi -L`` gives (tests fake N GPUs on a CPU machine).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

GPUS_ENV = "PATHOMIX_GPUS"
LOCKS_ENV = "PATHOMIX_GPU_LOCKS"
_HELD: dict[str, IO[str]] = {}  # device id → its open lock file, for the life of the process


def count_gpus() -> int:
    """GPUs of this node: ``$PATHOMIX_GPUS``, else the devices ``CUDA_VISIBLE_DEVICES`` lists, else the
    lines of ``nvidia-smi -L``, else 0. Torch-free and CUDA-free (safe before a device is chosen)."""
    if (fake := os.environ.get(GPUS_ENV)) is not None:
        return int(fake)
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def lock_dir() -> Path:
    """Where the per-device lock files live (one folder per node and user)."""
    return Path(os.environ.get(LOCKS_ENV) or Path(tempfile.gettempdir()) / f"pathomix-gpu-locks-{os.getuid()}")


def _try_lock(device: str) -> bool:
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / f"gpu{device}.lock", "a+")  # noqa: SIM115 (held open until the process exits)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return False
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD[device] = f
    return True


def visible_gpus() -> list[str]:
    """The device ids a job may take: those ``CUDA_VISIBLE_DEVICES`` lists, else ``0 .. count_gpus() - 1``."""
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(count_gpus())]


def pin_gpu(wait_s: float = 1.0) -> str | None:
    """Pin this process to a free GPU (see the module doc) → its device id, or None where nothing is locked.
    Waits, polling every ``wait_s`` seconds, while every device is taken (another run on the node)."""
    if _HELD:
        return next(iter(_HELD))
    if os.environ.get("SLURM_JOB_ID"):  # the scheduler gave this job its GPUs
        return None
    devices = visible_gpus()
    if len(devices) < 2:
        return None
    waited = False
    while True:
        for device in devices:
            if _try_lock(device):
                if "CUDA_VISIBLE_DEVICES" not in os.environ:
                    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the order nvidia-smi numbers them in
                os.environ["CUDA_VISIBLE_DEVICES"] = device
                log.info("pinned to GPU %s of %s (lock %s)", device, devices, lock_dir() / f"gpu{device}.lock")
                return device
        if not waited:
            log.warning("all GPUs %s are taken (locks in %s); waiting for one", devices, lock_dir())
            waited = True
        time.sleep(wait_s)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``.
    ``auto`` and ``cuda`` first pin the process to a free GPU of a multi-GPU node (:func:`pin_gpu`)."""
    if name in ("auto", "cuda"):
        pin_gpu()
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
