"""Tiling of large images: the grid, stitching across seams, lazy tile embeddings, prompts."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import LabelOraclePredictor, matched_ious
from napari_edgesam.inference.automatic.grid import AutomaticConfig, segment_automatic
from napari_edgesam.inference.embeddings.tiling import TiledImage, stitch_tiles, tile_grid


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


@pytest.mark.parametrize("shape,size,overlap", [((300, 600), 256, 64), ((1000, 1000), 1024, 128), ((257, 1300), 256, 32)])
def test_tile_grid_covers_the_image_and_cores_partition_it(shape, size, overlap):
    tiles = tile_grid(shape, size, overlap)
    cover = np.zeros(shape, int)
    core = np.zeros(shape, int)
    for t in tiles:
        assert t.shape[0] <= size and t.shape[1] <= size
        assert t.y0 <= t.cy0 < t.cy1 <= t.y1 and t.x0 <= t.cx0 < t.cx1 <= t.x1
        cover[t.slices] += 1
        core[t.cy0 : t.cy1, t.cx0 : t.cx1] += 1
    assert cover.min() >= 1 and (core == 1).all()
    if len(tiles) > 1:  # neighbours overlap by at least `overlap`
        xs = sorted({(t.x0, t.x1) for t in tiles})
        assert all(a[1] - b[0] >= overlap for a, b in zip(xs, xs[1:], strict=False))


def test_tile_grid_rejects_bad_sizes():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid((100, 100), 64, 40)


def test_stitch_joins_an_object_cut_by_a_seam():
    shape = (200, 400)
    tiles = tile_grid(shape, 256, 64)  # x tiles [0,256) and [144,400); seam (core boundary) at 200
    assert len(tiles) == 2
    obj = _ellipse(shape, 100, 200, 30, 90)  # crosses both tile edges and the seam
    small = _ellipse(shape, 40, 40, 10, 10)
    per_tile = []
    for t in tiles:
        lab = np.zeros(t.shape, np.int32)
        lab[obj[t.slices]] = 3
        lab[small[t.slices]] = 1
        per_tile.append(lab)
    out = stitch_tiles(tiles, per_tile, shape)
    assert out.max() == 2
    assert len(np.unique(out[obj])) == 1 and (out[obj] > 0).all()
    assert out[obj][0] != out[small][0]


def test_automatic_on_tiles_gives_whole_objects_across_seams():
    shape = (300, 600)
    truth = np.zeros(shape, np.int32)
    specs = [(150, 220, 40, 110), (60, 420, 25, 25), (230, 470, 30, 80), (80, 60, 20, 30)]
    for i, (cy, cx, ry, rx) in enumerate(specs, 1):
        truth[_ellipse(shape, cy, cx, ry, rx)] = i
    image = np.where(truth > 0, 50 + 30 * truth, 0).astype(np.uint8)
    stub = LabelOraclePredictor()
    cfg = AutomaticConfig(points_per_side=16, tile_size=256, tile_overlap=64, max_area_fraction=0.6)
    labels = segment_automatic(stub, image, cfg)
    assert stub.embedded == len(tile_grid(shape, 256, 64)) == 6  # 2 rows x 3 columns
    ious = matched_ious(truth, labels)
    assert (ious > 0.9).all(), ious
    assert int(labels.max()) == len(specs)
    # the long ellipse crosses the seams x = 224 and y = 150 (and tile edges) and is one label
    assert len(np.unique(labels[truth == 1])) == 1


def test_tiled_prompt_embeds_only_needed_tiles_and_follows_the_object():
    shape = (600, 900)
    truth = np.zeros(shape, np.int32)
    truth[_ellipse(shape, 120, 120, 40, 40)] = 1
    truth[_ellipse(shape, 400, 450, 50, 260)] = 2  # spans three tile columns
    image = np.where(truth > 0, 100 + 50 * truth, 0).astype(np.uint8)
    stub = LabelOraclePredictor()
    tiled = TiledImage(stub, image, tile_size=256, overlap=64)
    assert len(tiled.tiles) > 6 and tiled.n_embedded == 0
    small = tiled.segment(np.array([[120.0, 120.0]]), np.array([1]))
    assert tiled.n_embedded == 1
    assert (small.full(shape) == (truth == 1)).all()
    big = tiled.segment(np.array([[450.0, 400.0]]), np.array([1]))
    full = big.full(shape)
    iou = (full & (truth == 2)).sum() / (full | (truth == 2)).sum()
    assert iou > 0.99
    assert tiled.n_embedded < len(tiled.tiles)
    box = tiled.segment(box=np.array([80, 80, 160, 160]))
    assert (box.full(shape) == (truth == 1)).all()
    with pytest.raises(ValueError, match="outside"):
        tiled.tile_at(2000, 10)
