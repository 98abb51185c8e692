"""Tissue segmentation + tile coordinates: pathomix.tiling vs a CLAM-style reference, side by side.

    python benchmarks/tiling.py [--shared ../shared/data] [--demo DIR | --demo-patients 6]
        [--synthetic 60000x45000 40000x30000] [--repeat 3] [--otsu] [--workdir DIR]

Slides: CMU-1-Small-Region (shared/data), the demo's H&E slides (generated into a temporary
folder unless ``--demo`` names one) and synthetic pyramidal slides at 0.25 µm/px
(``synthslide.py``; their true tissue layout is known, so IoU against the truth is printed too).

Ours: ``pathomix.tiling.tile_slide`` (the pyramid level closest to ``mask_mpp``, box-reduced to it
when finer; tissue mask, upsampled to ``mask_mpp`` when the level is coarser; tile grid).
CLAM-style (written here after CLAM's ``WholeSlideImage.segmentTissue`` / ``process_contour``):
the pyramid level openslide picks for the same downsample, resized (INTER_AREA) to the same
mask size as ours when that level is finer, RGB→HSV, median blur 7 on saturation, threshold
(fixed 8 as CLAM's preset, or Otsu with ``--otsu``), closing with a 4x4 kernel,
``cv2.findContours(RETR_CCOMP)``, contours and holes filtered by area (our ``min_region_um2``
instead of CLAM's 100 x 512² px, which would drop every demo slide; at most 8 holes kept),
then every candidate tile checked one by one as CLAM's ``isInContourV3_Easy`` does (four
points at ±patch/4 around the centre, ``cv2.pointPolygonTest``) and its centre tested against
the holes. Candidates are our grid positions inside each contour's bounding box (CLAM starts a
grid at each box's corner; using one grid makes the tile sets comparable). CLAM spreads the
checks over a pool of up to 4 processes, one pool per contour; here both run in one process
(``--clam-pool`` also times the reference that way).

Each method runs ``--repeat`` times on a fresh handle, alternating which goes first; the
best time of each is kept (the machine is shared). Printed per slide and overall: seconds,
speed-up (CLAM-style s / ours s), tissue-mask IoU on our mask grid, tile counts and the
Jaccard index of the two tile sets; per group also the time spent reading the mask level
(ours: the ``Slide.thumbnail`` the mask is made from, timed on its own; CLAM-style:
read_region + resize) and the rest.
Needs opencv-python-headless (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openslide
import pandas as pd

from pathomix.io.slide import open_slide
from pathomix.tiling import TilingParams, tile_slide
from pathomix.tiling.grid import GridGeometry
from pathomix.tiling.stage import source_mpp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthslide import Layout, make_layout, true_mask, write_slide  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_MPP = 0.5
MEDIAN = 7            # CLAM preset mthresh
STHRESH = 8           # CLAM preset sthresh (fixed threshold on 0..255 saturation)
CLOSE = 4             # CLAM preset close (kernel side, px)
MAX_HOLES = 8         # CLAM filter_params max_n_holes


@dataclass
class SlideCase:
    slide_id: str
    path: Path
    mpp: float | None = None
    layout: Layout | None = None


@dataclass
class RefResult:
    coords: np.ndarray
    mask: np.ndarray
    read_s: float          # reading (and resizing) the level, included in the total


def mask_shape(dimensions: tuple[int, int], mpp: float, mask_mpp: float) -> tuple[int, int, float]:
    """(w, h, factor) of the thumbnail ``Slide.thumbnail`` makes, computed the same way."""
    factor = max(mask_mpp / mpp, 1.0)
    return max(1, round(dimensions[0] / factor)), max(1, round(dimensions[1] / factor)), factor


def in_contour_v3_easy(cont: np.ndarray, pt: tuple[int, int], patch: int) -> bool:
    """CLAM's ``isInContourV3_Easy(center_shift=0.5)``: any of four points around the centre is inside."""
    shift = int(patch // 2 * 0.5)
    cx, cy = pt[0] + patch // 2, pt[1] + patch // 2
    for px, py in ((cx - shift, cy - shift), (cx + shift, cy + shift), (cx + shift, cy - shift),
                   (cx - shift, cy + shift)):
        if cv2.pointPolygonTest(cont, (float(px), float(py)), False) >= 0:
            return True
    return False


def in_holes(holes: list[np.ndarray], pt: tuple[int, int], patch: int) -> bool:
    """CLAM's ``isInHoles``: the tile centre lies strictly inside a hole."""
    centre = (float(pt[0] + patch / 2), float(pt[1] + patch / 2))
    return any(cv2.pointPolygonTest(h, centre, False) > 0 for h in holes)


def _check(pt: tuple[int, int], cont: np.ndarray, holes: list[np.ndarray], patch: int) -> tuple[int, int] | None:
    """CLAM's ``process_coord_candidate``: the point if the tile is in the contour and not in a hole."""
    return pt if in_contour_v3_easy(cont, pt, patch) and not in_holes(holes, pt, patch) else None


def filter_contours(contours: tuple, hierarchy: np.ndarray, a_t: float, a_h: float) -> tuple[list, list]:
    """CLAM's ``_filter_contours``: foreground contours by area net of holes, their largest holes."""
    fg, holes = [], []
    if hierarchy is None:
        return fg, holes
    hier = hierarchy[0][:, 2:]
    for idx in np.flatnonzero(hier[:, 1] == -1):
        hole_ids = np.flatnonzero(hier[:, 1] == idx)
        area = cv2.contourArea(contours[idx]) - sum(cv2.contourArea(contours[h]) for h in hole_ids)
        if area == 0 or area <= a_t:
            continue
        fg.append(contours[idx])
        kept = sorted((contours[h] for h in hole_ids), key=cv2.contourArea, reverse=True)[:MAX_HOLES]
        holes.append([h for h in kept if cv2.contourArea(h) > a_h])
    return fg, holes


def clam_style(osr: openslide.OpenSlide, mpp: float, params: TilingParams, otsu: bool,
               pool: bool = False) -> RefResult:
    """CLAM-style segmentation and patch coordinates (level-0 top-left, row-major)."""
    w0, h0 = osr.dimensions
    tw, th, factor = mask_shape((w0, h0), mpp, params.mask_mpp)
    start = time.perf_counter()
    level = osr.get_best_level_for_downsample(factor)
    img = np.array(osr.read_region((0, 0), level, osr.level_dimensions[level]))
    if img.shape[:2] != (th, tw):
        img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
    read_s = time.perf_counter() - start
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    med = cv2.medianBlur(np.ascontiguousarray(hsv[:, :, 1]), MEDIAN)
    flags = cv2.THRESH_OTSU + cv2.THRESH_BINARY if otsu else cv2.THRESH_BINARY
    _, binary = cv2.threshold(med, 0 if otsu else STHRESH, 255, flags)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((CLOSE, CLOSE), np.uint8))
    area_px = params.min_region_um2 / params.mask_mpp**2   # our threshold, at the mask's resolution
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    fg, holes = filter_contours(contours, hierarchy, area_px, area_px)
    # scale to level 0 as CLAM's scaleContourDim does
    sx, sy = w0 / tw, h0 / th
    scale = np.array([sx, sy])
    fg0 = [np.array(c * scale, dtype=np.int32) for c in fg]
    holes0 = [[np.array(h * scale, dtype=np.int32) for h in hs] for hs in holes]
    geometry = GridGeometry.for_slide(mpp, TARGET_MPP, params.tile_px, params.overlap_px)
    xs, ys = geometry.positions(w0, h0)
    patch, step = geometry.patch_size_level0, geometry.step_level0
    kept: set[tuple[int, int]] = set()
    for cont, hs in zip(fg0, holes0, strict=True):
        bx, by, bw, bh = cv2.boundingRect(cont)
        cx = xs[(xs >= bx - step) & (xs < bx + bw)]
        cy = ys[(ys >= by - step) & (ys < by + bh)]
        candidates = [((int(x), int(y)), cont, hs, patch) for y in cy for x in cx]
        if pool:   # as CLAM's process_contour: a pool of min(4, CPUs) per contour, starmap over candidates
            with mp.Pool(min(4, mp.cpu_count())) as workers:
                found = workers.starmap(_check, candidates)
        else:
            found = [_check(*c) for c in candidates]
        kept.update(pt for pt in found if pt is not None)
    coords = np.array(sorted(kept, key=lambda p: (p[1], p[0])), np.int64).reshape(-1, 2)
    mask = np.zeros((th, tw), np.uint8)
    for cont, hs in zip(fg, holes, strict=True):
        cv2.drawContours(mask, [cont], -1, 1, thickness=cv2.FILLED)
        if hs:
            cv2.drawContours(mask, hs, -1, 0, thickness=cv2.FILLED)
    return RefResult(coords, mask.astype(bool), read_s)


