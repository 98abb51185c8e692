"""How many batch jobs tile and extract a cohort, and which batch each slide is in (torch-free).

``slide_batches.size`` (config.yaml):

- ``auto`` (the default): multi-slide jobs at every cohort size, so a job's start-up (interpreter, imports,
  CUDA context, encoder: about 4 s on a GPU node, 3 s on a laptop) is paid once per batch, not per slide.
  The number of batches is ``ceil(N / SLIDES_PER_BATCH)`` rounded up to a power of two (adding slides
  changes it only when the cohort doubles, so slides keep their batch), at least ``min_batches`` (locally on
  CPU: 2 × the machine's cores, so every core stays busy with room for uneven batches, but batches of at least
  4 slides; on GPU: one per GPU; on a cluster: 1), at most ``MAX_BATCHES`` (the batches grow instead:
  100 000 slides are 1 024 jobs of about 98) and at most ``N``.
- an integer ``size`` > 0: cohorts of more than ``above`` slides in batches of about ``size`` slides (at most
  ``MAX_BATCHES``), smaller ones one job per slide.
- ``0``: one job per slide at every size.

A slide's batch is ``crc32(slide_id) mod n_batches``: stable while the number of batches stays.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

SLIDES_PER_BATCH = 50  # size: auto — keeps a GPU busy for minutes per job (~1 900 slides/h on an H100)
MAX_BATCHES = 1024  # planning: Snakemake's DAG grows with the jobs, not with the slides
MIN_CPU_BATCH = 4  # slides: below this a CPU batch is mostly start-up


def min_batches(n_slides: int, gpus: int, cpus: int, cluster: bool) -> int:
    """The fewest batches of ``size: auto``: one per GPU; without one, 2 per CPU core as long as a batch keeps
    ``MIN_CPU_BATCH`` slides (a job's start-up costs about what encoding 2 slides does on CPU); 1 on a cluster."""
    if cluster:
        return 1
    if gpus:
        return gpus
    return max(1, min(2 * cpus, n_slides // MIN_CPU_BATCH))


def batch_count(n_slides: int, size: int | str, above: int, minimum: int = 1) -> int:
    """The number of batch jobs for ``n_slides`` slides; 0 = one job per slide (see the module doc)."""
    if n_slides == 0 or size == 0:
        return 0
    if size == "auto":
        wanted = max(minimum, 2 ** math.ceil(math.log2(math.ceil(n_slides / SLIDES_PER_BATCH))))
        return min(wanted, MAX_BATCHES, n_slides)
    if n_slides <= above:
        return 0
    return min(math.ceil(n_slides / int(size)), MAX_BATCHES)


def batch_of(slide_id: str, n_batches: int) -> int:
    """The batch of a slide: crc32 of its id modulo the number of batches."""
    return zlib.crc32(slide_id.encode()) % n_batches


def assign(slide_ids: Iterable[str], n_batches: int) -> dict[str, int]:
    """slide → batch for every slide (empty when ``n_batches`` is 0: one job per slide)."""
    if not n_batches:
        return {}
    return {sid: batch_of(sid, n_batches) for sid in slide_ids}
