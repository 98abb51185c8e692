"""``features.gpu_decode`` (issue 21, goal 2): JPEG tile streams straight from the TIFF, decoded in batches
(``torchvision.io.decode_jpeg``; here on the CPU, on CUDA with nvjpeg).

Tolerances asserted, for any decoder: mean |diff| < 1.5 and max |diff| <= 12 grey levels against the slide
reader's pixels (tifffile/openslide). Measured on the CPU (libjpeg-turbo in torchvision and in imagecodecs,
same integer IDCT): 0 and 0 on every file, level and region below, aligned, unaligned and at the edges.
Features with gpu_decode on the CPU against the default path: cosine 1.000000 (min over tiles), max
|diff| 0 without a resize and < 0.01 with one (torch's antialiased bilinear instead of PIL's).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import torch
import yaml
from PIL import Image
from shared_files import need
from torchvision.io import ImageReadMode, decode_jpeg

from pathomix.errors import PathomixInputError
from pathomix.features.encoders import build_encoder
from pathomix.features.extract import ExtractParams, extract_tiles
from pathomix.features.jpegdecode import PackedStreams, decode_regions
from pathomix.features.tiles import SlideRef, TileDataset
from pathomix.io.jpegtiles import level_reason, open_jpeg_tiles
from pathomix.io.slide import WSISlide, open_slide

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"
SMALL = DATA / "openslide-fixtures" / "small.svs"
MEAN_TOL, MAX_TOL = 1.5, 12
CPU = torch.device("cpu")




def write_pyramid(path: Path, img: np.ndarray, compression: str | None = "jpeg", tile: int = 256,
                  downsample: int = 4, ome: bool = False) -> Path:
    """A two-level tiled TIFF at 0.5 µm/px that openslide opens as generic-tiff (or an OME-TIFF for tifffile);
    tifffile writes JPEG tiles as YCbCr 4:2:0 complete streams (no JPEGTables), unlike Aperio."""
    low = np.array(Image.fromarray(img).resize((img.shape[1] // downsample, img.shape[0] // downsample),
                                              Image.Resampling.BOX))
    kw = {"tile": (tile, tile), "compression": compression, "photometric": "rgb"}
    if ome:
        meta = {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
        with tifffile.TiffWriter(path, ome=True) as tw:
            tw.write(img, subifds=1, metadata=meta, **kw)
            tw.write(low, subfiletype=1, **kw)
        return path
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **kw)
        tw.write(low, subfiletype=1, resolution=(2e4 / downsample,) * 2, resolutionunit="CENTIMETER", **kw)
    return path


@pytest.fixture(scope="module")
def synth(tmp_path_factory, cmu_pixels: np.ndarray) -> Path:
    """Real H&E texture (a 1000 x 900 crop of CMU-1: edge tiles at both borders), JPEG YCbCr, two levels."""
    return write_pyramid(tmp_path_factory.mktemp("synth") / "synth.tiff", cmu_pixels[:900, :1000])


@pytest.fixture(scope="module")
def ome(tmp_path_factory, cmu_pixels: np.ndarray) -> Path:
    return write_pyramid(tmp_path_factory.mktemp("ome") / "he.ome.tiff", cmu_pixels[:900, :1000], ome=True)


def regions(width: int, height: int) -> list[tuple[int, int, int]]:
    """(lx, ly, side) in level pixels: aligned at the origin, unaligned across tiles, at the bottom-right edge,
    and a whole-level read for small levels."""
    side = min(width, height)
    wanted = [(0, 0, min(256, side)), (37, 51, min(300, side - 51)), (width - 90, height - 90, 90),
              (width // 2 - 40, height // 3, min(224, side // 2)), (width // 4, height // 4, side // 2)]
    return [(x, y, n) for x, y, n in wanted if n > 0 and x >= 0 and y >= 0 and x + n <= width and y + n <= height]


def stream_pixels(jpeg, level: int, x: int, y: int, n: int, device=CPU) -> np.ndarray:
    region = jpeg.region(level, x, y, n, n)
    assert region is not None
    tiles, ok = decode_regions(PackedStreams.pack([region]), n, device)
    assert ok.all()
    return tiles[0].permute(1, 2, 0).cpu().numpy()


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert got.shape == want.shape, what
    assert diff.mean() < MEAN_TOL and diff.max() <= MAX_TOL, f"{what}: mean {diff.mean():.3f}, max {diff.max()}"


def check_slide(path: Path, device=CPU, mpp: float | None = None) -> int:
    """Compare streams with the reader (and openslide, where it opens the file) on every eligible level."""
    checked = 0
    with open_slide(path, mpp=mpp) as slide:
        jpeg, why = open_jpeg_tiles(slide)
        assert jpeg is not None, why
        osr = openslide.OpenSlide(str(path)) if isinstance(slide, WSISlide) else None
        try:
            for level in jpeg.levels:
                w, h = slide.level_dimensions[level]
                ds = slide.level_downsamples[level]
                for lx, ly, n in regions(w, h):
                    x, y = round(lx * ds), round(ly * ds)
                    got = stream_pixels(jpeg, level, x, y, n, device)
                    assert_close(got, slide.read_region(x, y, level, n, n), f"{path.name} level {level} {lx, ly, n}")
                    if osr is not None:
                        want = np.array(osr.read_region((x, y), level, (n, n)).convert("RGB"))
                        assert_close(got, want, f"{path.name} level {level} {lx, ly, n} vs openslide")
                    checked += 1
        finally:
            jpeg.close()
            if osr is not None:
                osr.close()
    return checked


# ---- streams decode to the readers' pixels --------------------------------------------------------------

def test_svs_rgb_tiles_with_jpegtables_decode_like_openslide() -> None:
    assert check_slide(need(CMU)) == 5


def test_svs_smaller_than_one_tile() -> None:
    assert check_slide(need(SMALL)) == 2   # a 16 x 16 image in one padded 64 x 64 tile


def test_generic_tiff_ycbcr_complete_streams_two_levels(synth: Path) -> None:
    assert check_slide(synth) == 10


def test_ome_tiff_he(ome: Path) -> None:
    assert check_slide(ome) == 10


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_aperio_tiles_need_the_adobe_marker() -> None:
    """Aperio's RGB-encoded tiles carry no marker saying so: libjpeg-turbo would convert them from YCbCr."""
    with open_slide(need(CMU)) as slide:
        jpeg, _ = open_jpeg_tiles(slide)
        page = tifffile.TiffFile(CMU).pages[0]
        tables = page.jpegtables
        fh = page.parent.filehandle
        fh.seek(page.dataoffsets[0])
        raw = fh.read(page.databytecounts[0])
        plain = bytearray(tables[:-2] + raw[2:])   # tables + tile, no colour transform declared
        wrong = decode_jpeg(torch.frombuffer(plain, dtype=torch.uint8), mode=ImageReadMode.RGB)
        right = stream_pixels(jpeg, 0, 0, 0, 240)
        want = slide.read_region(0, 0, 0, 240, 240)
        assert np.abs(wrong.permute(1, 2, 0).numpy().astype(int) - want).mean() > 20
        assert_close(right, want, "with APP14")
        jpeg.close()


