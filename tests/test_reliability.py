"""Reliability of the feature stage on real files: unreadable tiles (``--on-bad-tile``), non-finite
features, truncated slides, SIGKILL mid-run, paths with shell metacharacters, safe checkpoint loads."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from torch import nn

from pathomix.errors import PathomixInputError
from pathomix.features import cli
from pathomix.features.encoders import ENCODERS, RANDOM_INIT
from pathomix.io.h5store import COORD_ATTRS, read_coords, write_coords, write_features
from pathomix.io.slide import open_slide
from pathomix.tiling import main as tile_main

ROOT = Path(__file__).resolve().parents[1]
CMU = ("wsi", "CMU-1-Small-Region.svs")
UNREADABLE = ("openslide-fixtures", "unreadable.svs")
# tile_px 64 at 2 µm/px: 34 tiles on CMU-1-Small-Region (level-0 size 257 px, one pyramid level)
TILING = {"tile_px": 64}
TARGET_MPP = 2.0
PARAMS = {"encoder": "resnet18_trunc", "batch_size": 4, "num_workers": 0, "allow_random_init": True}


def _tile(slide: Path, out_dir: Path, target: float = TARGET_MPP, slide_id: str = "S", status: int = 0) -> Path:
    out = out_dir / "tiles.h5"
    assert tile_main(["--slide-id", slide_id, "--path", str(slide), "--modality", "he", "--mag", "5x",
                      "--target-mpp", str(target), "--params", json.dumps(TILING), "--out", str(out),
                      "--qc", str(out_dir / "qc.png")]) == status
    return out


def _features_argv(slide: Path, tiles: Path, out: Path, params: dict | None = None,
                   slide_id: str = "S") -> list[str]:
    return ["--slide-id", slide_id, "--path", str(slide), "--tiles", str(tiles), "--out", str(out),
            "--params", json.dumps(params or PARAMS)]


def _no_output(out: Path) -> None:
    """Neither the store nor a temporary sibling is left behind."""
    assert not out.exists()
    assert not list(out.parent.glob(f".tmp-{out.name}.*"))


def _read_store(path: Path) -> dict[str, np.ndarray | dict]:
    with h5py.File(path, "r") as h:
        return {name: h[name][:] for name in h} | {"attrs": dict(h["features"].attrs)}


@pytest.fixture(scope="module")
def cmu(shared_data) -> Path:
    return shared_data.joinpath(*CMU)


@pytest.fixture(scope="module")
def cmu_tiles(cmu, tmp_path_factory) -> Path:
    tiles = _tile(cmu, tmp_path_factory.mktemp("cmu_tiles"))
    assert 30 <= len(read_coords(tiles)[0]) <= 40
    return tiles


@pytest.fixture(scope="module")
def reference(cmu, cmu_tiles, tmp_path_factory) -> dict:
    """An uninterrupted extraction of the intact slide (batch 4, no workers)."""
    out = tmp_path_factory.mktemp("reference") / "feat.h5"
    assert cli.main(_features_argv(cmu, cmu_tiles, out)) == 0
    return _read_store(out)


# 1. on_bad_tile -------------------------------------------------------------------------------------------


def _one_tile_store(path: Path, slide_id: str) -> Path:
    attrs = {a: 0 for a in COORD_ATTRS} | {
        "patch_size": 16, "patch_size_level0": 16, "level0_magnification": 20.0, "target_magnification": 20.0,
        "name": slide_id, "level0_width": 16, "level0_height": 16, "downsample": 1.0, "target_mpp": 0.499,
        "level0_mpp": 0.499, "slide_id": slide_id,
    }
    write_coords(path, np.array([[0, 0]]), attrs)
    return path


def test_tiling_an_unreadable_slide_names_it(shared_data, tmp_path, caplog):
    slide = shared_data.joinpath(*UNREADABLE)
    _tile(slide, tmp_path, target=0.5, slide_id="U", status=1)  # an input error: exit status 1, no traceback
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert re.search(r"slide U \(.*unreadable\.svs\): reading .*Bogus marker length", errors[0].getMessage())
    _no_output(tmp_path / "tiles.h5")


def test_bad_tile_fails_by_default(shared_data, tmp_path, caplog):
    slide = shared_data.joinpath(*UNREADABLE)
    tiles = _one_tile_store(tmp_path / "tiles.h5", "U")
    out = tmp_path / "feat.h5"
    assert cli.main(_features_argv(slide, tiles, out, slide_id="U")) == 1
    _no_output(out)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert re.search(r"slide U \(.*unreadable\.svs\): reading a 16x16 region at level 0, level-0 x=0, y=0 "
                     r"failed \(Bogus marker length\)", errors[0])
    assert "features.on_bad_tile: skip" in errors[0] and "--on-bad-tile skip" in errors[0]


def test_bad_tile_skip_records_it(shared_data, tmp_path, caplog):
    slide = shared_data.joinpath(*UNREADABLE)
    tiles = _one_tile_store(tmp_path / "tiles.h5", "U")
    out = tmp_path / "feat.h5"
    assert cli.main(_features_argv(slide, tiles, out, slide_id="U") + ["--on-bad-tile", "skip"]) == 0
    store = _read_store(out)
    assert store["features"].shape == (0, 256) and store["coords"].shape == (0, 2)
    assert store["skipped_coords"].dtype == np.int64 and store["skipped_coords"].tolist() == [[0, 0]]
    assert store["attrs"]["n_skipped"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("slide U: skipped 1 of 1 tile(s)" in w and "Bogus marker length" in w for w in warnings)


def _corrupt_copy(slide: Path, dest: Path, coords: np.ndarray, size0: int, picks: list[int]) -> set[int]:
    """Copy ``slide`` with the JPEG data of the level-0 tiles under ``coords[picks]`` zeroed.

    Returns the indices of every grid tile whose region touches a corrupted level-0 tile.
    """
    data = bytearray(slide.read_bytes())
    with tifffile.TiffFile(slide) as t:
        page = t.pages[0]
        tw, th, offsets, counts = page.tilewidth, page.tilelength, page.dataoffsets, page.databytecounts
        ncols = -(-page.imagewidth // tw)
    hit = {(int(coords[i][0] + size0 // 2) // tw, int(coords[i][1] + size0 // 2) // th) for i in picks}
    for col, row in hit:
        k = row * ncols + col
        data[offsets[k]:offsets[k] + counts[k]] = bytes(counts[k])
    dest.write_bytes(bytes(data))

    def touches(x: int, y: int) -> bool:
        return any(x < (c + 1) * tw and x + size0 > c * tw and y < (r + 1) * th and y + size0 > r * th
                   for c, r in hit)

    return {i for i, (x, y) in enumerate(coords) if touches(x, y)}


@pytest.fixture
def corrupt(cmu, cmu_tiles, tmp_path) -> tuple[Path, set[int]]:
    coords, attrs = read_coords(cmu_tiles)
    bad = _corrupt_copy(cmu, tmp_path / "corrupt.svs", coords, int(attrs["patch_size_level0"]), [3, 20])
    assert 2 <= len(bad) < len(coords) - 8  # some tiles bad, several batches of good ones
    return tmp_path / "corrupt.svs", bad


def test_corrupt_tiles_fail_from_workers_with_a_clear_message(corrupt, cmu_tiles, tmp_path, caplog):
    slide, bad = corrupt
    out = tmp_path / "feat.h5"
    params = PARAMS | {"batch_size": 8, "num_workers": 2}
    assert cli.main(_features_argv(slide, cmu_tiles, out, params)) == 1
    _no_output(out)
    x, y = read_coords(cmu_tiles)[0][min(bad)]
    error = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert f"slide S ({slide}): reading a 257x257 region at level 0, level-0 x={x}, y={y} failed" in error
    assert "Not a JPEG file" in error and "Traceback" not in error


def test_skip_keeps_features_aligned_with_workers(corrupt, cmu_tiles, reference, tmp_path, caplog):
    slide, bad = corrupt
    out = tmp_path / "feat.h5"
    params = PARAMS | {"batch_size": 8, "num_workers": 2}
    assert cli.main(_features_argv(slide, cmu_tiles, out, params) + ["--on-bad-tile", "skip"]) == 0
    coords = read_coords(cmu_tiles)[0]
    good = np.array([i not in bad for i in range(len(coords))])
    store = _read_store(out)
    assert np.array_equal(store["coords"], coords[good])
    assert np.array_equal(store["skipped_coords"], coords[~good]) and store["attrs"]["n_skipped"] == len(bad)
    # every kept row is the intact slide's feature of that tile: nothing shifted, no blank tile encoded
    np.testing.assert_allclose(store["features"], reference["features"][good], rtol=1e-4, atol=1e-4)
    assert f"slide S: skipped {len(bad)} of {len(coords)} tile(s)" in caplog.text
    from pathomix.features.manifest import manifest_row  # the count reaches the manifest (and the report)

    row = manifest_row(out, pd.Series({"slide_id": "S", "patient_id": "P", "modality": "he", "cohort": "main"}), "20x")
    assert row["n_skipped"] == len(bad) and row["n_tiles"] == int(good.sum())


def test_intact_store_records_no_skips(reference):
    assert reference["attrs"]["n_skipped"] == 0 and reference["skipped_coords"].shape == (0, 2)
    assert reference["attrs"]["encoder_weights_sha256"] == RANDOM_INIT


# 2. non-finite features -----------------------------------------------------------------------------------


def test_write_features_refuses_nan_and_inf(tmp_path):
    coords = np.array([[0, 0], [10, 20], [30, 40]])
    feats = np.ones((3, 4), np.float32)
    feats[1, 2], feats[2, 0] = np.nan, np.inf
    out = tmp_path / "feat.h5"
    with pytest.raises(PathomixInputError, match=r"^slide S: non-finite features for 2 tile\(s\), first at "
                                                  rf"tile 1 \(x=10, y=20\), so {re.escape(str(out))} was not written"):
        write_features(out, coords, {"slide_id": "S"}, feats,
                       {"encoder": "e", "encoder_weights_sha256": RANDOM_INIT, "precision": "fp32"})
    _no_output(out)


class _NanAt(nn.Module):
    """A tiny stand-in encoder (256-d) that yields NaN for the ``index``-th tile it sees."""

    def __init__(self, index: int):
        super().__init__()
        self.index, self.seen = index, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.adaptive_avg_pool2d(x, 16).flatten(1)[:, :256].clone()
        if self.seen <= self.index < self.seen + len(x):
            out[self.index - self.seen] = float("nan")
        self.seen += len(x)
        return out


def test_nan_from_the_encoder_fails_naming_the_tile(cmu, cmu_tiles, tmp_path, caplog, monkeypatch):
    spec = ENCODERS["resnet18_trunc"]
    monkeypatch.setattr(cli, "build_encoder", lambda name, weights, **_: (_NanAt(10), spec, RANDOM_INIT))
    out = tmp_path / "feat.h5"
    assert cli.main(_features_argv(cmu, cmu_tiles, out)) == 1
    _no_output(out)
    x, y = read_coords(cmu_tiles)[0][10]
    assert f"slide S: non-finite features for 1 tile(s), first at tile 10 (x={x}, y={y}), so {out} was not written" \
        in caplog.text


# 3. truncated slide ---------------------------------------------------------------------------------------


def test_truncated_slide_fails_at_open_naming_the_file(cmu, cmu_tiles, tmp_path, caplog):
    data = cmu.read_bytes()
    slide = tmp_path / "truncated.svs"
    slide.write_bytes(data[: len(data) // 2])
    message = rf"slide T \({re.escape(str(slide))}\) is not a whole-slide image that openslide recognises"
    with pytest.raises(PathomixInputError, match=message):
        open_slide(slide, slide_id="T")
    _tile(slide, tmp_path, slide_id="T", status=1)
    assert re.search(message, caplog.text)
    _no_output(tmp_path / "tiles.h5")
    out = tmp_path / "feat.h5"  # tiles from the intact copy, features from the truncated one
    assert cli.main(_features_argv(slide, cmu_tiles, out, PARAMS | {"num_workers": 2}, slide_id="T")) == 1
    _no_output(out)
    assert re.search(message, caplog.text) and "Traceback" not in caplog.text


# 4. SIGKILL mid-run ---------------------------------------------------------------------------------------

_PROGRESS = re.compile(r"encode S: +\d+%\|[^|]*\| *(\d+)/(\d+)")


def _popen(argv: list[str]) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1", "PATHOMIX_LOGLEVEL": "INFO"}
    return subprocess.Popen([sys.executable, "-m", "pathomix.features", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_while_encoding(proc: subprocess.Popen, timeout: float = 300.0) -> str:
    """SIGKILL ``proc`` once its encode progress shows a finished batch but not the last one."""
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(4096), b"")),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = [(int(a), int(b)) for a, b in _PROGRESS.findall(b"".join(chunks).decode(errors="replace"))]
        if any(0 < a < b for a, b in done):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    return b"".join(chunks).decode(errors="replace")


def test_sigkill_leaves_no_store_and_rerun_is_identical(cmu, cmu_tiles, reference, tmp_path):
    out = tmp_path / "run" / "feat.h5"
    proc = _popen(_features_argv(cmu, cmu_tiles, out))
    stderr = _kill_while_encoding(proc)
    assert proc.returncode == -signal.SIGKILL, f"not killed while encoding:\n{stderr[-2000:]}"
    assert _PROGRESS.search(stderr) and "wrote" not in stderr
    assert not out.exists()
    if out.parent.exists():
        assert all(p.name.startswith(f".tmp-{out.name}.") for p in out.parent.iterdir())
    out.parent.mkdir(exist_ok=True)
    (out.parent / f".tmp-{out.name}.stale01").write_bytes(b"half a store")  # as a kill during the write leaves
    rerun = subprocess.run([sys.executable, "-m", "pathomix.features", *_features_argv(cmu, cmu_tiles, out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    store = _read_store(out)
    assert np.array_equal(store["features"], reference["features"])
    assert np.array_equal(store["coords"], reference["coords"])


# 5. paths with spaces and shell metacharacters ------------------------------------------------------------


def test_paths_with_shell_metacharacters(cmu, tmp_path):
    folder = tmp_path / "my slides; rm -rf x $(touch pwned)" / "it's \"quoted\" `date`"
    folder.mkdir(parents=True)
    slide = folder / "a b&c|d>e.svs"
    shutil.copyfile(cmu, slide)
    out_dir = tmp_path / "out $HOME; *" / "5x (a&b)"
    out_dir.mkdir(parents=True)
    tiles = _tile(slide, out_dir, target=4.0, slide_id="a b&c")
    out = out_dir / "feat $(id).h5"
    assert cli.main(_features_argv(slide, tiles, out, slide_id="a b&c")) == 0
    store = _read_store(out)
    assert len(store["features"]) == len(read_coords(tiles)[0]) > 0
    assert (out_dir / "qc.png").exists()
    assert not list(tmp_path.rglob("pwned")) and not (tmp_path / "x").exists()


# 6. checkpoints -------------------------------------------------------------------------------------------


def _calls(text: str, name: str) -> list[str]:
    """The full text of every ``name(...)`` call in ``text`` (parentheses balanced)."""
    calls = []
    for match in re.finditer(re.escape(name) + r"\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        calls.append(text[match.start():end + 1])
    return calls


def test_every_torch_load_is_weights_only():
    calls = {path: _calls(path.read_text(), "torch.load") for path in sorted((ROOT / "src").rglob("*.py"))}
    found = [(path, call) for path, cs in calls.items() for call in cs]
    assert found, "no torch.load( in src/: the scan is broken"
    unsafe = [f"{path.relative_to(ROOT)}: {call}" for path, call in found if "weights_only=True" not in call]
    assert not unsafe, "torch.load without weights_only=True (unpickles arbitrary code):\n" + "\n".join(unsafe)
