"""Slide formats beyond openslide's (issue 19): H&E OME-TIFF (tifffile), DICOM WSI colours (pydicom/imagecodecs),
and clear errors that name the detected format for the ones pathomix cannot read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from shared_files import need

from pathomix.errors import PathomixInputError
from pathomix.io.formats import detect_format
from pathomix.io.slide import open_slide
from pathomix.tiling.params import TilingParams
from pathomix.tiling.stage import tile_slide

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"
CMU_DICOM = DATA / "dicom" / "cmu1-small-region" / "level-0-frames-0-30.dcm"
WSI2DCM = DATA / "dicom" / "wsi2dcm"
SAME_ATTRS = ("patch_size", "patch_size_level0", "target_magnification", "overlap", "level0_width", "level0_height",
              "target_mpp", "level0_mpp", "modality")




def write_ome_he(path: Path, img: np.ndarray, size_x: float = 0.499, unit: str = "µm",
                 as_series: bool = False) -> Path:
    """A QuPath/Bio-Formats-like H&E OME-TIFF: tiled JPEG, 3 levels in SubIFDs (or as separate images)."""
    meta = {"axes": "YXS", "PhysicalSizeX": size_x, "PhysicalSizeXUnit": unit, "PhysicalSizeY": size_x,
            "PhysicalSizeYUnit": unit}
    levels = [img] + [np.array(Image.fromarray(img).resize((img.shape[1] // k, img.shape[0] // k),
                                                           Image.Resampling.BOX)) for k in (2, 4)]
    kw = {"tile": (256, 256), "compression": "jpeg", "compressionargs": {"level": 90}, "photometric": "rgb"}
    with tifffile.TiffWriter(path, ome=True) as tw:
        if as_series:
            for i, level in enumerate(levels):
                tw.write(level, metadata=meta if i == 0 else {"axes": "YXS"}, **kw)
        else:
            tw.write(img, subifds=2, metadata=meta, **kw)
            for level in levels[1:]:
                tw.write(level, subfiletype=1, **kw)
    return path


# ---- H&E OME-TIFF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_series", [False, True], ids=["subifds", "series-levels"])
def test_ome_tiff_he_reads_like_the_svs(tmp_path: Path, cmu_pixels: np.ndarray, as_series: bool) -> None:
    path = write_ome_he(tmp_path / "cmu.ome.tif", cmu_pixels, as_series=as_series)
    assert detect_format(path) == "ome-tiff"
    with open_slide(path, slide_id="ome") as s:
        assert type(s).__name__ == "TiffSlide" and s.modality == "he" and s.channels == ["R", "G", "B"]
        assert s.mpp == pytest.approx(0.499) and s.dimensions == (2220, 2967)
        assert s.level_dimensions == ((2220, 2967), (1110, 1483), (555, 741))
        region = s.read_region(1000, 1500, 0, 300, 200)
        assert region.shape == (200, 300, 3) and region.dtype == np.uint8
        decoded = tifffile.imread(path)   # tile by tile, any offset: tifffile's own pixels
        np.testing.assert_array_equal(region, decoded[1500:1700, 1000:1300])
        np.testing.assert_array_equal(s.read_region(0, 0, 0, *s.dimensions), decoded)
        diff = np.abs(decoded.astype(float) - cmu_pixels).mean()
        assert diff < 4, f"JPEG round trip only, got mean |diff| {diff:.2f}"
        edge = s.read_tile(2100, 2900, 257, 256)
        assert (edge[-20:, -20:] == 255).all(), "past the slide edge must be white"
        part, whole = s.read_region(512, 256, 1, 64, 64), s.read_region(512, 256, 1, 300, 300)
        np.testing.assert_array_equal(part, whole[:64, :64])
        assert s.thumbnail(8.0).shape == (185, 138, 3)


def test_ome_tiff_he_tiles_like_the_svs(tmp_path: Path, cmu_pixels: np.ndarray) -> None:
    path = write_ome_he(tmp_path / "cmu.ome.tif", cmu_pixels)
    for target in (0.5, 1.0):
        with open_slide(need(CMU)) as svs, open_slide(path) as ome:
            a, b = tile_slide(svs, target, TilingParams()), tile_slide(ome, target, TilingParams())
        # the SVS has one level, the OME-TIFF's tissue mask comes from its 4x level: a tile or two at the border
        assert abs(len(b.coords) - len(a.coords)) <= max(2, 0.06 * len(a.coords)), (len(a.coords), len(b.coords))
        assert {k: a.attrs[k] for k in SAME_ATTRS} == {k: b.attrs[k] for k in SAME_ATTRS}
        assert b.attrs["level0_magnification"] == pytest.approx(10 / 0.499)   # no Objective in this OME-XML
        assert b.attrs["patch_level"] == (0 if target == 0.5 else 1)   # the SVS has one level, this one three
        assert b.coords.dtype == np.int64 and b.coords.shape[1] == 2


def test_ome_tiff_units_and_missing_size(tmp_path: Path, cmu_pixels: np.ndarray) -> None:
    small = cmu_pixels[:512, :512]
    path = write_ome_he(tmp_path / "obj.ome.tif", small, 0.227)
    xml = tifffile.tiffcomment(path).replace("<Image ", '<Instrument ID="Instrument:0"><Objective ID="Objective:0:0" '
                                             'NominalMagnification="40.0"/></Instrument><Image ', 1)
    tifffile.tiffcomment(path, xml.encode())
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.227) and s.objective_power == 40.0
    with open_slide(write_ome_he(tmp_path / "mm.ome.tif", small, 0.000227, "mm")) as s:
        assert s.mpp == pytest.approx(0.227)
    with open_slide(write_ome_he(tmp_path / "nm.ome.tif", small, 227.0, "nm")) as s:
        assert s.mpp == pytest.approx(0.227)
    path = tmp_path / "nosize.ome.tif"
    tifffile.imwrite(path, small, ome=True, tile=(256, 256), photometric="rgb", metadata={"axes": "YXS"})
    with pytest.raises(PathomixInputError, match=r"slide nosize\.ome .*has no MPP.*`mpp` column"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as s:
        assert s.mpp == 0.25


def test_ome_tiff_that_is_not_rgb_says_set_mif(tmp_path: Path) -> None:
    path = tmp_path / "panel.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 64, 64), np.uint16), ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.5})
    with pytest.raises(PathomixInputError, match=r"H&E slides must be 8-bit RGB.*modality `mif`"):
        open_slide(path, slide_id="p")


# ---- DICOM WSI ---------------------------------------------------------------------------------------------


def test_dicom_colours_and_tissue_match_the_svs() -> None:
    """The DICOM conversion of CMU-1-Small-Region (header RGB, JFIF YCbCr frames): openslide alone renders a
    salmon background (88 of 88 tiles kept); decoded by the frames' own colour space it matches the SVS."""
    with open_slide(need(CMU)) as svs, open_slide(need(CMU_DICOM)) as dcm:
        assert type(dcm).__name__ == "DicomSlide" and dcm._openslide_wrong
        assert dcm.dimensions == svs.dimensions and dcm.mpp == pytest.approx(0.499)
        whole = dcm.read_region(0, 0, 0, *dcm.dimensions).astype(float)
        ref = svs.read_region(0, 0, 0, *svs.dimensions).astype(float)
        assert np.abs(whole - ref).mean() < 5
        assert dcm._openslide_region(0, 0, 0, 100, 100).mean(axis=(0, 1))[1] < 160, "openslide's colours are wrong"
        # tissue tiles within ±10 % of the SVS's (docs/benchmarks.md, issue 19): the DICOM's mask comes from the
        # converter's own sharp 16x level, the SVS's from a box filter of level 0; Otsu is fitted at 2x the mask's
        # pixel size so both get the same threshold (34 vs 32 at 20x, 6 vs 6 at 10x; before: 34 vs 30)
        for target, params in ((0.5, TilingParams()), (1.0, TilingParams()), (0.5, TilingParams(mask_mpp=4.0))):
            a, b = tile_slide(svs, target, params), tile_slide(dcm, target, params)
            assert abs(len(b.coords) - len(a.coords)) <= 0.1 * len(a.coords), (target, len(a.coords), len(b.coords))
            assert len(b.coords) < b.n_positions
            for x, y in a.coords[:: max(1, len(a.coords) // 4)]:
                ta = svs.read_tile(int(x), int(y), a.attrs["patch_size_level0"], 256).mean(axis=(0, 1))
                tb = dcm.read_tile(int(x), int(y), b.attrs["patch_size_level0"], 256).mean(axis=(0, 1))
                np.testing.assert_allclose(tb, ta, atol=4)


@pytest.mark.parametrize("name", ["wsi2dcm_jpeg.dicom", "wsi2dcm_jpeg2000.dicom"])
def test_wsi2dcm_opens_and_decodes_like_openslide(name: str) -> None:
    with open_slide(need(WSI2DCM / name), slide_id="w") as s:
        assert s.mpp == pytest.approx(16.783) and s.dimensions == (957, 715)
        assert s._levels[0] is not None and not s._openslide_wrong
        np.testing.assert_array_equal(s.read_region(100, 50, 0, 300, 400), s._openslide_region(100, 50, 0, 300, 400))


# ---- formats pathomix cannot read: the error names the format and a conversion ---------------------------


@pytest.mark.parametrize(("name", "data", "fmt"), [
    ("scan.czi", b"ZISRAWFILE" + bytes(200), "detected format: zeiss"),   # openslide 4 reads (brightfield) CZI
    ("scan.vsi", b"II*\x00" + bytes(200), "Olympus/Evident VSI"),
    ("scan.mrxs", b"[GENERAL]\nSLIDE_VERSION = 01.02\n", "MRXS index without its data folder"),
    ("plain.svs", b"IJrE" + bytes(200), "no image format that pathomix or openslide recognises"),
])
def test_unreadable_formats_name_the_format_and_a_conversion(tmp_path: Path, name: str, data: bytes,
                                                             fmt: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(PathomixInputError, match=rf"(?s)slide S \(.*{name}\).*{fmt}.*bfconvert.*raw2ometiff"):
        open_slide(path, slide_id="S")


def test_unsupported_compression_names_the_format() -> None:
    path = need(DATA / "openslide-fixtures" / "unopenable.tiff")
    with pytest.raises(PathomixInputError, match=r"could not be opened by openslide \(detected format: generic-tiff\)"
                                                 r".*52479.*bfconvert"):
        open_slide(path, slide_id="S")


def test_two_file_dicom_fixture_is_decoded_like_openslide() -> None:
    with open_slide(need(DATA / "openslide-fixtures" / "boxes_0.dcm"), slide_id="b") as s:
        assert type(s).__name__ == "DicomSlide" and s.dimensions == (16, 16) and not s._openslide_wrong
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 16, 16), s._openslide_region(0, 0, 0, 16, 16))


@pytest.mark.parametrize("layout", ["cyx", "planar", "strips"])
def test_ome_tiff_he_other_rgb_layouts(tmp_path: Path, cmu_pixels: np.ndarray, layout: str) -> None:
    """raw2ometiff writes H&E as three 8-bit channel pages (CYX) unless told `--rgb`; Bio-Formats may write
    planar-separate RGB; small exports may be untiled strips. All read as the same RGB."""
    img = cmu_pixels[:700, :900]
    path = tmp_path / f"{layout}.ome.tif"
    meta = {"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    if layout == "cyx":
        with tifffile.TiffWriter(path, ome=True) as tw:
            tw.write(img.transpose(2, 0, 1), photometric="minisblack", tile=(256, 256), compression="zlib",
                     subifds=1, metadata={"axes": "CYX", **meta})
            tw.write(img[::2, ::2].transpose(2, 0, 1), photometric="minisblack", tile=(256, 256), subfiletype=1)
    elif layout == "planar":
        tifffile.imwrite(path, img.transpose(2, 0, 1), ome=True, photometric="rgb", planarconfig="separate",
                         tile=(256, 256), metadata={"axes": "SYX", **meta})
    else:
        tifffile.imwrite(path, img, ome=True, photometric="rgb", rowsperstrip=64, compression="zlib",
                         metadata={"axes": "YXS", **meta})
    with open_slide(path, slide_id=layout) as s:
        assert s.dimensions == (900, 700) and s.mpp == 0.5
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 900, 700), img)
        np.testing.assert_array_equal(s.read_region(130, 250, 0, 300, 77), img[250:327, 130:430])
        corner = s.read_region(880, 690, 0, 40, 30)
        assert (corner[10:] == 255).all() and (corner[:, 20:] == 255).all()
        if layout == "cyx":
            assert s.level_dimensions == ((900, 700), (450, 350))
            np.testing.assert_array_equal(s.read_region(0, 0, 1, 450, 350), img[::2, ::2])


def test_dicom_series_folder_opens_as_one_slide(tmp_path: Path) -> None:
    with open_slide(need(CMU_DICOM.parent), slide_id="series") as s:
        assert type(s).__name__ == "DicomSlide" and s.dimensions == (2220, 2967) and len(s.level_dimensions) == 12
    with pytest.raises(PathomixInputError, match=r"is a folder, but H&E slides must be one file"):
        open_slide(tmp_path, slide_id="empty")