def test_tiles_shared_by_regions_are_packed_once(synth: Path) -> None:
    with open_slide(synth) as slide:
        jpeg, _ = open_jpeg_tiles(slide)
        regs = [jpeg.region(0, x, 0, 200, 200) for x in (0, 100, 200)]   # all within tiles 0 and 1 of row 0
        packed = PackedStreams.pack(regs)
        assert len(packed.offsets) - 1 == 2 and [len(lay.tiles) for lay in packed.layouts] == [1, 2, 2]
        tiles, ok = decode_regions(packed, 200, CPU)
        for k, x in enumerate((0, 100, 200)):
            assert_close(tiles[k].permute(1, 2, 0).numpy(), slide.read_region(x, 0, 0, 200, 200), f"x={x}")
        jpeg.close()


# ---- what falls back ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("compression", "reason"), [("lzw", "compression 5"), (None, "compression 1"),
                                                     ("zlib", "compression 8"), ("jpeg2000", "compression 34712")])
def test_other_codecs_are_not_eligible(tmp_path: Path, cmu_pixels: np.ndarray, compression, reason: str) -> None:
    path = write_pyramid(tmp_path / "x.tiff", cmu_pixels[:512, :512], compression=compression)
    with tifffile.TiffFile(path) as tif:
        assert reason in level_reason(tif.pages[0])


