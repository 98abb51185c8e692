"""pathomix.io.slide / pathomix.io.mif on the real files of shared/data (and a synthetic OME-TIFF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from shared_files import need

from pathomix.errors import PathomixInputError
from pathomix.io.mif import is_autofluorescence, read_channel_sheet
from pathomix.io.slide import open_slide

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIBI = DATA / "mif" / "mibi" / "fov8_RowNumber0_Depth_Profile0-MassCorrected-Filtered.tiff"
MIBI_DIR = DATA / "mif" / "mibi" / "fov8_single_channel"
MIBI_MPP = 0.390625



def write_sheet(path: Path, markers: list[str], af: list[int]) -> Path:
    rows = ["index\tmarker\tautofluorescence"]
    rows += [f"{i}\t{m}\t{a}" for i, (m, a) in enumerate(zip(markers, af, strict=True))]
    path.write_text("\n".join(rows) + "\n")
    return path


# ---- H&E (openslide) -----------------------------------------------------------------------------


def test_cmu_single_level_geometry_and_reads() -> None:
    with open_slide(need(DATA / "wsi" / "CMU-1-Small-Region.svs"), slide_id="cmu") as s:
        assert s.slide_id == "cmu" and s.modality == "he"
        assert s.dimensions == (2220, 2967)
        assert s.level_dimensions == ((2220, 2967),) and s.level_downsamples == (1.0,)
        assert s.mpp == pytest.approx(0.499) and s.objective_power == pytest.approx(20.0)
        assert s.channels == ["R", "G", "B"] and s.autofluorescence == [False] * 3
        assert s.best_level(1.0) == 0 and s.best_level(8.0) == 0
        region = s.read_region(1000, 1500, 0, 40, 30)
        assert region.shape == (30, 40, 3) and region.dtype == np.uint8
        tile = s.read_tile(1000, 1500, 257, 256)
        assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8 and tile.flags.writeable
        edge = s.read_tile(2100, 2900, 257, 256)
        assert (edge[-20:, -20:] == 255).all(), "past the slide edge must be white"
        thumb = s.thumbnail(8.0)
        assert thumb.dtype == np.uint8 and thumb.shape == (185, 138, 3)


def test_small_svs_opens() -> None:
    with open_slide(need(DATA / "openslide-fixtures" / "small.svs")) as s:
        assert s.slide_id == "small" and s.dimensions == (16, 16) and s.mpp == pytest.approx(0.499)
        assert s.thumbnail(8.0).shape[2] == 3


def test_boxes_implausible_mpp_is_refused() -> None:
    path = need(DATA / "openslide-fixtures" / "boxes.tiff")
    with pytest.raises(PathomixInputError, match=r"(?s)boxes.*352\.8.*implausible.*`mpp` column"):
        open_slide(path)


def test_implausible_mpp_is_told_apart_from_a_coarse_image() -> None:
    """A desktop dpi default (25 400 / dpi) or a value no microscope gives is refused with the reason; a real but
    coarse resolution (a 29 µm/px DICOM level) is accepted here: tiling then says which magnifications it serves."""
    from pathomix.io.slide import checked_mpp

    assert checked_mpp(28.97, None, "slide d") == 28.97
    with pytest.raises(PathomixInputError, match=r"slide p.*84\.67.*300-dpi default"):
        checked_mpp(25_400 / 300, None, "slide p")
    with pytest.raises(PathomixInputError, match=r"slide t.*1e\+04.*outside what a microscope gives"):
        checked_mpp(10_000.0, None, "slide t")
    assert checked_mpp(10_000.0, 0.25, "slide t") == 0.25  # the sheet's override wins


def test_boxes_pyramid_with_mpp_override() -> None:
    with open_slide(need(DATA / "openslide-fixtures" / "boxes.tiff"), mpp=0.5) as s:
        assert s.mpp == 0.5 and s.objective_power == pytest.approx(20.0)
        assert len(s.level_dimensions) == 4
        assert s.best_level(1.0) == 0 and s.best_level(1.9) == 0 and s.best_level(2.0) == 1
        assert s.best_level(4.0) == 2, "4.016 is within the 1 % tolerance of 4"
        assert s.best_level(3.9) == 1 and s.best_level(100.0) == 3 and s.best_level(0.5) == 0
        assert s.thumbnail(2.0).shape == (62, 75, 3)
        assert s.read_tile(0, 0, 128, 32).shape == (32, 32, 3)


@pytest.mark.parametrize("name", ["wsi/broken.svs", "openslide-fixtures/unopenable.tiff"])
def test_unopenable_files_raise_clear_error(name: str) -> None:
    path = need(DATA / name)
    with pytest.raises(PathomixInputError, match=Path(name).name) as err:
        open_slide(path, slide_id="S1")
    assert "slide S1" in str(err.value)


def test_missing_file_is_named() -> None:
    with pytest.raises(PathomixInputError, match=r"slide S9: file .*nope\.svs does not exist"):
        open_slide(DATA / "nope.svs", slide_id="S9")


def test_unreadable_svs_raises_on_read_not_blank_tile() -> None:
    with open_slide(need(DATA / "openslide-fixtures" / "unreadable.svs"), slide_id="bad1") as s:
        assert s.dimensions == (16, 16)
        with pytest.raises(PathomixInputError, match=r"slide bad1 .*unreadable\.svs.*x=4, y=2"):
            s.read_region(4, 2, 0, 8, 8)


@pytest.mark.parametrize("name, mpp", [("wsi/CMU-1-Small-Region.svs", None), ("openslide-fixtures/boxes.tiff", 0.5),
                                       ("openslide-fixtures/small.svs", None)])
def test_direct_tiff_reads_equal_openslide(name: str, mpp: float | None) -> None:
    """Regions decoded straight from the TIFF tiles (the fast path) have openslide's exact pixels,
    at any offset and size, on every level; regions it cannot serve fall back to openslide."""
    rng = np.random.default_rng(0)
    with open_slide(need(DATA / name), slide_id="s", mpp=mpp) as s:
        assert s._direct_tiles() is not None
        for level, (lw, lh) in enumerate(s.level_dimensions):
            ds = s.level_downsamples[level]
            for _ in range(12):
                w, h = int(rng.integers(1, min(600, lw) + 1)), int(rng.integers(1, min(600, lh) + 1))
                lx, ly = int(rng.integers(0, lw - w + 1)), int(rng.integers(0, lh - h + 1))
                x, y = round(lx * ds), round(ly * ds)
                np.testing.assert_array_equal(s.read_region(x, y, level, w, h), s._openslide_region(x, y, level, w, h))
        w, h = s.dimensions   # partly outside the slide: openslide's white fill
        edge = (w - 5, h - 5, 0, 10, 10)
        np.testing.assert_array_equal(s.read_region(*edge), s._openslide_region(*edge))


def test_unreadable_svs_fails_the_same_way_through_the_direct_path() -> None:
    with open_slide(need(DATA / "openslide-fixtures" / "unreadable.svs"), slide_id="bad1") as s:
        assert s._direct_tiles() is not None   # its header qualifies; the tile data is corrupt
        with pytest.raises(PathomixInputError, match=r"corrupt"):
            s.read_tile(0, 0, 16, 16)


def test_bad_modality_and_bad_override() -> None:
    path = need(DATA / "openslide-fixtures" / "small.svs")
    with pytest.raises(PathomixInputError, match="modality"):
        open_slide(path, modality="ihc")
    with pytest.raises(PathomixInputError, match="positive"):
        open_slide(path, mpp=-1.0)
    with open_slide(path, mpp=float("nan")) as s:   # an empty `mpp` cell in slides.tsv
        assert s.mpp == pytest.approx(0.499)


# ---- mIF (tifffile) ------------------------------------------------------------------------------


def test_mibitiff_channels_and_mpp() -> None:
    with open_slide(need(MIBI), modality="mif", slide_id="fov8") as s:
        assert len(s.channels) == 22 and s.channels[0] == "Background" and "CD45" in s.channels
        assert s.autofluorescence[s.channels.index("Background")]
        assert sum(s.autofluorescence) == 1
        assert s.mpp == pytest.approx(MIBI_MPP) and s.dimensions == (1024, 1024)
        assert len(s.level_dimensions) == 1 and s.objective_power == pytest.approx(10 / MIBI_MPP)
        region = s.read_region(100, 200, 0, 64, 32)
        assert region.shape == (22, 32, 64) and region.dtype == np.float32
        page = tifffile.imread(MIBI, key=s.channels.index("CD45"))
        np.testing.assert_array_equal(region[s.channels.index("CD45")], page[200:232, 100:164])
        tile = s.read_tile(900, 900, 328, 256)
        assert tile.shape == (22, 256, 256) and tile.dtype == np.float32
        assert (tile[:, -40:, -40:] == 0).all(), "past the image edge must be 0"
        assert s.thumbnail(8.0).shape == (22, 50, 50)


def test_channel_folder_matches_mibitiff(tmp_path: Path) -> None:
    need(MIBI_DIR)
    with pytest.raises(PathomixInputError, match=r"(?s)fov8_single_channel.*MPP.*`mpp` column"):
        open_slide(MIBI_DIR, modality="mif")
    with open_slide(MIBI_DIR, modality="mif", mpp=MIBI_MPP) as folder, \
            open_slide(need(MIBI), modality="mif") as tiff:
        assert folder.channels == tiff.channels and "NaK ATPase" in folder.channels
        assert folder.slide_id == "fov8_single_channel"
        i = folder.channels.index("NaK ATPase")
        a, b = folder.read_region(0, 0, 0, 1024, 1024)[i], tiff.read_region(0, 0, 0, 1024, 1024)[i]
        np.testing.assert_array_equal(a, b)
        assert a.max() > 0


def test_channel_sheet_length_mismatch_names_both_files(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "panel.tsv", ["DAPI", "CD3", "CD8", "CD20", "CD68", "PanCK", "AF"],
                        [0, 0, 0, 0, 0, 0, 1])
    with pytest.raises(PathomixInputError, match=r"(?s)fov8_Row.*22 channels.*panel\.tsv lists 7"):
        open_slide(need(MIBI), modality="mif", channels_sheet=sheet)


def test_channel_sheet_is_checked_against_the_files_names(tmp_path: Path) -> None:
    """The MIBItiff names its 22 channels: a sheet with other names is refused listing both; the same names
    (case aside) are accepted, the channels keep the file's spelling (stores' `channels`) and the sheet's
    autofluorescence flags win."""
    with open_slide(need(MIBI), modality="mif") as s:
        own = list(s.channels)
    wrong = write_sheet(tmp_path / "wrong.tsv", [f"m{i}" for i in range(22)], [0] * 22)
    with pytest.raises(PathomixInputError, match=r"(?s)fov8_Row.*names its channels.*Background.*wrong\.tsv.*m0"):
        open_slide(need(MIBI), modality="mif", channels_sheet=wrong)
    flags = [0] * 21 + [1]
    sheet = write_sheet(tmp_path / "panel.tsv", [n.upper() for n in own], flags)
    with open_slide(need(MIBI), modality="mif", channels_sheet=sheet) as s:
        assert s.channels == own and s.autofluorescence == [False] * 21 + [True]
    assert read_channel_sheet(sheet) == ([n.upper() for n in own], [bool(f) for f in flags])


def test_qptiff_channel_names_from_its_qpi_xml(tmp_path: Path) -> None:
    """A Vectra QPTIFF (openslide does not open it): channel names DAPI, FITC, Cy3 from each page's QPI XML,
    0.4965 µm/px from its resolution tags; a sheet in another order is refused."""
    qptiff = need(DATA / "mif" / "qptiff" / "pathml_small_vectra.qptiff")
    with open_slide(qptiff, modality="mif", slide_id="vectra") as s:
        assert s.channels == ["DAPI", "FITC", "Cy3"] and s.mpp == pytest.approx(0.4965, abs=1e-4)
        assert s.dimensions == (1920, 1440) and s.autofluorescence == [False] * 3
        assert s.read_region(0, 0, 0, 64, 64).shape == (3, 64, 64)
    swapped = write_sheet(tmp_path / "swapped.tsv", ["FITC", "DAPI", "Cy3"], [0, 0, 0])
    with pytest.raises(PathomixInputError, match=r"(?s)vectra.*\['DAPI', 'FITC', 'Cy3'\].*swapped\.tsv"):
        open_slide(qptiff, modality="mif", slide_id="vectra", channels_sheet=swapped)


def test_channel_sheet_missing_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("channel\tname\n0\tDAPI\n")
    with pytest.raises(PathomixInputError, match=r"bad\.tsv.*index"):
        read_channel_sheet(bad)


def test_synthetic_ome_tiff(tmp_path: Path) -> None:
    data = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "CYX", "Channel": {"Name": ["DAPI", "CD3", "AF_488"]}, "PhysicalSizeX": 0.65,
        "PhysicalSizeY": 0.65})
    with open_slide(path, modality="mif", slide_id="ome1") as s:
        assert s.channels == ["DAPI", "CD3", "AF_488"]
        assert s.autofluorescence == [False, False, True]
        assert s.mpp == pytest.approx(0.65) and s.dimensions == (50, 40)
        np.testing.assert_array_equal(s.read_region(5, 6, 0, 10, 12), data[:, 6:18, 5:15].astype(np.float32))


def test_synthetic_ome_pyramid(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 4000, (2, 128, 160), dtype=np.uint16)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, subifds=1, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "Ki67"]},
                                            "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(data[:, ::2, ::2], subfiletype=1)
    with open_slide(path, modality="mif") as s:
        assert s.level_dimensions == ((160, 128), (80, 64)) and s.level_downsamples == (1.0, 2.0)
        assert s.best_level(2.0) == 1
        np.testing.assert_array_equal(s.read_region(0, 0, 1, 80, 64), data[:, ::2, ::2])
        assert s.thumbnail(1.0).shape == (2, 64, 80)


def test_ome_without_mpp_needs_override(tmp_path: Path) -> None:
    path = tmp_path / "nompp.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint8), ome=True, metadata={"axes": "CYX"})
    with pytest.raises(PathomixInputError, match=r"slide nompp\.ome .*has no MPP.*`mpp` column"):
        open_slide(path, modality="mif")
    with open_slide(path, modality="mif", mpp=1.0) as s:
        assert s.channels == ["channel_0", "channel_1"]


@pytest.mark.parametrize(("name", "flag"), [
    ("AF", True), ("af_488", True), ("AF 555", True), ("Autofluorescence", True), ("Background", True),
    ("CD45", False), ("AFP", False), ("DAPI", False), ("Leaf", False),
])
def test_autofluorescence_names(name: str, flag: bool) -> None:
    assert is_autofluorescence(name) is flag
