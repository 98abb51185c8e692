"""Slide batches (pathomix.batch): many slides per tiling/extraction job for large cohorts.

On copies of the real CMU-1-Small-Region.svs: a batch writes the same per-slide stores as the
per-slide jobs, a rerun redoes only stale slides (file changed, config changed), and a bad slide
fails the batch after the others are done, without a marker."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
from snake import snakemake_cmd, workflow_env

from pathomix import paths as P
from pathomix.batch.cli import main
from pathomix.io.stamps import STAMP_ATTR

TILING = {"tile_px": 256, "mask_mpp": 8.0, "min_tissue_fraction": 0.5}
FEATURES = {"encoder": "resnet18_trunc", "batch_size": 32, "num_workers": 0, "device": "cpu", "allow_random_init": True}


@pytest.fixture
def cohort(shared_data: Path, tmp_path: Path) -> dict:
    slides = []
    for i in range(3):
        path = tmp_path / "slides" / f"S{i}.svs"
        path.parent.mkdir(exist_ok=True)
        shutil.copy(shared_data / "wsi" / "CMU-1-Small-Region.svs", path)
        slides.append({"slide_id": f"S{i}", "path": str(path), "modality": "he", "mpp": None})
    return {"root": tmp_path, "members": slides, "results": tmp_path / "results"}


def tile(c: dict, members: list | None = None, params: dict | None = None, code: str = "c1") -> int:
    return main(["tile", "--members", json.dumps(members or c["members"]), "--results", str(c["results"]),
                 "--mag", "20x", "--target-mpp", "0.5", "--params", json.dumps(params or TILING), "--code", code,
                 "--out", str(P.tile_batch(c["results"], 0))])


def extract(c: dict) -> int:
    return main(["extract", "--members", json.dumps(c["members"]), "--results", str(c["results"]), "--mag", "20x",
                 "--encoder", "resnet18_trunc", "--params", json.dumps(FEATURES), "--code", "f1",
                 "--out", str(P.feature_batch(c["results"], "resnet18_trunc", 0))])


def statuses(marker: Path) -> dict[str, str]:
    m = pd.read_parquet(marker)
    return dict(zip(m.slide_id, m.status, strict=True))


def test_a_batch_writes_the_per_slide_stores_and_redoes_only_stale_slides(cohort: dict) -> None:
    marker = P.tile_batch(cohort["results"], 0)
    assert tile(cohort) == 0
    assert statuses(marker) == {"S0": "computed", "S1": "computed", "S2": "computed"}
    for s in ("S0", "S1", "S2"):
        with h5py.File(P.tiles(cohort["results"], "20x", s)) as h:
            assert h["coords"].shape[0] > 0 and STAMP_ATTR in h.attrs
        assert P.tile_qc(cohort["results"], "20x", s).exists()
    assert tile(cohort) == 0  # nothing changed
    assert set(statuses(marker).values()) == {"up to date"}
    slide = Path(cohort["members"][1]["path"])
    os.utime(slide, ns=(slide.stat().st_atime_ns, slide.stat().st_mtime_ns + 10**9))  # the slide file changed
    assert tile(cohort) == 0
    assert statuses(marker) == {"S0": "up to date", "S1": "computed", "S2": "up to date"}
    assert tile(cohort, code="c2") == 0  # the tiling code changed
    assert set(statuses(marker).values()) == {"computed"}

    fmarker = P.feature_batch(cohort["results"], "resnet18_trunc", 0)
    assert extract(cohort) == 0
    assert set(statuses(fmarker).values()) == {"computed"}
    paths = pd.read_parquet(fmarker).path
    for p in paths:
        with h5py.File(p) as h:
            assert h["features"].shape[0] == h["coords"].shape[0] > 0
    assert extract(cohort) == 0
    assert set(statuses(fmarker).values()) == {"up to date"}
    assert tile(cohort, params={**TILING, "min_tissue_fraction": 0.6}, code="c2") == 0  # re-tiled: new stamps
    assert extract(cohort) == 0
    assert set(statuses(fmarker).values()) == {"computed"}  # so the features are redone too


def test_a_bad_slide_fails_the_batch_after_the_others(cohort: dict, caplog) -> None:
    members = [*cohort["members"][:2], {"slide_id": "BAD", "path": str(cohort["root"] / "nope.svs"),
                                        "modality": "he", "mpp": None}, cohort["members"][2]]
    assert tile(cohort, members=members) == 1
    assert "slide BAD:" in caplog.text and "1 of 4 slides of this batch failed: ['BAD']" in caplog.text
    assert all(P.tiles(cohort["results"], "20x", s).exists() for s in ("S0", "S1", "S2"))  # the others are done
    assert not P.tiles(cohort["results"], "20x", "BAD").exists()
    assert not P.tile_batch(cohort["results"], 0).exists()  # no marker: nothing downstream runs on it


def _plan(work: Path, *config: str, printed: bool = False, **env: str) -> dict[str, int] | str:
    """Jobs per rule of a dry run (`printed`: its whole output, with each job's command and resources)."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    show = ["-p", "--cores", "16"] if printed else ["--quiet", "rules", "--cores", "1"]
    proc = subprocess.run([*snakemake_cmd(), "-s", str(root / "Snakefile"), "-d", str(work), "-n", *show,
                           "--config", *config], env=workflow_env(**env), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if printed:
        return proc.stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M)}


