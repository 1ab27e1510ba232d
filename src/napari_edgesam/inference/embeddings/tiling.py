"""Large 2D images as overlapping tiles: a tile grid, lazy per-tile embeddings, prompts that
follow an object across tile borders, and stitching of per-tile label images.

Every tile is embedded at full resolution (no downscaling of the whole image to 1024), and only
when a prompt (or automatic mode) needs it. A pixel belongs to the "core" of the tile whose
centre is nearest (the overlap is split in the middle); objects cut by a tile border are joined
by their overlap with the neighbouring tile.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.postprocess import fill_holes as _fill_holes
from ..core.postprocess import keep_prompted_pieces
from ..core.predictor import ImageEmbedding
from ..core.preprocess import to_rgb_uint8
from ..core.prompts import validate_prompt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tile:
    """One tile: pixels ``[y0:y1, x0:x1]`` of the image; its core is ``[cy0:cy1, cx0:cx1]``."""

    index: int
    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def in_core(self, x: float, y: float) -> bool:
        return self.cx0 <= x < self.cx1 and self.cy0 <= y < self.cy1


def _axis_tiles(length: int, size: int, overlap: int) -> tuple[list[int], list[int]]:
    """Tile starts along one axis and the core boundaries (midpoints of the overlaps)."""
    if length <= size:
        return [0], [0, length]
    stride = size - overlap
    n = -(-(length - overlap) // stride)
    starts = [min(i * stride, length - size) for i in range(n)]
    bounds = [0] + [(starts[i + 1] + starts[i] + size) // 2 for i in range(n - 1)] + [length]
    return starts, bounds


def tile_grid(shape: tuple[int, int], tile_size: int = 1024, overlap: int = 128) -> list[Tile]:
    """Overlapping tiles covering an ``(h, w)`` image, row-major.

    Tiles are ``tile_size`` square (smaller only when the image is); neighbours overlap by at
    least ``overlap`` pixels; the last tile of a row/column is aligned with the image edge.
    """
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"image shape must be positive, got {tuple(shape)}")
    if tile_size < 2 or (max(h, w) > tile_size and not 0 <= overlap <= tile_size // 2):
        raise ValueError(f"need tile_size >= 2 and 0 <= overlap <= tile_size/2; got {tile_size}, {overlap}")
    ys, yb = _axis_tiles(h, tile_size, overlap)
    xs, xb = _axis_tiles(w, tile_size, overlap)
    tiles = []
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            tiles.append(Tile(len(tiles), y0, min(y0 + tile_size, h), x0, min(x0 + tile_size, w),
                              yb[i], yb[i + 1], xb[j], xb[j + 1]))
    return tiles


# -- stitching --------------------------------------------------------------------------------
class UnionFind:
    """Disjoint sets over ids 0..n-1 (the smaller id becomes the root)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], np.int64)


