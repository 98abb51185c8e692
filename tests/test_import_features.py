"""Imported feature stores (``features.import``): TRIDENT, CLAM and STAMP layouts written here as those projects
write them, read, validated at planning time and converted into pathomix stores (pathomix.io.imported)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pathomix.errors import PathomixInputError
from pathomix.features.manifest import manifest_row
from pathomix.io.h5store import COORD_ATTRS, FEATURE_ATTRS, read_features
from pathomix.io.imported import ImportSpec, SlideGeometry, convert, main, parse_imports, plan

MAGS = {"20x": 0.5}
SLIDES = ["S1", "S2", "S3"]


def grid(n: int, step: int) -> np.ndarray:
    return np.array([[step * (i % 4), step * (i // 4)] for i in range(n)], dtype=np.int64)


def write_trident(folder: Path, slide: str, n: int = 6, dim: int = 8, target_mag: float = 20.0) -> Path:
    """As TRIDENT's feature extraction writes ``features_{encoder}/{slide}.h5`` (trident.IO.save_h5: one dataset
    per key, the patching's coords attributes on ``coords``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slide}.h5"
    with h5py.File(path, "w") as h:
        h.create_dataset("features", data=np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32))
        c = h.create_dataset("coords", data=grid(n, 512))
        c.attrs.update(patch_size=256, patch_size_level0=512, level0_magnification=40, target_magnification=target_mag,
                       overlap=0, name=slide, savetodir=str(folder))
    return path


def write_clam(folder: Path, slide: str, n: int = 5, dim: int = 8) -> Path:
    """As CLAM's extract_features_fp.py writes ``h5_files/{slide}.h5`` (``features`` + ``coords``, no attributes)
    beside ``pt_files/``."""
    (folder / "h5_files").mkdir(parents=True, exist_ok=True)
    (folder / "pt_files").mkdir(exist_ok=True)
    path = folder / "h5_files" / f"{slide}.h5"
    with h5py.File(path, "w") as h:
        h.create_dataset("features", data=np.ones((n, dim), np.float32), maxshape=(None, dim))
        h.create_dataset("coords", data=grid(n, 512), maxshape=(None, 2))
    return path


