"""The tiling stage (python -m pathomix.tiling) on the real slides of shared/data."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage as ndi
from shared_files import need
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from pathomix.demo.he import write_pyramidal_tiff
from pathomix.errors import PathomixInputError
from pathomix.io import slide as slide_io
from pathomix.io.h5store import COORD_ATTRS, read_coords
from pathomix.io.slide import open_slide
from pathomix.tiling import TilingParams, grid, main, tile_slide, tissue
from pathomix.tiling.grid import GridGeometry, tissue_fractions
from pathomix.tiling.morph import binary_closing, binary_opening
from pathomix.tiling.stage import detect_tissue, mask_level, mask_size, source_mpp, upsample_mask
from pathomix.tiling.tissue import tissue_mask

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"
MIBI = DATA / "mif" / "mibi" / "fov8_RowNumber0_Depth_Profile0-MassCorrected-Filtered.tiff"
PARAMS = json.dumps({"tile_px": 256, "overlap_px": 0, "mask_mpp": 8.0, "min_tissue_fraction": 0.5,
                     "min_region_um2": 20000, "magnifications": {"20x": 0.5}})



def run(tmp: Path, slide: Path, slide_id: str, *extra: str, modality: str = "he",
        params: str = PARAMS, target: str = "0.5") -> tuple[Path, Path]:
    """Tile through ``main`` without its exit convention (``__wrapped__``): input errors raise."""
    out, qc = tmp / "tiles" / f"{slide_id}.h5", tmp / "qc" / f"{slide_id}.png"
    rc = main.__wrapped__(["--slide-id", slide_id, "--path", str(slide), "--modality", modality, "--mag", "20x",
               "--target-mpp", target, "--params", params, "--out", str(out), "--qc", str(qc), *extra])
    assert rc == 0
    return out, qc


@pytest.fixture(scope="module")
def cmu_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return run(tmp_path_factory.mktemp("cmu"), need(CMU), "cmu")


def test_cmu_store_contract(cmu_store: tuple[Path, Path]) -> None:
    out, qc = cmu_store
    with h5py.File(out, "r") as h:
        assert h["coords"].dtype == np.int64
    coords, attrs = read_coords(out)
    assert coords.ndim == 2 and coords.shape[1] == 2 and len(coords) > 10
    assert set(COORD_ATTRS) <= set(attrs)
    assert attrs["patch_size"] == 256 and attrs["patch_size_level0"] == 257 and attrs["overlap"] == 0
    assert attrs["level0_magnification"] == pytest.approx(20.0)
    assert attrs["target_magnification"] == pytest.approx(20.0) and attrs["target_mpp"] == 0.5
    assert attrs["level0_mpp"] == pytest.approx(0.499) and attrs["patch_level"] == 0
    assert attrs["downsample"] == 1.0 and attrs["name"] == attrs["slide_id"] == "cmu"
    assert (attrs["level0_width"], attrs["level0_height"]) == (2220, 2967)
    assert (coords >= 0).all() and (coords[:, 0] + 257 <= 2220).all() and (coords[:, 1] + 257 <= 2967).all()
    assert (coords % 257 == 0).all(), "tiles lie on the grid"
    order = np.lexsort((coords[:, 0], coords[:, 1]))
    assert (order == np.arange(len(coords))).all(), "coords are row-major (y, then x)"
    assert qc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def _saturation(slide, xy: np.ndarray) -> float:
    return float(np.mean([rgb2hsv(slide.read_tile(int(x), int(y), 257, 32))[..., 1].mean() for x, y in xy]))


def test_cmu_tiles_are_on_tissue(cmu_store: tuple[Path, Path]) -> None:
    coords, _ = read_coords(cmu_store[0])
    xs, ys = GridGeometry(257, 257).positions(2220, 2967)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    kept = {tuple(c) for c in coords}
    rejected = np.array([c for c in grid if tuple(c) not in kept])
    assert len(rejected) > 0
    with open_slide(CMU) as slide:
        s_kept, s_rejected = _saturation(slide, coords), _saturation(slide, rejected)
    assert s_kept > s_rejected + 0.1, (s_kept, s_rejected)


def test_cmu_timing() -> None:
    with open_slide(need(CMU)) as slide:
        tile_slide(slide, 0.5, TilingParams())            # warm the JPEG decoder
        start = time.perf_counter()
        result = tile_slide(slide, 0.5, TilingParams(), "20x")
        elapsed = time.perf_counter() - start
    logging.getLogger(__name__).info("tiling CMU-1-Small-Region: %.3f s, %d tiles", elapsed,
                                     len(result.coords))
    assert elapsed < 5.0


def test_several_magnifications_in_one_call(tmp_path: Path) -> None:
    out20, out10 = tmp_path / "20x" / "cmu.h5", tmp_path / "10x" / "cmu.h5"
    qc20, qc10 = tmp_path / "20x" / "qc" / "cmu.png", tmp_path / "10x" / "qc" / "cmu.png"
    assert main(["--slide-id", "cmu", "--path", str(need(CMU)), "--modality", "he", "--mag", "20x", "10x",
                 "--target-mpp", "0.5", "1.0", "--params", PARAMS, "--out", str(out20), str(out10),
                 "--qc", str(qc20), str(qc10)]) == 0
    c20, a20 = read_coords(out20)
    c10, a10 = read_coords(out10)
    assert a20["patch_size_level0"] == 257 and a10["patch_size_level0"] == 513
    assert a10["target_magnification"] == pytest.approx(10.0) and a10["patch_size"] == 256
    assert len(c20) > len(c10) > 0 and qc20.exists() and qc10.exists()
    # mismatched lists: an input error, exit status 1
    assert main(["--slide-id", "cmu", "--path", str(CMU), "--modality", "he", "--mag", "20x", "10x",
                 "--target-mpp", "0.5", "--out", str(out20), "--qc", str(qc20)]) == 1


def test_small_slide_gives_empty_store_and_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        out, qc = run(tmp_path, need(DATA / "openslide-fixtures" / "small.svs"), "tiny")
    coords, attrs = read_coords(out)
    assert coords.shape == (0, 2) and coords.dtype == np.int64 and set(COORD_ATTRS) <= set(attrs)
    assert qc.exists()
    assert any(r.levelno == logging.WARNING and "tiny" in r.getMessage() and "empty" in r.getMessage()
               for r in caplog.records)


def test_boxes_needs_mpp_override(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    boxes = need(DATA / "openslide-fixtures" / "boxes.tiff")
    with pytest.raises(PathomixInputError, match=r"(?i)mpp"):
        run(tmp_path, boxes, "boxes")
    with caplog.at_level(logging.ERROR):  # the command line: exit status 1, the message logged, no traceback
        assert main(["--slide-id", "boxes", "--path", str(boxes), "--modality", "he", "--mag", "20x",
                     "--target-mpp", "0.5", "--params", PARAMS, "--out", str(tmp_path / "tiles" / "boxes.h5"),
                     "--qc", str(tmp_path / "qc" / "boxes.png")]) == 1
    assert any(r.levelno == logging.ERROR and "boxes" in r.getMessage() and "mpp" in r.getMessage().lower()
               and r.exc_info is None for r in caplog.records)
    assert not (tmp_path / "tiles" / "boxes.h5").exists()
    params = json.dumps({"tile_px": 32, "mask_mpp": 2.0, "min_region_um2": 100, "min_tissue_fraction": 0.1})
    out, _ = run(tmp_path, boxes, "boxes", "--mpp", "0.5", params=params, target="2.0")
    coords, attrs = read_coords(out)
    assert attrs["level0_mpp"] == 0.5 and attrs["patch_size_level0"] == 128
    assert attrs["patch_level"] == 2 and attrs["downsample"] == pytest.approx(4.016, abs=1e-3)
    assert len(coords) > 0


@pytest.mark.parametrize("name", ["wsi/broken.svs", "openslide-fixtures/unopenable.tiff",
                                  "openslide-fixtures/unreadable.svs", "wsi/missing.svs"])
def test_bad_slides_fail_clearly_without_output(tmp_path: Path, name: str) -> None:
    path = DATA / name
    if name != "wsi/missing.svs":
        need(path)
    with pytest.raises(PathomixInputError, match=rf"slide bad.*{Path(name).name}"):
        run(tmp_path, path, "bad")
    assert not (tmp_path / "tiles" / "bad.h5").exists()


def test_upsampling_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PathomixInputError, match=r"(?s)slide cmu.*0\.499.*0\.25.*upsample"):
        run(tmp_path, need(CMU), "cmu", target="0.25")


def test_a_real_but_coarse_image_names_the_magnification_it_can_serve(tmp_path: Path) -> None:
    """The wsi2dcm DICOM has a real 16.8 µm/px: not "implausible", but too coarse for 20x; the error names the
    finest magnification it serves, and tiling at that magnification works."""
    dicom = need(DATA / "dicom" / "wsi2dcm" / "wsi2dcm_jpeg.dicom")
    with pytest.raises(PathomixInputError, match=r"(?s)slide w.*16\.78.*too coarse.*finest magnification this image "
                                                 r"can serve is 0\.66x \(15\.1 µm/px\).*tiling\.magnifications"):
        run(tmp_path, dicom, "w")
    out, _ = run(tmp_path, dicom, "w", target="16.8")
    assert out.exists()


def test_mif_tiling(tmp_path: Path) -> None:
    out, qc = run(tmp_path, need(MIBI), "fov8", modality="mif")
    coords, attrs = read_coords(out)
    assert len(coords) > 0 and attrs["patch_size_level0"] == 328 and qc.exists()
    assert len(attrs["channels"]) == 22 and "CD45" in attrs["channels"]
    flags = list(attrs["autofluorescence"])
    assert flags[attrs["channels"].index("Background")] == 1 and sum(flags) == 1


def test_mif_folder_with_sheet(tmp_path: Path) -> None:
    folder = need(DATA / "mif" / "mibi" / "fov8_single_channel")
    names = sorted(p.stem for p in folder.glob("*.tiff"))
    sheet = tmp_path / "panel.tsv"
    sheet.write_text("index\tmarker\tautofluorescence\n" +
                     "".join(f"{i}\t{n}\t{int(n == 'Background')}\n" for i, n in enumerate(names)))
    out, _ = run(tmp_path, folder, "fov8dir", "--mpp", "0.390625", "--channels-sheet", str(sheet),
                 modality="mif")
    coords, attrs = read_coords(out)
    assert attrs["channels"] == names and len(coords) > 0


def test_params_defaults_equal_config() -> None:
    config = ROOT / "config.yaml"
    if not config.exists():
        pytest.skip("config.yaml is absent")
    tiling = yaml.safe_load(config.read_text())["tiling"]
    assert TilingParams.from_mapping(tiling) == TilingParams()
    with pytest.raises(PathomixInputError, match="overlap_px"):
        TilingParams(tile_px=64, overlap_px=64)
    with pytest.raises(PathomixInputError, match="tile_px=8 must be >= 16"):
        TilingParams(tile_px=8)
    with pytest.raises(PathomixInputError, match=r"unknown key\(s\) \['tile_size'\].*tile_px"):
        TilingParams.from_json('{"tile_size": 128}')
    # the old key moved to features.on_bad_tile: ignored by tiling (not part of its params), with a warning
    assert TilingParams.from_json('{"on_bad_tile": "skip", "tile_px": 128}') == TilingParams(tile_px=128)
    with pytest.raises(PathomixInputError, match="JSON"):
        TilingParams.from_json("{tile_px: 3")


def test_tissue_mask_synthetic() -> None:
    white = np.full((64, 64, 3), 245, np.uint8)
    assert not tissue_mask(white, "he", 8.0, 20000).any()
    noisy = (white + np.random.default_rng(0).integers(0, 6, white.shape)).astype(np.uint8)
    assert not tissue_mask(noisy, "he", 8.0, 20000).any()
    blob = white.copy()
    blob[16:48, 16:48] = (200, 120, 170)
    mask = tissue_mask(blob, "he", 8.0, 20000)
    assert mask[20:44, 20:44].all() and not mask[:8].any()
    stack = np.zeros((2, 64, 64), np.float32)
    stack[0, 10:40, 10:40] = 100.0                      # a marker
    stack[1] = 500.0                                    # autofluorescence everywhere
    mif = tissue_mask(stack, "mif", 8.0, 1000, [False, True])
    assert mif[15:35, 15:35].all() and not mif[50:].any()


def test_tissue_fractions_integral_image() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:5, :] = True
    xs, ys = np.array([0, 50]), np.array([0, 25, 50])
    frac = tissue_fractions(mask, (100, 100), xs, ys, 50)
    np.testing.assert_allclose(frac, [[1, 1], [0.4, 0.4], [0, 0]])
    geometry = GridGeometry.for_slide(0.25, 0.5, 256, 32)
    assert (geometry.patch_size_level0, geometry.step_level0) == (512, 448)


# The fast paths below must give exactly what the straightforward code gives (same masks, same tiles).

def _reference_he_foreground(rgb: np.ndarray) -> np.ndarray:
    """skimage's HSV and Otsu; the threshold fitted on the image area-reduced 2x (unless under 8 px)."""
    hsv = rgb2hsv(rgb)
    valid = (rgb.min(axis=2) <= tissue.WHITE_LEVEL) & (hsv[..., 2] >= tissue.BLACK_VALUE)
    small = min(rgb.shape[:2]) < 2 * tissue.MIN_MASK_PX
    fit = rgb2hsv(rgb if small else np.asarray(Image.fromarray(rgb).reduce(2)))[..., 1]
    if np.subtract(*np.percentile(fit, [99, 1])) < tissue.MIN_SPREAD:
        return np.zeros(rgb.shape[:2], bool)
    return valid & (hsv[..., 1] > max(float(threshold_otsu(fit)), tissue.MIN_SATURATION))