def test_large_cohorts_are_planned_in_batches(tmp_path: Path) -> None:
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "dag_scale.py"  # the same stub cohort it plans
    spec = importlib.util.spec_from_file_location("dag_scale", bench)
    dag_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag_scale)
    n = 60
    dag_scale.make_cohort(tmp_path, n, models=("abmil", "fof"))
    per_slide = _plan(tmp_path, "slide_batches={size: 0}")
    assert per_slide["tile"] == per_slide["extract"] == n and "tile_extract_batch" not in per_slide
    assert _plan(tmp_path, "slide_batches={size: 10, above: 60}") == per_slide  # at most `above`: per slide
    batched = _plan(tmp_path, "slide_batches={size: 10, above: 50}")
    assert not {"tile", "extract", "tile_batch", "extract_batch"} & set(batched)  # one job per batch does both
    assert 3 <= batched["tile_extract_batch"] <= 6  # crc32 spreads 60 slides over 6 batches
    assert batched["train"] == per_slide["train"] and batched["manifest"] == 1
    auto = _plan(tmp_path)  # size: auto, no GPU: at least 2 batches per core (60 slides alone would make 2)
    assert 2 <= auto["tile_extract_batch"] <= min(2 * (os.cpu_count() or 1), n)
    assert _plan(tmp_path, "gpus=0")["tile_extract_batch"] == auto["tile_extract_batch"]  # no GPU, as here


def test_a_node_with_two_gpus_gets_a_batch_per_gpu_that_tiles_ahead(tmp_path: Path) -> None:
    """PATHOMIX_GPUS=2 (as nvidia-smi -L would say): 60 slides in 2 batch jobs, each claiming one GPU and one
    thread more than extraction for its background tiling process (slide_batches.overlap: auto)."""
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "dag_scale.py"
    spec = importlib.util.spec_from_file_location("dag_scale", bench)
    dag_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag_scale)
    dag_scale.make_cohort(tmp_path, 60)
    out = _plan(tmp_path, printed=True, PATHOMIX_GPUS="2")  # features.num_workers: 2 → threads 2 + 2 + 1
    jobs = [j for j in out.split("\n\n") if "rule tile_extract_batch:" in j]
    assert len(jobs) == 2
    assert all("--tile-workers 1 " in j and "gpu=1" in j and "threads: 5" in j for j in jobs)


@pytest.mark.parametrize(("n", "size", "above", "minimum", "batches"), [
    (36, "auto", 500, 4, 4),  # the demo on 2 cores: 4 jobs of about 9 slides
    (36, "auto", 500, 1, 1),  # ... on one GPU: one job (tiling overlaps inside it)
    (3, "auto", 500, 4, 3),  # never more batches than slides
    (101, "auto", 500, 1, 4),  # ceil(101 / 50) = 3 → 4: a power of two, so added slides rarely move
    (10_000, "auto", 500, 4, 256),
    (100_000, "auto", 500, 4, 1024),  # at most 1024 jobs: the batches grow instead
    (400, 50, 500, 4, 0), (600, 50, 500, 4, 12), (600, 0, 0, 4, 0), (0, "auto", 500, 4, 0),
])
def test_batch_policy(n: int, size: int | str, above: int, minimum: int, batches: int) -> None:
    from pathomix.batch.policy import batch_count

    assert batch_count(n, size, above, minimum) == batches


def test_the_fewest_batches_keep_every_cpu_core_or_gpu_busy() -> None:
    from pathomix.batch.policy import min_batches

    assert min_batches(36, gpus=0, cpus=2, cluster=False) == 4  # the demo: 2 per core
    assert min_batches(36, gpus=0, cpus=16, cluster=False) == 9  # but batches of at least 4 slides
    assert min_batches(3, gpus=2, cpus=16, cluster=False) == 2  # one per GPU
    assert min_batches(36, gpus=0, cpus=16, cluster=True) == 1


def test_a_slide_keeps_its_batch_while_the_cohort_grows_within_a_power_of_two() -> None:
    from pathomix.batch.policy import assign, batch_count

    ids = [f"S{i:05d}" for i in range(130)]
    before = assign(ids[:101], batch_count(101, "auto", 500, 1))
    after = assign(ids, batch_count(130, "auto", 500, 1))
    assert all(after[s] == b for s, b in before.items())