def test_strips_and_grayscale_are_not_eligible(tmp_path: Path, cmu_pixels: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "strips.tiff", cmu_pixels[:256, :256], compression="jpeg", photometric="rgb")
    tifffile.imwrite(tmp_path / "gray.tiff", cmu_pixels[:256, :256, 0], compression="jpeg", tile=(256, 256))
    with tifffile.TiffFile(tmp_path / "strips.tiff") as a, tifffile.TiffFile(tmp_path / "gray.tiff") as b:
        assert "strips" in level_reason(a.pages[0])
        assert "not interleaved RGB" in level_reason(b.pages[0])


def test_deflate_tiff_and_dicom_fall_back() -> None:
    with open_slide(need(DATA / "openslide-fixtures" / "boxes.tiff"), mpp=1.0) as s:
        jpeg, why = open_jpeg_tiles(s)
        assert jpeg is None and "not JPEG" in why
    with open_slide(need(DATA / "dicom" / "cmu1-small-region")) as s:
        jpeg, why = open_jpeg_tiles(s)
        assert jpeg is None and ("dicom" in why.lower())


def test_off_grid_and_outside_regions_fall_back(synth: Path) -> None:
    with open_slide(synth) as slide:
        jpeg, _ = open_jpeg_tiles(slide)
        assert jpeg.region(1, 2, 0, 64, 64) is None            # level-0 x=2 is level-1 x=0.5
        assert jpeg.region(1, 4, 0, 64, 64) is not None
        assert jpeg.region(0, 950, 0, 100, 100) is None         # leaves the 1000-px-wide level
        assert jpeg.region(0, -4, 0, 10, 10) is None
        jpeg.close()


def test_mif_datasets_do_not_stream() -> None:
    ref = SlideRef("M", str(need(DATA / "mif" / "mibi" / "fov8_RowNumber0_Depth_Profile0-MassCorrected-Filtered.tiff")),
                   modality="mif", mpp=0.39)
    assert "mIF" in TileDataset(ref, np.zeros((1, 2), int), 256, 256).enable_streams()


# ---- extraction -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    model, spec, _ = build_encoder("resnet18_trunc", None, allow_random_init=True)
    return model.eval(), spec


def extract(path: Path, coords: np.ndarray, size: int, px: int, gpu_decode, encoder, on_bad_tile: str = "error"):
    model, spec = encoder
    params = ExtractParams(batch_size=16, num_workers=2, device="cpu", gpu_decode=gpu_decode, on_bad_tile=on_bad_tile)
    return extract_tiles(TileDataset(SlideRef("S", str(path)), coords, size, px), model, spec, params)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(("size", "px"), [(224, 224), (256, 224)], ids=["no-resize", "resize"])
def test_features_match_the_default_path(encoder, size: int, px: int, caplog) -> None:
    coords = np.array([(x, y) for y in range(0, 2600, 300) for x in range(0, 1900, 330)])
    with caplog.at_level(logging.INFO, logger="pathomix.features.extract"):
        on = extract(need(CMU), coords, size, px, True, encoder)
    assert "decoded in batches on cpu" in caplog.text
    off = extract(CMU, coords, size, px, False, encoder)
    assert on.features.shape == off.features.shape == (len(coords), 256)
    assert cosines(on.features, off.features).min() > 0.9999
    np.testing.assert_allclose(on.features, off.features, atol=0.02)


