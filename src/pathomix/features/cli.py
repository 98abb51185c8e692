"""``python -m pathomix.features``: one slide, every magnification, one encoder load.

    python -m pathomix.features --slide-id S1 --path S1.svs --modality he \
        --tiles tiles/20x/S1.h5 tiles/10x/S1.h5 --out features/E/20x/S1.h5 features/E/10x/S1.h5 \
        --params '{"encoder": "resnet50_trunc", "on_bad_tile": "error", ...}' [--on-bad-tile error|skip]

``on_bad_tile`` (config ``features.on_bad_tile``; ``--on-bad-tile`` overrides it): ``error`` (default)
fails the slide on a tile whose image data cannot be read; ``skip`` leaves such tiles out, lists them in
the store's ``skipped_coords`` dataset (int64 (K, 2)) with ``n_skipped`` on ``features``, and logs a WARNING.
In-process callers (``pathomix.batch``) use :func:`run` with typed :class:`ExtractParams` and
:class:`ExtractPaths`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pathomix.cli import stage_main
from pathomix.constants import BAD_TILE_POLICIES, MODALITIES
from pathomix.errors import PathomixInputError
from pathomix.features.encoders import EncoderSpec, build_encoder, encoder_table, format_table
from pathomix.features.extract import BatchEncoder, Extracted, ExtractParams, extract_tiles
from pathomix.features.tiles import SlideRef, TileDataset
from pathomix.io.h5store import read_coords, write_features
from pathomix.io.stamps import extract_stamp, write_stamp
from pathomix.params import load_params

log = logging.getLogger("pathomix.features")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pathomix.features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list-encoders", action="store_true",
                   help="print the encoder registry (dim, input, embedding, weights source, found locally: "
                        "in --params' `weights` or the Hugging Face cache) and exit")
    p.add_argument("--slide-id")
    p.add_argument("--path")
    p.add_argument("--modality", default="he", choices=MODALITIES)
    p.add_argument("--mpp", type=float, default=None)
    p.add_argument("--channels-sheet", default=None)
    p.add_argument("--tiles", nargs="+", default=[], help="coords stores, one per magnification")
    p.add_argument("--out", nargs="+", default=[], help="feature stores, same order as --tiles")
    p.add_argument("--params", default="{}", help="JSON of the config's `features:` subtree")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU cores of this job: the DataLoader workers and the main process's torch threads")
    p.add_argument("--on-bad-tile", default=None, choices=BAD_TILE_POLICIES,
                   help="a tile whose image data cannot be read: fail the slide (error) or leave it out and "
                        "record it in `skipped_coords` (skip); overrides config `features.on_bad_tile`")
    p.add_argument("--code", default=None, help="code hash of the stage: stamps the stores (pathomix.io.stamps)")
    return p.parse_args(argv)


def load_extract_params(source: str | dict | None, on_bad_tile: str | None = None) -> ExtractParams:
    """The ``features:`` subtree → ExtractParams; ``on_bad_tile`` (``--on-bad-tile``), when given, wins."""
    params = load_params(ExtractParams, source, where="features")
    return params if on_bad_tile is None else dataclasses.replace(params, on_bad_tile=on_bad_tile)


@dataclass(frozen=True)
class ExtractPaths:
    """What one extraction job reads and writes: one slide, a coords store → a feature store per
    magnification. ``code`` (the stage's code hash), when given, stamps the stores."""

    slide_id: str
    path: str
    tiles: tuple[str, ...]
    out: tuple[str, ...]
    modality: str = "he"
    mpp: float | None = None
    channels_sheet: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        if len(self.tiles) != len(self.out):
            raise PathomixInputError(f"slide {self.slide_id}: --tiles and --out need the same number of paths, "
                                     f"got {len(self.tiles)} and {len(self.out)}")
        if self.modality not in MODALITIES:
            raise PathomixInputError(f"slide {self.slide_id}: modality {self.modality!r} is not one of "
                                     f"{MODALITIES}; fix slides.tsv")


def stamp(params: ExtractParams, tiles: tuple[str | Path, ...], code: str) -> str:
    """The stamp of a slide's feature stores (:mod:`pathomix.io.stamps`): per-slide and batch jobs agree."""
    return extract_stamp(code, json.dumps(dataclasses.asdict(params), sort_keys=True), params.on_bad_tile, tiles)


def _markers(attrs: dict) -> list[str]:
    """mIF marker names of a coords store: its channels minus the autofluorescence ones."""
    channels = attrs.get("channels") or []
    flags = attrs.get("autofluorescence")
    flags = flags if flags is not None else [0] * len(channels)
    return [c for c, f in zip(channels, flags, strict=True) if not f]


def _skipped(slide_id: str, tiles: str, out: str, coords: np.ndarray, result: Extracted) -> np.ndarray:
    """Level-0 (x, y) of the tiles left out; WARNs when there are any."""
    skipped = coords[~result.ok].reshape(-1, 2)
    if len(skipped):
        log.warning("slide %s: skipped %d of %d tile(s) of %s whose image data could not be read "
                    "(features.on_bad_tile: skip); they are left out of %s and listed in its `skipped_coords`. "
                    "First: %s", slide_id, len(skipped), len(coords), tiles, out, result.first_error)
    return skipped


def extract_store(paths: ExtractPaths, ref: SlideRef, encoder: tuple[nn.Module, EncoderSpec, str],
                  params: ExtractParams, tiles: str, out: str, batch_encoders: dict[int, BatchEncoder]) -> None:
    """One coords store → one feature store. ``batch_encoders`` (by marker count) is shared by the
    stores of one slide, so a compiled encoder or an automatic batch size is set up once."""
    model, spec, digest = encoder
    coords, attrs = read_coords(tiles)
    markers = _markers(attrs) if paths.modality == "mif" else []
    dataset = TileDataset(ref, coords, int(attrs["patch_size_level0"]), int(attrs["patch_size"]))
    if len(markers) not in batch_encoders and len(coords):
        batch_encoders[len(markers)] = BatchEncoder(model, spec, params, len(markers), dataset.tile_px)
    result = extract_tiles(dataset, model, spec, params, n_markers=len(markers), on_bad_tile=params.on_bad_tile,
                           encoder=batch_encoders.get(len(markers)))
    feature_attrs = {"encoder": spec.name, "encoder_weights_sha256": digest, "precision": result.precision,
                     "n_skipped": result.n_skipped}
    if paths.modality == "mif":
        feature_attrs["channels"] = markers
    if len(coords) == 0:
        log.warning("slide %s has no tiles at %s; writing an empty feature store", paths.slide_id, tiles)
    skipped = _skipped(paths.slide_id, tiles, out, coords, result)
    write_features(out, coords[result.ok], attrs, result.features, feature_attrs,
                   extra={"skipped_coords": skipped.astype(np.int64)})
    log.info("wrote %s: %s", out, result.features.shape)


def main_threads(threads: int, workers: int) -> int:
    """torch threads of the main process: what the job's ``threads`` leave after the DataLoader workers,
    at most 4. More intra-op threads than free cores spin against the decoding workers: on an H100 with
    16 cores, 14 workers, 16 main-process threads gave 3 000 tiles/s and 4 gave 8 900 (docs/benchmarks.md)."""
    return max(1, min(4, threads - workers))


def load_encoder(params: ExtractParams) -> tuple[nn.Module, EncoderSpec, str]:
    """The encoder ``params`` names, with its weights (model, spec, weights sha256)."""
    return build_encoder(params.encoder, params.weights, allow_random_init=params.allow_random_init)


def run(params: ExtractParams, paths: ExtractPaths, threads: int = 1,
        encoder: tuple[nn.Module, EncoderSpec, str] | None = None,
        batch_encoders: dict[int, BatchEncoder] | None = None) -> None:
    """Encode one slide at every magnification (in-process entry point of the stage). A caller encoding
    several slides (``pathomix.batch``) passes the ``encoder`` and ``batch_encoders`` it keeps, so they
    are set up once. Raises PathomixInputError on bad input."""
    torch.set_num_threads(main_threads(threads, params.num_workers))
    ref = SlideRef(paths.slide_id, paths.path, paths.modality, paths.mpp, paths.channels_sheet)
    encoder = encoder or load_encoder(params)
    batch_encoders = {} if batch_encoders is None else batch_encoders
    for tiles, out in zip(paths.tiles, paths.out, strict=True):
        extract_store(paths, ref, encoder, params, tiles, out, batch_encoders)
    if paths.code is not None:  # what made these stores, so a batch job of a larger cohort keeps them
        write_stamp(paths.out, stamp(params, paths.tiles, paths.code))


@stage_main("pathomix.features")
def main(argv: list[str] | None = None) -> int:
    """Encode one slide: 0 on success, 1 on an input problem (logged at ERROR, no traceback)."""
    args = parse_args(argv)
    if args.list_encoders:
        sys.stdout.write(format_table(encoder_table(load_extract_params(args.params).weights)))
        return 0
    params = load_extract_params(args.params, args.on_bad_tile)
    paths = ExtractPaths(args.slide_id, args.path, tuple(args.tiles), tuple(args.out), args.modality, args.mpp,
                         args.channels_sheet, args.code)
    run(params, paths, args.threads)
    return 0