def _smooth_he(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A tissue-like blob with stain noise on near-white glass, (h, w, 3) uint8."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    blob = ((yy - shape[0] / 2) / (0.35 * shape[0])) ** 2 + ((xx - shape[1] / 2) / (0.3 * shape[1])) ** 2 < 1
    img = np.where(blob[..., None], (200, 120, 170), (242, 242, 242)).astype(np.float32)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def test_he_foreground_equals_skimage_pipeline() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 90, 3), dtype=np.uint8), _smooth_he(rng, (150, 200)),
              np.full((16, 16, 3), 245, np.uint8), np.zeros((16, 16, 3), np.uint8)]
    for _ in range(60):   # saturation spreads around MIN_SPREAD: the percentile shortcut's edge
        base = int(rng.integers(200, 256))
        img = np.full((30, 40, 3), base, np.uint8).reshape(-1, 3)
        img[rng.choice(len(img), int(rng.integers(0, len(img))), replace=False), 1] = base - rng.integers(0, 30)
        images.append(img.reshape(30, 40, 3))
    if CMU.exists():
        with open_slide(CMU) as slide:
            images += [slide.thumbnail(8.0), slide.thumbnail(2.0)]
    for img in images:
        assert np.array_equal(tissue._he_foreground(img), _reference_he_foreground(img))
        saturation, valid = tissue.he_signal(img)   # the float path (non-uint8 RGB) fits the same threshold
        fit = tissue.he_signal(tissue._fit_image(img))[0]
        float_path = tissue._otsu_foreground(saturation, valid, tissue.MIN_SATURATION, fit)
        assert np.array_equal(float_path, tissue._he_foreground(img))
        saturation, valid = tissue.he_signal(img)
        hsv = rgb2hsv(img)
        assert np.array_equal(saturation, hsv[..., 1])
        assert np.array_equal(valid, (img.min(axis=2) <= tissue.WHITE_LEVEL) & (hsv[..., 2] >= tissue.BLACK_VALUE))


