"""``python -m pathomix.features``: one slide, every magnification, one encoder load.

    python -m pathomix.features --slide-id S1 --path S1.svs --modality he \
        --tiles tiles/20x/S1.h5 tiles/10x/S1.h5 --out features/E/20x/S1.h5 features/E/10x/S1.h5 \
        --params '{"encoder": "resnet50_trunc", ...}'
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from pathomix.features.encoders import ENCODERS, build_encoder
from pathomix.features.extract import ExtractParams, extract_tiles
from pathomix.features.tiles import SlideRef, TileDataset
from pathomix.io.errors import PathomixInputError
from pathomix.io.h5store import read_coords, write_features
from pathomix.logs import setup_logging

log = logging.getLogger("pathomix.features")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pathomix.features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list-encoders", action="store_true", help="print the encoder registry and exit")
    p.add_argument("--slide-id")
    p.add_argument("--path")
    p.add_argument("--modality", default="he", choices=("he", "mif"))
    p.add_argument("--mpp", type=float, default=None)
    p.add_argument("--channels-sheet", default=None)
    p.add_argument("--tiles", nargs="+", default=[], help="coords stores, one per magnification")
    p.add_argument("--out", nargs="+", default=[], help="feature stores, same order as --tiles")
    p.add_argument("--params", default="{}", help="JSON of the config's `features:` subtree")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    if len(args.tiles) != len(args.out):
        raise SystemExit("--tiles and --out need the same number of paths")
    params = ExtractParams(**json.loads(args.params))
    torch.set_num_threads(max(1, args.threads))
    ref = SlideRef(args.slide_id, args.path, args.modality, args.mpp, args.channels_sheet)
    model, spec, digest = build_encoder(params.encoder, params.weights)
    for tiles, out in zip(args.tiles, args.out, strict=True):
        coords, attrs = read_coords(tiles)
        channels = attrs.get("channels") or []
        flags = attrs.get("autofluorescence")
        markers = [c for c, f in zip(channels, flags if flags is not None else [0] * len(channels),
                                     strict=True) if not f]
        dataset = TileDataset(ref, coords, int(attrs["patch_size_level0"]), int(attrs["patch_size"]))
        feats, precision = extract_tiles(dataset, model, spec, params,
                                         n_markers=len(markers) if args.modality == "mif" else 0)
        feature_attrs = {"encoder": spec.name, "encoder_weights_sha256": digest, "precision": precision}
        if args.modality == "mif":
            feature_attrs["channels"] = markers
        if len(coords) == 0:
            log.warning("slide %s has no tiles at %s; writing an empty feature store", args.slide_id, tiles)
        write_features(out, coords, attrs, feats, feature_attrs)
        log.info("wrote %s: %s", out, feats.shape)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.list_encoders:
        for name, spec in ENCODERS.items():
            sys.stdout.write(f"{name}\t{spec.dim}\t{spec.description}\n")
        return 0
    try:
        run(args)
    except PathomixInputError as err:
        log.error("%s", err)
        return 1
    return 0