def write_stamp(folder: Path, slide: str, n: int = 4, dim: int = 8, tile_um: float = 128.0,
                tile_px: int = 256) -> Path:
    """As STAMP's preprocessing writes ``{extractor}/{slide}.h5``: ``feats`` float16, ``coords`` in µm, file
    attributes extractor, unit, tile_size_um, tile_size_px."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slide}.h5"
    with h5py.File(path, "w") as h:
        h["coords"] = grid(n, 1).astype(np.float32) * tile_um
        h["feats"] = np.full((n, dim), 0.5, np.float16)
        h.attrs.update(stamp_version="2.3.0", extractor="ctranspath", unit="um", tile_size_um=tile_um,
                       tile_size_px=tile_px, code_hash="1a2b3c4d", feat_type="tile")
    return path


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    out = {"trident": tmp_path / "trident", "clam": tmp_path / "clam", "stamp": tmp_path / "stamp"}
    for s in SLIDES:
        write_trident(out["trident"], s)
        write_clam(out["clam"], s)
        write_stamp(out["stamp"], s)
    return out


def test_config_entries_are_a_folder_or_a_mapping(tmp_path):
    specs = parse_imports({"a": str(tmp_path), "b": {"path": str(tmp_path), "format": "clam", "mag": "20x"}})
    assert specs["a"] == ImportSpec("a", tmp_path, "auto", None)
    assert specs["b"].format == "clam" and specs["b"].mag == "20x"
    with pytest.raises(PathomixInputError, match="features.import.c: format 'cellvit'"):
        parse_imports({"c": {"path": str(tmp_path), "format": "cellvit"}})
    with pytest.raises(PathomixInputError, match="give the folder"):
        parse_imports({"d": {"mag": "20x"}})


def test_the_layout_is_read_off_the_folder(folders):
    assert {name: ImportSpec(name, f).layout() for name, f in folders.items()} == {
        "trident": "trident", "clam": "clam", "stamp": "stamp"}
    assert ImportSpec("c", folders["clam"]).store("S1") == folders["clam"] / "h5_files" / "S1.h5"


def test_plans_of_the_three_layouts(folders):
    tri = plan(ImportSpec("uni", folders["trident"]), SLIDES, MAGS)
    assert (tri.layout, tri.mag, tri.dim, sorted(tri.files)) == ("trident", "20x", 8, SLIDES)
    clam = plan(ImportSpec("clam_r50", folders["clam"], mag="20x"), SLIDES, MAGS)
    assert clam.layout == "clam" and clam.files["S2"] == folders["clam"] / "h5_files" / "S2.h5"
    stamp = plan(ImportSpec("ctp", folders["stamp"]), SLIDES, MAGS)  # 128 µm / 256 px = 0.5 µm/px
    assert (stamp.layout, stamp.mag) == ("stamp", "20x")


def test_a_slide_without_a_store_is_named_with_the_folder_and_file(folders):
    with pytest.raises(PathomixInputError) as err:
        plan(ImportSpec("uni", folders["trident"]), [*SLIDES, "S9", "S10"], MAGS)
    msg = str(err.value)
    assert "2 of 5 slide(s) have no trident store in" in msg and str(folders["trident"]) in msg
    assert "S9.h5" in msg and "S9, S10" in msg
    with pytest.raises(PathomixInputError, match=r"h5_files .*S9"):
        plan(ImportSpec("c", folders["clam"], mag="20x"), [*SLIDES, "S9"], MAGS)


def test_unreadable_stores_missing_datasets_and_mixed_dimensions_are_listed_together(folders):
    folder = folders["trident"]
    (folder / "S1.h5").write_bytes(b"not an h5 file")
    write_trident(folder, "S2", dim=16)
    with h5py.File(folder / "S3.h5", "w") as h:
        h["features"] = np.zeros((2, 8), np.float32)  # no coords
    with pytest.raises(PathomixInputError) as err:
        plan(ImportSpec("uni", folder, format="trident"), SLIDES, MAGS)
    msg = str(err.value)
    assert "S1.h5: not a readable h5 file" in msg and "S3.h5: no 'coords' dataset" in msg
    with pytest.raises(PathomixInputError, match=r"feature dimensions differ across slides: \{8: 'S1', 16: 'S2'\}"):
        write_trident(folder, "S1")
        write_trident(folder, "S3")
        plan(ImportSpec("uni", folder), SLIDES, MAGS)
    with pytest.raises(PathomixInputError, match="no 'feats' dataset"):
        plan(ImportSpec("x", folder, format="stamp"), SLIDES, MAGS)


def test_magnifications_must_match_the_configured_ones(folders, tmp_path):
    with pytest.raises(PathomixInputError, match=r"at 20x only, but tiling.magnifications also names \['10x'\]"):
        plan(ImportSpec("uni", folders["trident"]), SLIDES, {"20x": 0.5, "10x": 1.0})
    with pytest.raises(PathomixInputError, match="do not record their magnification.*mag: <one of"):
        plan(ImportSpec("c", folders["clam"]), SLIDES, MAGS)
    for s in SLIDES:  # STAMP's defaults: 256 µm in 224 px = 1.14 µm/px, neither 20x nor 10x
        write_stamp(tmp_path / "stamp_default", s, tile_um=256.0, tile_px=224)
    with pytest.raises(PathomixInputError, match=r"1.14 µm/px .*matches no tiling.magnifications entry"):
        plan(ImportSpec("ctp", tmp_path / "stamp_default"), SLIDES, {"20x": 0.5, "10x": 1.0})
    assert plan(ImportSpec("ctp", tmp_path / "stamp_default", mag="10x"), SLIDES, {"10x": 1.0}).mag == "10x"
    with pytest.raises(PathomixInputError, match="mag 5x is not in tiling.magnifications"):
        plan(ImportSpec("ctp", tmp_path / "stamp_default", mag="5x"), SLIDES, {"10x": 1.0})


def convert_cli(source: Path, fmt: str, out: Path, *extra: str) -> tuple:
    assert main(["--slide-id", "S1", "--source", str(source), "--format", fmt, "--encoder", "mine", "--mag", "20x",
                 "--target-mpp", "0.5", "--out", str(out), *extra]) == 0
    return read_features(out)


@pytest.mark.parametrize("fmt", ["trident", "clam", "stamp"])
def test_conversion_writes_a_pathomix_store_with_the_source(folders, tmp_path, fmt):
    source = ImportSpec(fmt, folders[fmt]).store("S1")
    extra = ["--mpp", "0.25"] if fmt == "stamp" else []
    feats, coords, fattrs, cattrs = convert_cli(source, fmt, tmp_path / "out" / "20x" / "S1.h5", *extra)
    with h5py.File(source, "r") as h:
        original = h["feats" if fmt == "stamp" else "features"][:]
        raw = h["coords"][:]
    np.testing.assert_array_equal(feats, original)
    assert set(COORD_ATTRS) <= set(cattrs) and set(FEATURE_ATTRS) <= set(fattrs)
    assert coords.dtype == np.int64 and fattrs["encoder"] == "mine" and fattrs["source_format"] == fmt
    assert fattrs["source"] == str(source.resolve())
    assert cattrs["target_mpp"] == 0.5 and cattrs["slide_id"] == "S1" and cattrs["mag"] == "20x"
    if fmt == "stamp":  # µm → level-0 px at 0.25 µm/px; a 128 µm tile is 512 level-0 px
        np.testing.assert_array_equal(coords, (raw / 0.25).astype(np.int64))
        assert cattrs["patch_size_level0"] == 512 and cattrs["patch_size"] == 256 and cattrs["level0_mpp"] == 0.25
    else:
        np.testing.assert_array_equal(coords, raw)
        assert cattrs["patch_size_level0"] == 512
    if fmt == "trident":
        assert cattrs["level0_magnification"] == 40 and cattrs["patch_size"] == 256


def test_stamp_coords_need_the_slides_mpp(folders):
    source = ImportSpec("s", folders["stamp"]).store("S1")
    with pytest.raises(PathomixInputError, match="give slide S1 an `mpp`"):
        convert("S1", source, "stamp", "ctp", 0.5, "20x", SlideGeometry())


def test_the_manifest_names_the_source_of_an_imported_store(folders, tmp_path):
    out = tmp_path / "results" / "features" / "mine" / "20x" / "S1.h5"
    convert_cli(ImportSpec("t", folders["trident"]).store("S1"), "trident", out)
    slide = pd.Series({"slide_id": "S1", "patient_id": "P1", "modality": "he", "cohort": None})
    row = manifest_row(out, slide, "20x", tmp_path / "results")
    assert row["path"] == "features/mine/20x/S1.h5" and row["encoder"] == "mine"
    assert row["source"] == str((folders["trident"] / "S1.h5").resolve()) and row["source_format"] == "trident"


def test_a_fallback_encoder_takes_the_slides_without_a_store(folders):
    from pathomix.features.entries import ENCODERS

    folder = folders["trident"]
    for s in SLIDES:
        write_trident(folder, s, dim=ENCODERS["resnet18_trunc"].dim)
    (folder / "S2.h5").unlink()
    p = plan(ImportSpec("uni", folder, fallback="resnet18_trunc"), SLIDES, MAGS)
    assert sorted(p.files) == ["S1", "S3"] and p.missing == ("S2",)
    with pytest.raises(PathomixInputError, match="fallback vit_tiny gives 192-d features, the imported stores are 256"):
        plan(ImportSpec("uni", folder, fallback="vit_tiny"), SLIDES, MAGS)
    with pytest.raises(PathomixInputError, match="or name the registered encoder that made them"):
        plan(ImportSpec("uni", folder), SLIDES, MAGS)
    with pytest.raises(PathomixInputError, match="fallback 'conch_v1' is not a registered encoder"):
        parse_imports({"uni": {"path": str(folder), "fallback": "conch_v1"}})