def test_morphology_equals_scipy() -> None:
    rng = np.random.default_rng(1)
    for radius in (1, 2, 3, 6):
        footprint = disk(radius).astype(bool)
        for shape in ((1, 1), (1, 9), (9, 1), (5, 40), (64, 48)):
            for p in (0.2, 0.5, 0.9):
                x = rng.random(shape) < p
                assert np.array_equal(binary_closing(x, footprint), ndi.binary_closing(x, footprint))
                assert np.array_equal(binary_opening(x, footprint), ndi.binary_opening(x, footprint))


def test_tissue_fractions_equal_full_integral_image() -> None:
    rng = np.random.default_rng(2)
    for (mh, mw), (width, height), size, step in [((10, 10), (100, 100), 50, 25), ((37, 91), (2900, 1100), 257, 257),
                                                  ((140, 185), (5920, 4440), 512, 448), ((3, 5), (60, 40), 7, 3)]:
        mask = rng.random((mh, mw)) < 0.4
        xs, ys = GridGeometry(size, step).positions(width, height)
        integral = np.zeros((mh + 1, mw + 1), np.int64)
        integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
        x0, x1 = grid._span(xs, size, mw / width, mw)
        y0, y1 = grid._span(ys, size, mh / height, mh)
        y0, y1 = y0[:, None], y1[:, None]
        total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        expected = total / np.maximum((y1 - y0) * (x1 - x0), 1)
        assert np.array_equal(tissue_fractions(mask, (width, height), xs, ys, size), expected)


