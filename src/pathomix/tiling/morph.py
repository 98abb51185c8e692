"""Binary closing and opening with a disk, as ``scipy.ndimage`` computes them, in a few array passes.

A disk is a stack of centred horizontal runs, so an erosion (dilation) by it is, per row offset
``dy``, the AND (OR) of the image eroded (dilated) along rows by that row's half-width, shifted
by ``dy``. Row erosions for every half-width come from one incremental pass. The border
counts as background for both operations (scipy's ``border_value=0``), so the results are
identical to ``ndi.binary_closing`` / ``ndi.binary_opening`` with the same footprint.
"""

from __future__ import annotations

import numpy as np


def _half_widths(footprint: np.ndarray) -> list[tuple[int, int]]:
    """(dy, half-width) of each row of a symmetric footprint made of centred runs."""
    fp = np.asarray(footprint, bool)
    h, w = fp.shape
    if h % 2 == 0 or w % 2 == 0 or not np.array_equal(fp, fp[::-1, ::-1]):
        raise ValueError("footprint must be odd-sized and point-symmetric")
    rows = []
    for i, row in enumerate(fp):
        cols = np.flatnonzero(row) - w // 2
        if not len(cols):
            continue
        half = int(cols.max())
        if cols.min() != -half or len(cols) != 2 * half + 1:
            raise ValueError("each footprint row must be one run centred on the middle column")
        rows.append((i - h // 2, half))
    return rows


def _along_rows(x: np.ndarray, max_half: int, erode: bool) -> list[np.ndarray]:
    """[x eroded (or dilated) along rows by half-width k for k = 0..max_half]."""
    out = [x]
    for k in range(1, max_half + 1):
        cur = out[-1].copy()
        if erode:
            cur[:, :-k] &= x[:, k:]
            cur[:, k:] &= x[:, :-k]
            cur[:, -k:] = False
            cur[:, :k] = False
        else:
            cur[:, :-k] |= x[:, k:]
            cur[:, k:] |= x[:, :-k]
        out.append(cur)
    return out


def _apply(x: np.ndarray, rows: list[tuple[int, int]], erode: bool) -> np.ndarray:
    x = np.ascontiguousarray(x, bool)
    by_half = _along_rows(x, max(h for _, h in rows), erode)
    res = np.full(x.shape, erode)
    n = x.shape[0]
    for dy, half in rows:
        src, d = by_half[half], min(abs(dy), n)
        if dy >= 0:   # res[i] combines src[i + dy]; rows whose neighbour lies outside see background
            target, source, outside = res[:n - d], src[d:], res[n - d:]
        else:
            target, source, outside = res[d:], src[:n - d], res[:d]
        if erode:
            target &= source
            outside[...] = False
        else:
            target |= source
    return res


def binary_closing(x: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_closing(x, footprint)``: dilation, then erosion."""
    rows = _half_widths(footprint)
    return _apply(_apply(x, rows, erode=False), rows, erode=True)


def binary_opening(x: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_opening(x, footprint)``: erosion, then dilation."""
    rows = _half_widths(footprint)
    return _apply(_apply(x, rows, erode=True), rows, erode=False)