@pytest.mark.slow
def test_a_slide_added_to_a_batched_cohort_is_the_only_one_computed(cohort: dict) -> None:
    """Through Snakemake: tile + extract + manifest in batches; a new slide reruns its batch jobs, which
    compute that slide alone, and the manifest then lists it."""
    import subprocess

    import yaml

    root, work = Path(__file__).resolve().parents[1], cohort["root"]
    # crc32 mod 2: S0, S1 → batch 0; S4, S5 → batch 1 (2 batches for 3 or 4 slides of size 2)
    members = [{**m, "slide_id": sid} for m, sid in zip(cohort["members"], ("S0", "S1", "S4"), strict=True)]

    def sheet(rows: list[dict]) -> None:
        pd.DataFrame([{**r, "patient_id": f"P{r['slide_id']}", "mpp": ""} for r in rows]).to_csv(
            work / "slides.tsv", sep="\t", index=False)

    def run() -> None:
        env = workflow_env(PYTHONPATH=str(root / "src"))
        proc = subprocess.run([*snakemake_cmd(), "-s", str(root / "Snakefile"), "-d", str(work),
                               "--cores", "2", str(P.manifest("results", "resnet18_trunc"))], env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]

    sheet(members)
    pd.DataFrame({"patient_id": [f"P{m['slide_id']}" for m in members] + ["PS5"], "idh": "wt"}).to_csv(
        work / "clinical.tsv", sep="\t", index=False)
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg.update(slides="slides.tsv", clinical="clinical.tsv", genes=None, mif_channels=None, demo={"enabled": False},
               slide_batches={"size": 2, "above": 0})
    cfg["tiling"]["magnifications"] = {"20x": 0.5}
    cfg["train"]["models"] = ["abmil"]
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    run()
    batches = work / "results" / "features" / "resnet18_trunc" / "batches"
    assert statuses(batches / "0.parquet") == {"S0": "computed", "S1": "computed"}
    assert statuses(batches / "1.parquet") == {"S4": "computed"}
    untouched = (batches / "0.parquet").stat().st_mtime_ns
    shutil.copy(members[0]["path"], work / "slides" / "S5.svs")
    sheet([*members, {"slide_id": "S5", "path": str(work / "slides" / "S5.svs"), "modality": "he"}])
    run()
    assert statuses(batches / "1.parquet") == {"S4": "up to date", "S5": "computed"}  # only the new slide
    assert (batches / "0.parquet").stat().st_mtime_ns == untouched  # the other batch did not rerun
    manifest = pd.read_parquet(work / "results" / "features" / "resnet18_trunc" / "manifest.parquet")
    assert set(manifest.slide_id) == {"S0", "S1", "S4", "S5"}


def test_stores_of_per_slide_jobs_are_up_to_date_for_a_batch(cohort: dict) -> None:
    """A cohort that grows past slide_batches.above keeps its stores: the per-slide jobs stamp them the same way."""
    from pathomix.features.cli import main as extract_main
    from pathomix.tiling.stage import main as tile_main

    res = cohort["results"]
    for m in cohort["members"]:
        tiles = P.tiles(res, "20x", m["slide_id"])
        assert tile_main(["--slide-id", m["slide_id"], "--path", m["path"], "--modality", "he", "--mag", "20x",
                          "--target-mpp", "0.5", "--params", json.dumps(TILING), "--out", str(tiles),
                          "--qc", str(P.tile_qc(res, "20x", m["slide_id"])), "--code", "c1"]) == 0
        assert extract_main(["--slide-id", m["slide_id"], "--path", m["path"], "--modality", "he", "--tiles",
                             str(tiles), "--out", str(P.features(res, "resnet18_trunc", "20x", m["slide_id"])),
                             "--params", json.dumps(FEATURES), "--code", "f1"]) == 0
    assert tile(cohort) == 0 and extract(cohort) == 0
    assert set(statuses(P.tile_batch(res, 0)).values()) == {"up to date"}
    assert set(statuses(P.feature_batch(res, "resnet18_trunc", 0)).values()) == {"up to date"}


def tile_extract(c: dict, workers: int) -> int:
    return main(["tile-extract", "--members", json.dumps(c["members"]), "--results", str(c["results"]), "--mag", "20x",
                 "--target-mpp", "0.5", "--tile-params", json.dumps(TILING), "--tile-code", "c1",
                 "--tile-out", str(P.tile_batch(c["results"], 0)), "--tile-workers", str(workers),
                 "--encoder", "resnet18_trunc", "--params", json.dumps(FEATURES), "--code", "f1",
                 "--out", str(P.feature_batch(c["results"], "resnet18_trunc", 0))])