def test_thumbnail_decoded_with_tifffile_equals_openslide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyramid = tmp_path / "odd.tiff"   # odd sizes: non-integer downsamples, so strips can start between rows
    write_pyramidal_tiff(pyramid, _smooth_he(np.random.default_rng(3), (1201, 1603)), mpp=0.5)
    cases = [(pyramid, None), (DATA / "openslide-fixtures" / "boxes.tiff", 0.5)] + ([(CMU, None)] * CMU.exists())
    used = []
    original = slide_io.WSISlide._level_pixels
    monkeypatch.setattr(slide_io.WSISlide, "_level_pixels",
                        lambda self, level: used.append(level) or original(self, level))
    for path, mpp in cases:
        with open_slide(need(path), mpp=mpp) as slide:
            for strip_pixels in (slide_io._STRIP_PIXELS, 40_000):   # one strip, many strips
                monkeypatch.setattr(slide_io, "_STRIP_PIXELS", strip_pixels)
                for target in (1.0, 2.0, 4.0, 8.0):
                    fast = slide.thumbnail(target)
                    with monkeypatch.context() as m:
                        m.setattr(slide_io.WSISlide, "_level_pixels", lambda self, level: None)
                        assert np.array_equal(fast, slide.thumbnail(target)), (path.name, strip_pixels, target)
    assert used, "the tifffile path was never taken"


