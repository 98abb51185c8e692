"""``pathomix doctor``: what this machine can run, one line per check, each ``ok`` or ``warn`` with the fix.

Versions (Python, torch and its CUDA, torchvision, timm, openslide, tifffile, imagecodecs, pydicom, snakemake and
the SLURM executor plugin), the GPUs torch sees and their memory, the encoders whose weights are found offline
(the path ``features.weights`` gives in the config, or the Hugging Face cache), whether ``sbatch``/``sacct`` are
on PATH, and the free space where the results go. Exit status 1 only when something the workflow cannot run
without is missing (a package that does not import); warnings are advice.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import logging
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from pathomix.cli import exit_process, stage_main
from pathomix.io.atomic import existing_folder, free_bytes

log = logging.getLogger("pathomix.doctor")

LOW_SPACE = 20 << 30  # below this, the results disk is worth a warning (a cohort's stores take tens of GiB)


@dataclass(frozen=True)
class Check:
    status: str  # ok | warn | fail
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.what:<32} {self.detail}"


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


# distribution → (module to import, required, how to get it)
PACKAGES = {
    "torch": ("torch", True, 'pip install -e . (torch>=2.3; a CUDA build for GPUs: see pytorch.org)'),
    "torchvision": ("torchvision", True, "pip install -e ."),
    "timm": ("timm", True, "pip install -e ."),
    "openslide-python": ("openslide", True, "pip install -e . (openslide-bin brings the library)"),
    "tifffile": ("tifffile", True, "pip install -e ."),
    "imagecodecs": ("imagecodecs", True, "pip install -e . (JPEG/JPEG 2000/LZW tiles)"),
    "pydicom": ("pydicom", False, "pip install -e . (DICOM WSI)"),
    "huggingface-hub": ("huggingface_hub", True, "pip install -e . (encoder weights from the local cache)"),
    "snakemake": ("snakemake", True, "pip install -e ."),
    "snakemake-executor-plugin-slurm": (None, False, 'pip install -e ".[slurm]" (only to run on SLURM)'),
}


def python_check() -> Check:
    v = sys.version_info
    ok = v >= (3, 11)
    return Check("ok" if ok else "fail", "python", f"{v.major}.{v.minor}.{v.micro} ({sys.executable})"
                 + ("" if ok else "; pathomix needs Python >= 3.11"))


def package_checks() -> Iterator[Check]:
    for dist, (module, required, fix) in PACKAGES.items():
        version = _version(dist)
        if version is None:
            yield Check("fail" if required else "warn", dist, f"not installed; {fix}")
            continue
        if module is not None:
            try:
                mod = importlib.import_module(module)
            except ImportError as err:
                status = "fail" if required else "warn"
                yield Check(status, dist, f"{version} installed but does not import ({err}); {fix}")
                continue
            if module == "openslide":
                version += f" (library {getattr(mod, '__library_version__', '?')})"
            if module == "torch":
                version += f", CUDA {mod.version.cuda or 'none (CPU build)'}"
        yield Check("ok", dist, version)


def gpu_checks() -> Iterator[Check]:
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        yield Check("warn", "gpu", "no GPU visible to torch: extraction and training run on the CPU (fine for the "
                                   "demo, slow for a cohort); on a cluster the GPU jobs go to the profile's "
                                   "gpu_partition")
        return
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        yield Check("ok", f"gpu {i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB")


def encoder_checks(config: dict) -> Iterator[Check]:
    from pathomix.features.entries import ENCODERS
    from pathomix.features.weights import cached_weights, configured_path

    weights = (config.get("features") or {}).get("weights")
    found = []
    for name, entry in ENCODERS.items():
        path = configured_path(name, weights) if weights else None
        if path is not None and path.exists():
            found.append(f"{name} (config: {path})")
        elif (cached := cached_weights(entry)) is not None:
            found.append(f"{name} (Hugging Face cache: {cached})")
    if found:
        yield Check("ok", "encoder weights", "; ".join(found))
    else:
        yield Check("warn", "encoder weights", "none found offline: give a checkpoint in `features.weights` (a path, "
                                               "or {encoder: path}) or put the model in the Hugging Face cache "
                                               "(HF_HOME); `python -m pathomix.features --list-encoders` lists the "
                                               "files. Without one an encoder runs randomly initialised only with "
                                               "`features.allow_random_init: true`")


def slurm_checks() -> Iterator[Check]:
    tools = {t: shutil.which(t) for t in ("sbatch", "sacct")}
    if all(tools.values()):
        yield Check("ok", "slurm", ", ".join(f"{t}: {p}" for t, p in tools.items()))
    else:
        yield Check("warn", "slurm", "sbatch/sacct not on PATH: not a SLURM submit host; run locally with "
                                     "`snakemake --cores all` (or use `--profile profiles/slurm` on the cluster)")


def space_check(results: Path) -> Check:
    where = existing_folder(results)
    free = free_bytes(where)
    detail = f"{free / 2**30:.1f} GiB free at {where} (results: {results})"
    if free < LOW_SPACE:
        return Check("warn", "disk", detail + "; a cohort's feature stores take tens of GiB: point `results_dir` "
                                              "at a larger disk")
    return Check("ok", "disk", detail)


def checks(config: dict, results: Path) -> Iterator[Check]:
    yield python_check()
    yield from package_checks()
    yield from gpu_checks()
    yield from encoder_checks(config)
    yield from slurm_checks()
    yield space_check(results)


@stage_main("pathomix.doctor")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pathomix doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="the study's config.yaml (default: ./config.yaml when there is one)")
    args = p.parse_args(argv)
    config = yaml.safe_load(args.config.read_text()) if args.config.exists() else {}
    results = Path(config.get("results_dir") or "results")
    if not results.is_absolute():
        results = (args.config.parent if args.config.exists() else Path.cwd()) / results
    failed = False
    for check in checks(config, results):
        sys.stdout.write(check.line() + "\n")
        failed |= check.status == "fail"
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    exit_process(main())
