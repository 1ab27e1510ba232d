"""COCO run-length encoding (the SA-1B mask format) in numpy, without pycocotools.

An RLE is ``{"size": [h, w], "counts": ...}``. The mask is read in column-major (Fortran) order
as alternating runs of 0s and 1s, starting with 0s. ``counts`` is a list of run lengths
(uncompressed) or a string (compressed): each run length, after the first two, is stored as
the difference to the run two places earlier, and each number is written in 5-bit groups,
least significant first, as characters ``chr(48 + group)``; bit 0x20 marks "more groups
follow", and bit 0x10 of the last group is the sign.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def decode_counts(counts: str | bytes) -> list[int]:
    """Compressed COCO counts string -> run lengths."""
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise ValueError(f"truncated RLE counts string {counts[:40]!r}")
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {counts[pos]!r} in RLE counts")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def encode_counts(runs: list[int] | np.ndarray) -> str:
    """Run lengths -> compressed COCO counts string (the inverse of :func:`decode_counts`)."""
    out: list[str] = []
    runs = [int(r) for r in runs]
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = value & 0x1F
            value >>= 5
            more = (value != -1) if (c & 0x10) else (value != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def mask_to_runs(mask: np.ndarray) -> list[int]:
    """``H x W`` bool -> run lengths in column-major order, starting with a (possibly empty) 0-run."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return runs


def encode_rle(mask: np.ndarray) -> dict:
    """``H x W`` bool -> ``{"size": [h, w], "counts": compressed string}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W), got shape {mask.shape}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": encode_counts(mask_to_runs(mask))}


def decode_rle(rle: Mapping) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list counts) -> ``H x W`` bool mask."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise ValueError("an RLE must be a mapping with 'size': [h, w] and 'counts'") from None
    runs = decode_counts(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    runs_arr = np.asarray(runs, dtype=np.int64)
    if (runs_arr < 0).any():
        raise ValueError("RLE has negative run lengths (corrupt counts)")
    total = int(runs_arr.sum())
    if total != h * w:
        raise ValueError(f"RLE runs cover {total} pixels but size {h}x{w} has {h * w}")
    values = (np.arange(len(runs_arr)) % 2).astype(bool)
    flat = np.repeat(values, runs_arr)
    return flat.reshape((w, h)).T.copy()


def rle_area(rle: Mapping) -> int:
    """Number of foreground pixels of an RLE (without decoding the mask)."""
    counts = rle["counts"]
    runs = decode_counts(counts) if isinstance(counts, (str, bytes)) else list(counts)
    return int(sum(runs[1::2]))