def test_mask_level_is_the_closest_and_the_coarser_of_a_tie() -> None:
    aperio = SimpleNamespace(mpp=0.25, level_downsamples=(1.0, 4.0, 16.0, 63.98))   # 8 µm/px = 32x: a tie
    assert mask_level(aperio, 8.0) == 3 and source_mpp(aperio, 8.0) == pytest.approx(16.0, rel=1e-3)
    assert mask_level(aperio, 4.0) == 2 and source_mpp(aperio, 4.0) == 4.0        # 16x exists
    assert mask_level(aperio, 6.0) == 2                                            # 24x: 16x is closer
    dicom = SimpleNamespace(mpp=0.499, level_downsamples=(1.0, 2.0003, 4.002, 8.017, 16.06, 32.21))
    assert mask_level(dicom, 8.0) == 4                                             # its own 16x level
    single = SimpleNamespace(mpp=0.499, level_downsamples=(1.0,))
    assert mask_level(single, 8.0) == 0 and source_mpp(single, 8.0) == 8.0         # box-reduced level 0
    assert source_mpp(single, 0.1) == pytest.approx(0.499)                         # never finer than level 0


def test_mask_from_a_coarser_level_is_upsampled_to_the_mask_grid(tmp_path: Path) -> None:
    small = np.zeros((3, 4), bool)
    small[1, 1:3] = True
    up = upsample_mask(small, (8, 6))
    assert up.shape == (6, 8) and up[2:4, 3:5].all() and not up[0].any() and not up[:, 0].any()
    rng = np.random.default_rng(1)
    path = tmp_path / "pyramid.tif"
    write_pyramidal_tiff(path, _smooth_he(rng, (1024, 1536)), mpp=0.25)   # downsamples 1, 2, 4, 8
    params = TilingParams(mask_mpp=0.25 * 4 * 2**0.5, min_region_um2=0.0)  # 5.66x: 4x and 8x tie
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, params)
        assert tissue.thumbnail.shape[:2] == slide.level_dimensions[3][::-1]   # the 8x level as it is
        assert tissue.mask.shape[::-1] == mask_size(slide, params.mask_mpp)
        fine = tissue_mask(slide.thumbnail(params.mask_mpp), "he", params.mask_mpp, 0.0)   # from 4x, box-reduced
        assert (tissue.mask & fine).sum() / (tissue.mask | fine).sum() > 0.97