def test_tile_extract_tiles_the_next_slide_while_encoding_this_one(cohort: dict) -> None:
    """One job per batch (GPU nodes): a background process tiles slide k+1 while slide k is encoded, each
    slide is encoded once its tiles exist, and the stores are those the separate tile and extract jobs make."""
    assert tile_extract(cohort, workers=1) == 0
    tiles = pd.read_parquet(P.tile_batch(cohort["results"], 0)).set_index("slide_id")
    feats = pd.read_parquet(P.feature_batch(cohort["results"], "resnet18_trunc", 0)).set_index("slide_id")
    assert set(tiles.status) == set(feats.status) == {"computed"}
    order = [m["slide_id"] for m in cohort["members"]]
    for k, sid in enumerate(order):
        assert tiles.ended[sid] <= feats.started[sid]  # encoded after its tiles were written
        if k + 1 < len(order):  # the next slide's tiling began before this slide's encoding ended
            assert tiles.started[order[k + 1]] < feats.ended[sid]
    assert tile(cohort) == 0 and extract(cohort) == 0  # the same stamps: the separate stages have nothing to do
    assert set(statuses(P.tile_batch(cohort["results"], 0)).values()) == {"up to date"}
    assert set(statuses(P.feature_batch(cohort["results"], "resnet18_trunc", 0)).values()) == {"up to date"}


def test_tile_extract_without_workers_redoes_only_stale_slides(cohort: dict) -> None:
    assert tile_extract(cohort, workers=0) == 0
    shutil.copy(cohort["members"][0]["path"], cohort["members"][1]["path"])  # a slide file changed
    assert tile_extract(cohort, workers=0) == 0
    assert statuses(P.tile_batch(cohort["results"], 0)) == {"S0": "up to date", "S1": "computed", "S2": "up to date"}
    assert statuses(P.feature_batch(cohort["results"], "resnet18_trunc", 0)) == statuses(
        P.tile_batch(cohort["results"], 0))


@pytest.mark.slow
def test_two_faked_gpus_run_two_batch_jobs_at_once_each_on_its_own_device(cohort: dict) -> None:
    """Through Snakemake with PATHOMIX_GPUS=2 (no real GPU: the jobs fall back to CPU after pinning): the run-wide
    gpu resource is 2, the 3 slides make 2 tile_extract_batch jobs (one per GPU), which run side by side, each
    pinned to its own device, tiling ahead in a background process (overlap: auto on a GPU node)."""
    import re
    import subprocess

    import yaml

    root, work = Path(__file__).resolve().parents[1], cohort["root"]
    # crc32 mod 2: S0, S1 → batch 0; S4 → batch 1
    members = [{**m, "slide_id": sid} for m, sid in zip(cohort["members"], ("S0", "S1", "S4"), strict=True)]
    pd.DataFrame([{**m, "patient_id": f"P{m['slide_id']}", "mpp": ""} for m in members]).to_csv(
        work / "slides.tsv", sep="\t", index=False)
    pd.DataFrame({"patient_id": [f"P{m['slide_id']}" for m in members], "idh": "wt"}).to_csv(
        work / "clinical.tsv", sep="\t", index=False)
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg.update(slides="slides.tsv", clinical="clinical.tsv", genes=None, mif_channels=None, demo={"enabled": False})
    cfg["tiling"]["magnifications"] = {"20x": 0.5}
    cfg["features"].update(num_workers=0, batch_size=32)
    cfg["train"]["models"] = ["abmil"]
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = workflow_env(PYTHONPATH=str(root / "src"), PATHOMIX_GPUS="2", PATHOMIX_GPU_LOCKS=str(work / "locks"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([*snakemake_cmd(), "-s", str(root / "Snakefile"), "-d", str(work), "--cores", "8",
                           str(P.manifest("results", "resnet18_trunc"))], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    logs = sorted((work / "results" / "logs" / "tile_extract" / "resnet18_trunc").glob("batch*.log"))
    assert len(logs) == 2
    devices = {re.search(r"pinned to GPU (\d)", log.read_text()).group(1) for log in logs}
    assert devices == {"0", "1"}
    spans = [pd.read_parquet(m) for m in sorted((work / "results" / "features" / "resnet18_trunc" / "batches")
                                                 .glob("*.parquet"))]
    tiles = [pd.read_parquet(m) for m in sorted((work / "results" / "tiles" / "batches").glob("*.parquet"))]
    (a, b) = [(min(t.started.min(), f.started.min()), f.ended.max()) for t, f in zip(tiles, spans, strict=True)]
    assert a[0] < b[1] and b[0] < a[1]  # the two batch jobs overlapped in time