def iou(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts."""
    return int((a & b).sum()), int((a | b).sum())


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(map(tuple, a.tolist())), set(map(tuple, b.tolist()))
    return len(sa & sb) / max(len(sa | sb), 1)


def run_case(case: SlideCase, params: TilingParams, repeat: int, otsu: bool, pool: bool) -> dict:
    t_ours, t_ref, t_pool, read_ours, read_ref = [], [], [], [], []
    ours = ref = None
    for r in range(repeat):
        for method in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
            if method == "ours":
                with open_slide(case.path, "he", mpp=case.mpp, slide_id=case.slide_id) as slide:
                    start = time.perf_counter()
                    ours = tile_slide(slide, TARGET_MPP, params)
                    t_ours.append(time.perf_counter() - start)
                    start = time.perf_counter()   # the image the mask is made from, for the read/compute split
                    slide.thumbnail(source_mpp(slide, params.mask_mpp))
                    read_ours.append(time.perf_counter() - start)
            else:
                osr = openslide.OpenSlide(str(case.path))
                mpp = case.mpp or float(osr.properties[openslide.PROPERTY_NAME_MPP_X])
                start = time.perf_counter()
                ref = clam_style(osr, mpp, params, otsu)
                t_ref.append(time.perf_counter() - start)
                read_ref.append(ref.read_s)
                if pool:
                    start = time.perf_counter()
                    pooled = clam_style(osr, mpp, params, otsu, pool=True)
                    t_pool.append(time.perf_counter() - start)
                    assert np.array_equal(pooled.coords, ref.coords)
                osr.close()
    inter, union = iou(ours.mask, ref.mask)
    row = {"slide": case.slide_id, "ours_s": min(t_ours), "clam_s": min(t_ref),
           "ours_read_s": min(read_ours), "clam_read_s": min(read_ref),
           "mask": f"{ours.mask.shape[1]}x{ours.mask.shape[0]}", "inter": inter, "union": union,
           "iou": inter / max(union, 1), "tiles_ours": len(ours.coords), "tiles_clam": len(ref.coords),
           "tile_jaccard": jaccard(ours.coords, ref.coords)}
    if pool:
        row["clam_pool_s"] = min(t_pool)
    if case.layout is not None:
        truth = true_mask(case.layout, ours.mask.shape)
        row["iou_truth_ours"] = np.divide(*iou(ours.mask, truth))
        row["iou_truth_clam"] = np.divide(*iou(ref.mask, truth))
    return row


def cases(args: argparse.Namespace, work: Path) -> list[SlideCase]:
    out = []
    cmu = args.shared / "wsi" / "CMU-1-Small-Region.svs"
    if cmu.exists():
        out.append(SlideCase("CMU-1-Small-Region", cmu))
    else:
        print(f"({cmu} is absent: skipped)")
    demo = args.demo
    if demo is None and args.demo_patients:
        demo = work / "demo"
        subprocess.run([sys.executable, "-m", "pathomix.demo", "--out", str(demo), "--n-patients",
                        str(args.demo_patients), "--n-mif", "0", "--log-level", "WARNING"], check=True)
    if demo is not None:
        sheet = pd.read_csv(demo / "slides.tsv", sep="\t")
        for row in sheet[sheet.modality == "he"].itertuples():
            out.append(SlideCase(f"demo {row.slide_id}", demo / row.path,
                                 None if pd.isna(getattr(row, "mpp", np.nan)) else float(row.mpp)))
    for i, size in enumerate(args.synthetic):
        w, h = (int(v) for v in size.lower().split("x"))
        path = work / f"synthetic_{w}x{h}_seed{100 + i}.tif"
        if path.exists():   # a kept --workdir: the layout follows from the seed
            layout = make_layout(w, h, 0.25, 100 + i)
        else:
            start = time.perf_counter()
            layout = write_slide(path, w, h, mpp=0.25, seed=100 + i)
            print(f"(wrote {path.name} in {time.perf_counter() - start:.1f} s)")
        out.append(SlideCase(f"synthetic {w}x{h}", path, layout=layout))
    return out


def report(df: pd.DataFrame) -> None:
    df = df.assign(speedup=df.clam_s / df.ours_s)
    cols = ["slide", "mask", "ours_s", "clam_s", "speedup", "iou", "tiles_ours", "tiles_clam", "tile_jaccard"]
    if "clam_pool_s" in df:
        df = df.assign(speedup_pool=df.clam_pool_s / df.ours_s)
        cols[4:4] = ["clam_pool_s", "speedup_pool"]
    cols += [c for c in ("iou_truth_ours", "iou_truth_clam") if c in df]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    groups = {"all slides": df, "synthetic 0.25 µm/px": df[df.slide.str.startswith("synthetic")],
              "demo": df[df.slide.str.startswith("demo")], "CMU": df[df.slide.str.startswith("CMU")]}
    for name, g in groups.items():
        if g.empty:
            continue
        print(f"{name:22s} ({len(g):2d}): ours {g.ours_s.sum():7.3f} s, CLAM-style {g.clam_s.sum():7.3f} s, "
              f"speed-up {g.clam_s.sum() / g.ours_s.sum():5.2f}x (per-slide median {g.speedup.median():.2f}x); "
              f"IoU pooled {g.inter.sum() / max(g.union.sum(), 1):.3f} (min {g.iou.min():.3f}); "
              f"tiles {g.tiles_ours.sum()} vs {g.tiles_clam.sum()} "
              f"({g.tiles_ours.sum() / max(g.tiles_clam.sum(), 1):.3f}), "
              f"tile-set Jaccard median {g.tile_jaccard.median():.3f}")
        print(f"{'':22s}       of which reading the mask level: ours {g.ours_read_s.sum():7.3f} s, CLAM-style "
              f"{g.clam_read_s.sum():7.3f} s ({g.clam_read_s.sum() / g.ours_read_s.sum():5.2f}x); the rest: ours "
              f"{(g.ours_s - g.ours_read_s).clip(lower=0).sum():7.3f} s, CLAM-style "
              f"{(g.clam_s - g.clam_read_s).sum():7.3f} s")
        if "clam_pool_s" in g:
            print(f"{'':22s}       CLAM-style with CLAM's per-contour process pool {g.clam_pool_s.sum():7.3f} s, "
                  f"speed-up {g.clam_pool_s.sum() / g.ours_s.sum():5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--demo", type=Path, default=None, help="an existing demo folder (with slides.tsv)")
    ap.add_argument("--demo-patients", type=int, default=6, help="generate a demo of N patients (0 = none)")
    ap.add_argument("--synthetic", nargs="*", default=["80000x60000", "60000x45000", "40000x30000"],
                    help="synthetic slides W x H at 0.25 µm/px")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--otsu", action="store_true", help="Otsu threshold in the reference (CLAM's use_otsu)")
    ap.add_argument("--clam-pool", action="store_true",
                    help="also time the reference with CLAM's multiprocessing pool per contour")
    ap.add_argument("--workdir", type=Path, default=None, help="keep generated slides here (default: temp)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    params = TilingParams()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        slides = cases(args, work)
        print(f"{len(slides)} slides; tiles {params.tile_px} px at {TARGET_MPP} µm/px, mask {params.mask_mpp} "
              f"µm/px, min_tissue_fraction {params.min_tissue_fraction}; reference threshold "
              f"{'Otsu' if args.otsu else f'fixed {STHRESH}'}; best of {args.repeat}; opencv {cv2.__version__}")
        df = pd.DataFrame([run_case(c, params, args.repeat, args.otsu, args.clam_pool) for c in slides])
    report(df)


if __name__ == "__main__":
    main()