def test_features_from_a_lower_level(synth: Path, encoder) -> None:
    coords = np.array([(x, y) for y in range(0, 800, 128) for x in range(0, 900, 128)])   # level 1 (ds 4), 32 px
    on, off = (extract(synth, coords, 128, 32, g, encoder) for g in (True, False))
    assert cosines(on.features, off.features).min() > 0.9999


def test_auto_is_off_on_the_cpu_and_ineligible_slides_use_the_workers(encoder, caplog) -> None:
    assert not ExtractParams().decode_on_device(CPU) and ExtractParams().decode_on_device(torch.device("cuda"))
    with caplog.at_level(logging.INFO, logger="pathomix.features.extract"):
        result = extract(need(DATA / "openslide-fixtures" / "small.svs"), np.array([[0, 0]]), 16, 16, "auto", encoder)
    assert len(result.features) == 1 and "gpu_decode" not in caplog.text
    with caplog.at_level(logging.INFO, logger="pathomix.features.extract"):
        extract(need(DATA / "dicom" / "cmu1-small-region"), np.array([[0, 0]]), 224, 224, True, encoder)
    assert "decoded in the workers" in caplog.text


def corrupt_copy(src: Path, dst: Path, tile: int) -> Path:
    """A copy of ``src`` whose level-0 tile ``tile`` has its entropy-coded data overwritten."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        start, count = page.dataoffsets[tile], page.databytecounts[tile]
    data[start + 2:start + count] = b"\xff\x01" * ((count - 2) // 2) + b"\x00" * ((count - 2) % 2)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("on_bad_tile", ["error", "skip"])
def test_a_corrupt_tile_is_handled_like_a_failed_read(tmp_path: Path, synth: Path, encoder, on_bad_tile: str) -> None:
    bad = corrupt_copy(synth, tmp_path / "bad.tiff", tile=1)      # level-0 tile (1, 0): x 256..511, y 0..255
    coords = np.array([(x, 0) for x in range(0, 768, 128)] + [(0, 256)])
    results = {}
    for g in (True, False):
        if on_bad_tile == "error":
            with pytest.raises(PathomixInputError) as err:
                extract(bad, coords, 128, 128, g, encoder, on_bad_tile)
            results[g] = str(err.value)
        else:
            results[g] = extract(bad, coords, 128, 128, g, encoder, on_bad_tile)
    if on_bad_tile == "error":
        assert results[True] == results[False] and "corrupt" in results[True]
        return
    on, off = results[True], results[False]
    assert on.ok.tolist() == off.ok.tolist() == [True, True, False, False, True, True, True]
    assert on.first_error == off.first_error and on.first_error
    assert cosines(on.features, off.features).min() > 0.9999


# ---- configuration --------------------------------------------------------------------------------------

def test_config_key_validates() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert config["features"]["gpu_decode"] == ExtractParams().gpu_decode == "auto"
    for value in ("auto", True, False):
        jsonschema.validate({**config, "features": {**config["features"], "gpu_decode": value}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "features": {**config["features"], "gpu_decode": "sometimes"}}, schema)
    with pytest.raises(PathomixInputError, match="gpu_decode"):
        ExtractParams(gpu_decode="sometimes")


# ---- on a GPU (skipped here) ----------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_nvjpeg_decodes_like_the_readers(synth: Path, ome: Path) -> None:
    cuda = torch.device("cuda")
    for path in (need(CMU), need(SMALL), synth, ome):
        assert check_slide(path, cuda) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_cuda_extraction_matches_the_worker_path(encoder, caplog) -> None:
    model, spec = encoder
    coords = np.array([(x, y) for y in range(0, 2600, 300) for x in range(0, 1900, 330)])
    results = {}
    for g in (True, False):
        params = ExtractParams(batch_size=16, num_workers=2, device="cuda", precision="fp32", gpu_decode=g)
        with caplog.at_level(logging.INFO, logger="pathomix.features.extract"):
            results[g] = extract_tiles(TileDataset(SlideRef("S", str(need(CMU))), coords, 256, 224), model, spec,
                                       params).features
    assert "decoded in batches on cuda" in caplog.text
    assert cosines(results[True], results[False]).min() > 0.999
