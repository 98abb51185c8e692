"""Feature extraction: encoder registry, weight loading, stores from real slides (CPU, small)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import yaml

from pathomix.errors import PathomixInputError
from pathomix.features.cli import main
from pathomix.features.encoders import ENCODERS, RANDOM_INIT, build_encoder
from pathomix.features.extract import (
    AUTO_BATCH,
    READ_CHUNK,
    BatchEncoder,
    DeviceTransform,
    ExtractParams,
    extract_slides,
    extract_tiles,
    padded_size,
)
from pathomix.features.tiles import SlideRef, TileDataset
from pathomix.tiling import main as tile_main

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_schema_enum_matches_registry():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["properties"]["features"]["properties"]["encoder"]["enum"]) == set(ENCODERS)


@pytest.mark.parametrize("name", ["resnet18_trunc", "resnet50_trunc"])
def test_resnet_trunk_matches_torchvision(tmp_path, name):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    ref = getattr(tv.models, name.removesuffix("_trunc"))().eval()
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    model, spec, digest = build_encoder(name, tmp_path / "w.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        want = ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))).mean((2, 3))
        got = model(x)
    assert got.shape == (2, spec.dim) and torch.allclose(got, want, atol=1e-5)
    assert len(digest) == 64


def test_wrong_weights_are_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(PathomixInputError, match="do not fit"):
        build_encoder("resnet18_trunc", tmp_path / "bad.pt")
    with pytest.raises(PathomixInputError, match="do not exist"):
        build_encoder("resnet18_trunc", tmp_path / "missing.pt")


def test_random_init_is_loud(caplog):
    _, _, digest = build_encoder("resnet18_trunc", None, allow_random_init=True)
    assert digest == RANDOM_INIT and "RANDOMLY INITIALISED" in caplog.text


def _tile(tmp_path, slide, modality="he", mpp=None, mag="20x", target=0.5):
    out = tmp_path / f"tiles_{mag}.h5"
    args = ["--slide-id", "S", "--path", str(slide), "--modality", modality, "--mag", mag,
            "--target-mpp", str(target), "--params", json.dumps({"tile_px": 64}), "--out", str(out),
            "--qc", str(tmp_path / f"qc_{mag}.png")]
    if mpp:
        args += ["--mpp", str(mpp)]
    assert tile_main(args) == 0
    return out


def test_extract_he_store(shared_data, tmp_path):
    slide = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    tiles = _tile(tmp_path, slide, mag="5x", target=2.0)
    out = tmp_path / "feat.h5"
    params = {"encoder": "resnet18_trunc", "batch_size": 16, "num_workers": 2, "allow_random_init": True}
    assert main(["--slide-id", "S", "--path", str(slide), "--tiles", str(tiles), "--out", str(out),
                 "--params", json.dumps(params)]) == 0
    with h5py.File(out) as h, h5py.File(tiles) as t:
        f = h["features"]
        assert f.shape == (t["coords"].shape[0], 256) and f.shape[0] > 16  # several batches, 2 workers
        assert f.attrs["encoder"] == "resnet18_trunc" and f.attrs["encoder_weights_sha256"] == RANDOM_INIT
        assert np.array_equal(h["coords"][:], t["coords"][:])
        assert np.isfinite(f[:]).all() and f[:].std() > 0
        assert h["coords"].attrs["patch_size"] == 64


def test_extract_is_deterministic_across_workers(shared_data, tmp_path):
    slide = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    tiles = _tile(tmp_path, slide, mag="5x", target=2.0)
    feats = []
    for workers in (0, 2):
        out = tmp_path / f"f{workers}.h5"
        params = {"encoder": "resnet18_trunc", "batch_size": 8, "num_workers": workers, "allow_random_init": True}
        main(["--slide-id", "S", "--path", str(slide), "--tiles", str(tiles), "--out", str(out),
              "--params", json.dumps(params)])
        with h5py.File(out) as h:
            feats.append(h["features"][:])
    np.testing.assert_allclose(feats[0], feats[1], rtol=1e-5, atol=1e-5)


def test_extract_mif_store(shared_data, tmp_path):
    slide = shared_data / "mif" / "mibi" / "fov8_RowNumber0_Depth_Profile0-MassCorrected-Filtered.tiff"
    tiles = _tile(tmp_path, slide, modality="mif", mag="5x", target=2.0)
    out = tmp_path / "mif.h5"
    assert main(["--slide-id", "S", "--path", str(slide), "--modality", "mif", "--tiles", str(tiles),
                 "--out", str(out),
                 "--params", json.dumps({"encoder": "resnet18_trunc", "num_workers": 0,
                                         "allow_random_init": True})]) == 0
    with h5py.File(out) as h:
        f = h["features"]
        channels = list(f.attrs["channels"])
        assert f.ndim == 3 and f.shape[1] == len(channels) == 21  # 22 minus the Background channel
        assert "Background" not in channels and "CD45" in channels


def test_empty_store_for_tiny_slide(shared_data, tmp_path):
    slide = shared_data / "openslide-fixtures" / "small.svs"
    tiles = _tile(tmp_path, slide)
    out = tmp_path / "empty.h5"
    assert main(["--slide-id", "S", "--path", str(slide), "--tiles", str(tiles), "--out", str(out),
                 "--params", json.dumps({"encoder": "resnet18_trunc", "allow_random_init": True})]) == 0
    with h5py.File(out) as h:
        assert h["features"].shape == (0, 256) and h["coords"].shape == (0, 2)


def test_partial_batches_are_padded_to_few_shapes():
    # a long-running process would otherwise cache backend kernels for every last-batch size
    assert [padded_size(n, 64) for n in (1, 3, 5, 9, 17, 33, 63, 64)] == [1, 4, 8, 16, 32, 64, 64, 64]
    assert padded_size(65, 100) == 100 and padded_size(7, 4) == 7
    model, spec, _ = build_encoder("resnet18_trunc", None, allow_random_init=True)
    encode = BatchEncoder(model, spec, ExtractParams(batch_size=16, device="cpu", precision="fp32"))
    tiles = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        want = model(DeviceTransform(spec)(tiles, False)).numpy()
        got = encode(tiles)
    assert got.shape == (5, spec.dim)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_pipeline_keeps_tile_order_across_chunks_and_buffers(shared_data):
    """Chunks from the workers (READ_CHUNK) are regrouped into batches in two rotating buffers:
    every tile's features come back in dataset order, equal to encoding that tile alone."""
    slide = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    coords = np.array([(x, y) for y in range(0, 2800, 200) for x in range(0, 2000, 250)])[:70]
    dataset = TileDataset(SlideRef("S", str(slide)), coords, 128, 32)
    model, spec, _ = build_encoder("resnet18_trunc", None, allow_random_init=True)
    params = ExtractParams(encoder="resnet18_trunc", batch_size=4, num_workers=2, device="cpu")
    got = extract_tiles(dataset, model.eval(), spec, params).features
    assert len(coords) > 2 * READ_CHUNK and got.shape == (len(coords), spec.dim)
    encode = BatchEncoder(model, spec, ExtractParams(batch_size=1, device="cpu", precision="fp32"))
    with torch.inference_mode(), dataset.ref.open() as s:
        want = np.concatenate([encode(dataset.read(s, i)[None]) for i in range(len(coords))])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_auto_batch_size_on_cpu_is_the_cpu_default():
    model, spec, _ = build_encoder("resnet18_trunc", None, allow_random_init=True)
    params = ExtractParams(encoder="resnet18_trunc", batch_size="auto", device="cpu")
    assert BatchEncoder(model, spec, params).batch_size == AUTO_BATCH[0]


