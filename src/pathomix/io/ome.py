"""OME-XML metadata (OME-TIFF): channel names and µm/px of the first image's ``Pixels``.

Shared by the H&E (:mod:`pathomix.io.tiffwsi`) and mIF (:mod:`pathomix.io.mif`) readers.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import tifffile

# OME ``UnitsLength`` symbols → µm; an absent ``PhysicalSizeXUnit`` means µm (the OME schema's default)
OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def ome_pixels(tf: tifffile.TiffFile) -> ET.Element | None:
    """The first image's ``Pixels`` element, or None (no or unparsable OME-XML)."""
    try:
        root = ET.fromstring(tf.ome_metadata or "<OME/>")
    except ET.ParseError:
        return None
    return next((el for el in root.iter() if _local(el.tag) == "Pixels"), None)


def pixels_mpp(pixels: ET.Element | None) -> float | None:
    """µm/px from ``PhysicalSizeX`` in its ``PhysicalSizeXUnit`` (default µm); None if absent or unknown."""
    if pixels is None:
        return None
    unit = OME_UNIT_UM.get(pixels.get("PhysicalSizeXUnit", "µm").strip())
    try:
        size = float(pixels.get("PhysicalSizeX", "nan"))
    except ValueError:
        return None
    return size * unit if unit is not None and math.isfinite(size) and size > 0 else None


def ome_names_mpp(tf: tifffile.TiffFile) -> tuple[list[str | None], float | None]:
    """(``Channel@Name`` per channel, µm/px) of the first image; ([], None) without OME-XML."""
    pixels = ome_pixels(tf)
    if pixels is None:
        return [], None
    names = [ch.get("Name") for ch in pixels if _local(ch.tag) == "Channel"]
    return names, pixels_mpp(pixels)


def ome_objective_power(tf: tifffile.TiffFile) -> float | None:
    """The first ``Objective@NominalMagnification`` (e.g. 20 for a 20x scan), or None."""
    try:
        root = ET.fromstring(tf.ome_metadata or "<OME/>")
    except ET.ParseError:
        return None
    for el in root.iter():
        if _local(el.tag) == "Objective" and el.get("NominalMagnification"):
            try:
                power = float(el.get("NominalMagnification", ""))
            except ValueError:
                return None
            return power if math.isfinite(power) and power > 0 else None
    return None
