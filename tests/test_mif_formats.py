"""mIF inputs of issue 19: OME-XML channel names (real IMC OME-TIFF), float32 component data, lazy tile reads,
and fluorescence slide sets (one RGB-stored file per fluorophore, the NDPI layout) with a channel sheet `file`
column. The NDPI pair is synthetic: openslide/tifffile cannot write NDPI, so a generic pyramidal RGB TIFF pair
with the µm/px in its resolution tags stands in (the signal plane is then found from the data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from shared_files import need

from pathomix.errors import PathomixInputError
from pathomix.features.tiles import SlideRef, TileDataset
from pathomix.io.mif import is_autofluorescence
from pathomix.io.slide import open_slide
from pathomix.tiling.params import TilingParams
from pathomix.tiling.stage import tile_slide

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMC = DATA / "mif" / "ometiff" / "imcRtools_20210305_NE_mockData1_1.ome.tiff"



def write_sheet(path: Path, markers: list[str], af: list[int], files: list[str] | None = None) -> Path:
    head = "index\tmarker\tautofluorescence" + ("\tfile" if files else "")
    rows = [f"{i}\t{m}\t{a}" + (f"\t{files[i]}" if files else "") for i, (m, a) in enumerate(zip(markers, af,
                                                                                                  strict=True))]
    path.write_text("\n".join([head, *rows]) + "\n")
    return path


def test_imc_ome_tiff_names_from_ome_xml_float32_and_missing_mpp(tmp_path: Path) -> None:
    path = need(IMC)
    with pytest.raises(PathomixInputError, match=r"slide imc .*has no MPP.*add an `mpp` column"):
        open_slide(path, modality="mif", slide_id="imc")
    with open_slide(path, modality="mif", slide_id="imc", mpp=1.0) as s:   # IMC: 1 µm/px, given in slides.tsv
        assert s.channels == ["Ag107", "Cytokeratin 5", "Laminin", "YBX1", "H3K27Ac"]
        assert s.autofluorescence == [False] * 5 and s.dimensions == (60, 60)
        raw = tifffile.imread(path)
        assert raw.dtype == np.float32
        np.testing.assert_array_equal(s.read_region(10, 5, 0, 20, 30), raw[:, 5:35, 10:30])
        result = tile_slide(s, 1.0, TilingParams(tile_px=16, mask_mpp=2.0, min_region_um2=0.0))
        assert result.attrs["channels"] == s.channels and len(result.coords) > 0


def test_float32_components_are_scaled_per_channel_like_integers(tmp_path: Path) -> None:
    """Unmixed (inForm component) float32 data and the same values stored as uint16 ×1000 give the same tiles:
    each marker is scaled by its slide-level 99.5th percentile, whatever its dtype or range."""
    rng = np.random.default_rng(1)
    comp = (rng.gamma(2.0, [[[0.5]], [[3.0]], [[0.05]]], (3, 256, 256))).astype(np.float32)
    paths = {}
    for name, data in (("f32", comp), ("u16", np.round(comp * 1000).astype(np.uint16))):
        paths[name] = tmp_path / f"{name}.ome.tif"
        tifffile.imwrite(paths[name], data, ome=True, tile=(128, 128), metadata={
            "axes": "CYX", "Channel": {"Name": ["DAPI", "CD8", "Sample AF"]}, "PhysicalSizeX": 0.5})
    tiles = {}
    for name, path in paths.items():
        ds = TileDataset(SlideRef(name, str(path), "mif"), np.array([[0, 0], [128, 128]]), 128, 64)
        ds.prepare()
        tiles[name] = np.stack([ds[i].numpy() for i in range(2)]).astype(int)
        with open_slide(path, modality="mif") as s:
            assert s.autofluorescence == [False, False, True]   # 'Sample AF' by name, no sheet needed
    assert tiles["f32"].shape == (2, 2, 64, 64) and tiles["f32"].max() > 200
    assert np.abs(tiles["f32"] - tiles["u16"]).max() <= 2


def test_tiled_ome_panel_is_read_lazily(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 4000, (4, 600, 700), dtype=np.uint16)
    path = tmp_path / "panel.ome.tif"
    tifffile.imwrite(path, data, ome=True, tile=(128, 128), compression="zlib",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5})
    with open_slide(path, modality="mif") as s:
        assert s._src.region.__qualname__.startswith("_planes_region")   # tile reads, no whole-level array
        np.testing.assert_array_equal(s.read_region(250, 130, 0, 300, 200), data[:, 130:330, 250:550])
        edge = s.read_region(650, 590, 0, 100, 20)
        np.testing.assert_array_equal(edge[:, :10, :50], data[:, 590:, 650:])
        assert (edge[:, 10:] == 0).all() and (edge[:, :, 50:] == 0).all()


# ---- fluorescence slide sets: one file per fluorophore ----------------------------------------------------


def write_rgb_fluor(path: Path, signal: np.ndarray, plane: int, mpp: float = 0.46) -> Path:
    """An RGB-stored single-fluorophore scan (as Hamamatsu NDPI fluorescence exports are): the signal in one
    plane, a little noise in the others; pyramidal (SubIFD), tiled, µm/px in the resolution tags."""
    rgb = np.random.default_rng(plane).integers(0, 6, (*signal.shape, 3), dtype=np.uint8)
    rgb[..., plane] = signal
    ppcm = 1e4 / mpp
    with tifffile.TiffWriter(path) as tw:
        tw.write(rgb, photometric="rgb", tile=(128, 128), compression="zlib", subifds=1,
                 resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
        tw.write(rgb[::2, ::2], photometric="rgb", tile=(128, 128), compression="zlib", subfiletype=1,
                 resolution=(ppcm / 2, ppcm / 2), resolutionunit="CENTIMETER")
    return path


@pytest.fixture
def fluor_set(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:384, :512]
    dapi = np.where((yy - 190) ** 2 + (xx - 250) ** 2 < 120 ** 2, 200, 10).astype(np.uint8)
    tritc = np.where((xx > 100) & (xx < 400), 150, 8).astype(np.uint8)
    folder = tmp_path / "slide7"
    folder.mkdir()
    write_rgb_fluor(folder / "slide7-DAPI.tif", dapi, plane=2)
    write_rgb_fluor(folder / "slide7-TRITC.tif", tritc, plane=0)
    return folder, dapi, tritc


def test_fluorescence_set_is_one_image_whose_channels_are_the_files(fluor_set, tmp_path: Path) -> None:
    folder, dapi, tritc = fluor_set
    sheet = write_sheet(tmp_path / "panel.tsv", ["TRITC", "DAPI"], [0, 0], ["*-TRITC.tif", "*-DAPI.tif"])
    with open_slide(folder, modality="mif", slide_id="s7", channels_sheet=sheet) as s:
        assert s.channels == ["TRITC", "DAPI"] and s.mpp == pytest.approx(0.46)
        assert s.level_dimensions == ((512, 384), (256, 192))
        region = s.read_region(40, 30, 0, 200, 100)
        np.testing.assert_array_equal(region[0], tritc[30:130, 40:240])
        np.testing.assert_array_equal(region[1], dapi[30:130, 40:240])
        np.testing.assert_array_equal(s.read_region(0, 0, 1, 256, 192)[1], dapi[::2, ::2])
        result = tile_slide(s, 0.92, TilingParams(tile_px=32, mask_mpp=2.0, min_region_um2=0.0))
        assert result.attrs["channels"] == ["TRITC", "DAPI"] and 0 < len(result.coords) < result.n_positions
    with open_slide(folder, modality="mif", mpp=None) as s:   # no sheet: files sorted by name, names = stems
        assert s.channels == ["slide7-DAPI", "slide7-TRITC"]
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 512, 384)[0], dapi)


def test_fluorescence_set_errors_name_the_odd_file(fluor_set, tmp_path: Path) -> None:
    folder, dapi, _ = fluor_set
    sheet = write_sheet(tmp_path / "panel.tsv", ["DAPI", "Cy5"], [0, 0], ["*-DAPI.tif", "*-Cy5.tif"])
    with pytest.raises(PathomixInputError, match=r"file '\*-Cy5\.tif' matches 0 files"):
        open_slide(folder, modality="mif", channels_sheet=sheet)
    write_rgb_fluor(folder / "slide7-Cy5.tif", dapi[:300], plane=0)
    with pytest.raises(PathomixInputError, match=r"channel file slide7-Cy5\.tif is 512x300 px but slide7-DAPI"):
        open_slide(folder, modality="mif", channels_sheet=sheet)
    write_rgb_fluor(folder / "slide7-Cy5.tif", dapi, plane=0, mpp=0.23)
    with pytest.raises(PathomixInputError, match=r"channel file slide7-Cy5\.tif has 0\.23 µm/px but slide7-DAPI"):
        open_slide(folder, modality="mif", channels_sheet=sheet)
    with pytest.raises(PathomixInputError, match=r"names a file per channel, so the slide's `path` must be the folder"):
        open_slide(folder / "slide7-DAPI.tif", modality="mif", channels_sheet=sheet)


@pytest.mark.parametrize("name", ["Sample AF", "AF", "Autofluorescence", "af_488"])
def test_usual_autofluorescence_names(name: str) -> None:
    assert is_autofluorescence(name)


@pytest.mark.parametrize(("tags", "plane"), [
    ({"Fluorescence": "DAPI"}, 2), ({"Fluorescence": "TRITC"}, 0), ({"Fluorescence": "FITC"}, 1),
    ({"Wavelength": 461}, 2), ({"Wavelength": 520}, 1), ({"Wavelength": 670}, 0), ({}, None),
])
def test_ndpi_fluorescence_tags_pick_the_plane(tags: dict, plane: int | None) -> None:
    """The NDPI metadata route (tifffile cannot write NDPI, so a stand-in with its `ndpi_tags`)."""
    from types import SimpleNamespace

    from pathomix.io.planes import fluorophore_plane

    tif = SimpleNamespace(is_ndpi=True, pages=SimpleNamespace(first=SimpleNamespace(ndpi_tags=tags)))
    assert fluorophore_plane(tif)[0] == plane