def test_extract_slides_streams_several_slides_like_one_at_a_time(shared_data):
    """One loader over several slides (workers start once, the next slide is read early) gives each
    slide's own result, in order, empty slides included."""
    slide = str(shared_data / "wsi" / "CMU-1-Small-Region.svs")
    grid = np.array([(x, y) for y in range(0, 2800, 200) for x in range(0, 2000, 250)])
    sets = [TileDataset(SlideRef("A", slide), grid[:40], 128, 32), TileDataset(SlideRef("E", slide), grid[:0], 128, 32),
            TileDataset(SlideRef("B", slide), grid[40:], 256, 32), TileDataset(SlideRef("Z", slide), grid[:0], 128, 32)]
    model, spec, _ = build_encoder("resnet18_trunc", None, allow_random_init=True)
    params = ExtractParams(encoder="resnet18_trunc", batch_size=16, num_workers=2, device="cpu")
    together = list(extract_slides(sets, model.eval(), spec, params))
    alone = [extract_tiles(d, model, spec, params) for d in sets]
    assert [len(r.features) for r in together] == [len(r.features) for r in alone] == [40, 0, len(grid) - 40, 0]
    for t, a in zip(together, alone, strict=True):
        np.testing.assert_allclose(t.features, a.features, rtol=1e-4, atol=1e-4)