def overlap_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label pairs that overlap in two same-shape label images (0 ignored).

    Returns ``(label_a, label_b, n_overlap, area_a, area_b)`` arrays, areas measured in ``a``
    and ``b`` over the whole arrays.
    """
    a = np.asarray(a).ravel().astype(np.int64)
    b = np.asarray(b).ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        e = np.zeros(0, np.int64)
        return e, e, e, e, e
    key = a[both] * (int(b.max()) + 1) + b[both]
    uniq, n = np.unique(key, return_counts=True)
    la, lb = uniq // (int(b.max()) + 1), uniq % (int(b.max()) + 1)
    area_a = np.bincount(a, minlength=int(a.max()) + 1)[la]
    area_b = np.bincount(b, minlength=int(b.max()) + 1)[lb]
    return la, lb, n, area_a, area_b


def stitch_tiles(
    tiles: Sequence[Tile],
    tile_labels: Sequence[np.ndarray],
    shape: tuple[int, int],
    *,
    iou_threshold: float = 0.5,
    min_area: int = 0,
) -> np.ndarray:
    """Join per-tile label images into one ``H x W`` uint32 label image.

    Each tile writes its core; a tile's object is joined with an object already written by
    earlier tiles when the two overlap with IoU >= ``iou_threshold`` inside this tile's area
    (the overlap zone), so an object cut by a tile border comes out as one label.
    Labels are renumbered 1..N; objects smaller than ``min_area`` are dropped.
    """
    if len(tiles) != len(tile_labels):
        raise ValueError(f"got {len(tiles)} tiles but {len(tile_labels)} label images")
    canvas = np.zeros(shape, np.int64)
    offsets, next_id = [], 1
    for t, lab in zip(tiles, tile_labels, strict=True):
        if lab.shape != t.shape:
            raise ValueError(f"tile {t.index} labels have shape {lab.shape}, expected {t.shape}")
        offsets.append(next_id)
        next_id += int(lab.max()) if lab.size else 0
    uf = UnionFind(next_id)
    for t, lab, off in zip(tiles, tile_labels, offsets, strict=True):
        lab = lab.astype(np.int64)
        glob = np.where(lab > 0, lab + off - 1, 0)
        seen = canvas[t.slices]
        la, lb, n, area_a, area_b = overlap_pairs(seen, glob)
        zone = seen > 0
        if la.size:
            # areas inside the already-written zone only
            area_b = np.bincount(glob[zone].ravel(), minlength=next_id)[lb]
            iou = n / np.maximum(area_a + area_b - n, 1)
            for a, b in zip(la[iou >= iou_threshold], lb[iou >= iou_threshold], strict=True):
                uf.union(int(a), int(b))
        core = (slice(t.cy0 - t.y0, t.cy1 - t.y0), slice(t.cx0 - t.x0, t.cx1 - t.x0))
        canvas[t.cy0 : t.cy1, t.cx0 : t.cx1] = glob[core]
    roots = uf.roots()
    merged = roots[canvas]
    uniq, inv, counts = np.unique(merged.ravel(), return_inverse=True, return_counts=True)
    keep = (uniq > 0) & (counts >= max(min_area, 1))
    lut = np.zeros(len(uniq), np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lut[inv].reshape(shape)


# -- lazy tile embeddings and prompts across tiles --------------------------------------------
@dataclass(frozen=True)
class RegionMask:
    """A mask stored as a crop: ``mask[r, c]`` is pixel ``(y0 + r, x0 + c)`` of the image."""

    y0: int
    x0: int
    mask: np.ndarray
    score: float

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, bool)
        out[self.y0 : self.y0 + self.mask.shape[0], self.x0 : self.x0 + self.mask.shape[1]] = self.mask
        return out


class TiledImage:
    """A large 2D image whose tiles are embedded on demand (bounded LRU cache).

    Args:
        predictor: an :class:`EdgeSamPredictor` (``encode_rgb``, ``segment(..., embedding=)``); its
            state (current image) is neither used nor changed.
        image: ``H x W`` or ``H x W x C``; normalised once for the whole image (so tiles share
            the same contrast) with ``normalisation`` passed to :func:`to_rgb_uint8`.
        tile_size / overlap: see :func:`tile_grid`.
        max_cached: tile embeddings kept (float16).
    """

    def __init__(self, predictor, image: np.ndarray, tile_size: int = 1024, overlap: int = 128,
                 *, max_cached: int = 16, **normalisation) -> None:
        self.predictor = predictor
        self.rgb = to_rgb_uint8(image, **normalisation)
        self.shape = self.rgb.shape[:2]
        self.tiles = tile_grid(self.shape, tile_size, overlap)
        self.max_cached = max(1, int(max_cached))
        self._cache: OrderedDict[int, ImageEmbedding] = OrderedDict()
        self.n_embedded = 0

    def embedding(self, index: int) -> ImageEmbedding:
        """The (cached) embedding of tile ``index``."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        t = self.tiles[index]
        emb = self.predictor.encode_rgb(np.ascontiguousarray(self.rgb[t.slices]), prior=None).astype(np.float16)
        self.n_embedded += 1
        self._cache[index] = emb
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return emb

    def tile_at(self, x: float, y: float) -> Tile:
        """The tile whose core contains pixel (x, y)."""
        for t in self.tiles:
            if t.in_core(x, y):
                return t
        raise ValueError(f"point ({x:g}, {y:g}) lies outside the {self.shape[1]} x {self.shape[0]} image")

    def segment(self, point_coords=None, point_labels=None, box=None, *, max_tiles: int = 9,
                fill_holes: bool = True, one_piece: bool = True, clip_box: bool = True,
                box_centre: bool = True) -> RegionMask:
        """Segment one object from points ``N x 2`` (x, y) and/or a box ``(x0, y0, x1, y1)``.

        The prompts are checked like the predictor's (:func:`validate_prompt`): ValueError for
        points or boxes outside the image, NaN/inf, labels other than 0/1, inverted boxes.

        The prompt runs on the tile containing it (nearest centre); if the mask reaches a tile
        edge inside the image, the neighbouring tile is prompted too (with a point taken from the
        mask in the overlap when none of the prompts lies there) and the parts are joined, up to
        ``max_tiles`` tiles. Interior holes of the joined mask are filled unless ``fill_holes``
        is False; of the joined mask only the piece the prompt points at is kept unless
        ``one_piece`` is False (:func:`~napari_edgesam.inference.core.postprocess.keep_prompted_pieces`).
        ``clip_box`` and ``box_centre`` are the predictor's (``EdgeSamPredictor.segment``), per tile.
        """
        pts, lab, bx = validate_prompt(point_coords, point_labels, box, self.shape)  # never clamped
        h, w = self.shape
        if pts is not None:  # within the accepted half-pixel margin: onto the edge pixels
            pts = np.clip(pts.astype(np.float64), 0, np.nextafter([w, h], 0))
            lab = lab.astype(np.int64)
        if bx is not None:
            bx = np.clip(bx.astype(np.float64), 0, [w, h, w, h])
        if bx is not None:
            cx, cy = (bx[0] + bx[2]) / 2, (bx[1] + bx[3]) / 2
        else:
            positive = pts[lab == 1] if lab is not None and (lab == 1).any() else pts
            cx, cy = positive.mean(0)
        first = self.tile_at(min(max(cx, 0), self.shape[1] - 1), min(max(cy, 0), self.shape[0] - 1))
        full = np.zeros(self.shape, bool)
        score, todo, done = None, [first.index], set()
        while todo and len(done) < max_tiles:
            t = self.tiles[todo.pop(0)]
            done.add(t.index)
            part = self._segment_tile(t, pts, lab, bx, full, fill_holes, clip_box, box_centre)
            if part is None:
                continue
            mask, stab = part
            if full.any():
                cc, _ = ndimage.label(mask)
                touching = np.unique(cc[mask & full[t.slices]])
                mask = np.isin(cc, touching[touching > 0])
            full[t.slices] |= mask
            score = stab if score is None else min(score, stab)
            todo += [n.index for n in self._neighbours_reached(t, mask) if n.index not in done and n.index not in todo]
        rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
        if rows.size == 0:
            return RegionMask(0, 0, np.zeros((0, 0), bool), 0.0 if score is None else score)
        if one_piece:  # on the joined mask: a piece may continue in the next tile
            full = keep_prompted_pieces(full, pts, lab, bx)
            rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
        crop = full[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        if fill_holes:  # also the holes where tiles join
            crop = _fill_holes(crop)
        return RegionMask(int(rows[0]), int(cols[0]), crop.copy(), float(score))

    def _segment_tile(self, t: Tile, pts, lab, bx, so_far: np.ndarray, fill_holes: bool = True,
                      clip_box: bool = True, box_centre: bool = True):
        local_pts = local_lab = local_box = None
        if pts is not None:
            inside = np.array([t.contains(x, y) for x, y in pts])
            if inside.any():
                local_pts = pts[inside] - [t.x0, t.y0]
                local_lab = lab[inside]
        if bx is not None:
            local_box = np.array([max(bx[0], t.x0), max(bx[1], t.y0), min(bx[2], t.x1), min(bx[3], t.y1)]) - [t.x0, t.y0, t.x0, t.y0]
            # the box's part in this tile; a zero-width/height box (accepted by the predictor, as
            # SAM does) keeps its line, not only boxes with an area
            degenerate = bx[2] <= bx[0] or bx[3] <= bx[1]
            if local_box[2] < local_box[0] or local_box[3] < local_box[1] or (
                    not degenerate and (local_box[2] == local_box[0] or local_box[3] == local_box[1])):
                local_box = None
        if so_far.any() and (local_lab is None or not (local_lab == 1).any()) and local_box is None:
            seed = self._seed_point(so_far[t.slices])
            if seed is None:
                return None
            local_pts = np.vstack([seed] + ([] if local_pts is None else [local_pts]))
            local_lab = np.concatenate([[1], [] if local_lab is None else local_lab])
        if local_pts is None and local_box is None:
            return None
        mask, stab, _ = self.predictor.segment(local_pts, local_lab, local_box, fill_holes=fill_holes, clip_box=clip_box,
                                               one_piece=False, embedding=self.embedding(t.index),
                                               box_centre=box_centre)
        return mask, stab

    @staticmethod
    def _seed_point(known: np.ndarray) -> np.ndarray | None:
        """(x, y) of the pixel deepest inside the already-known part of the object."""
        if not known.any():
            return None
        dist = ndimage.distance_transform_edt(np.pad(known, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return np.array([[c + 0.5, r + 0.5]])

    def _neighbours_reached(self, t: Tile, mask: np.ndarray) -> list[Tile]:
        """Tiles across the interior edges of ``t`` that ``mask`` touches."""
        h, w = self.shape
        edges = []
        if t.y0 > 0 and mask[0].any():
            edges.append((mask[0], "y", t.y0 - 1))
        if t.y1 < h and mask[-1].any():
            edges.append((mask[-1], "y", t.y1))
        if t.x0 > 0 and mask[:, 0].any():
            edges.append((mask[:, 0], "x", t.x0 - 1))
        if t.x1 < w and mask[:, -1].any():
            edges.append((mask[:, -1], "x", t.x1))
        found = {}
        for line, axis, outside in edges:
            for k in np.flatnonzero(line)[:: max(1, line.sum() // 8)]:
                x, y = (t.x0 + k, outside) if axis == "y" else (outside, t.y0 + k)
                n = self.tile_at(x + 0.5, y + 0.5)
                found[n.index] = n
        return list(found.values())
