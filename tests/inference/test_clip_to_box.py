"""A box prompt's mask ends at the box: ``clip_to_box`` and the ``clip_box`` option of segment
and of 3D propagation.

On crowded nuclei the shipped model's box masks often run out of the box into touching
neighbours (on a train crop of the stardist image, 29 of 73 box masks had IoU < 0.5, most of
them 2-5x the object's area); ending them at the box raised box mIoU on the plugin's 3D sample
0.812 -> 0.844 (315 nucleus slices).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from _helpers import one_thread  # noqa: F401
from napari_edgesam.inference.core.postprocess import (
    BOX_MARGIN_FRACTION,
    BOX_MARGIN_PX,
    clip_to_box,
)


def test_clip_keeps_the_box_widened_by_a_pixel_and_two_percent():
    mask = np.ones((40, 60), bool)
    box = np.float32([10, 5, 30, 20])  # 20 x 15
    out = clip_to_box(mask, box)
    mx = BOX_MARGIN_PX + BOX_MARGIN_FRACTION * 20  # 1.4
    my = BOX_MARGIN_PX + BOX_MARGIN_FRACTION * 15  # 1.3
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    # pixel c covers [c, c + 1): kept when it overlaps [x0 - mx, x1 + mx]
    assert (cols[0], cols[-1]) == (int(np.floor(10 - mx)), int(np.ceil(30 + mx)) - 1) == (8, 31)
    assert (rows[0], rows[-1]) == (int(np.floor(5 - my)), int(np.ceil(20 + my)) - 1) == (3, 21)
    assert out.sum() == (cols[-1] - cols[0] + 1) * (rows[-1] - rows[0] + 1), "a full rectangle"
    assert mask.all(), "the input is not changed"


def test_clip_only_removes_pixels_and_handles_the_image_border():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 70)) > 0.5
    box = np.float32([-3.5, 40.2, 20.7, 55.0])  # reaches past the left and bottom edges
    out = clip_to_box(mask, box)
    assert not (out & ~mask).any()
    np.testing.assert_array_equal(out[38:, :23], mask[38:, :23])
    assert not out[:38].any() and not out[:, 23:].any()
    # a box around the whole image keeps everything; a box outside it keeps nothing
    np.testing.assert_array_equal(clip_to_box(mask, np.float32([0, 0, 69, 49])), mask)
    assert not clip_to_box(mask, np.float32([200, 200, 210, 210])).any()


def test_a_zero_margin_clips_at_the_box_itself():
    mask = np.ones((10, 10), bool)
    out = clip_to_box(mask, np.float32([2, 3, 5, 7]), margin_px=0, margin_fraction=0)
    assert out.sum() == 3 * 4 and out[3:7, 2:5].all()


@pytest.fixture(scope="module")
def shipped():
    pytest.importorskip("torch")
    from napari_edgesam.inference.loading.api import load_model

    return load_model("edgesam-nuclei", backend="torch", device="cpu", allow_download=False)


@pytest.fixture(scope="module")
def sample():
    from napari_edgesam.datasets import synthetic_nuclei_3d

    return synthetic_nuclei_3d(seed=2024, shape=(24, 192, 192), n_nuclei=20)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.usefixtures("one_thread")
def test_segment_ends_box_masks_at_the_box_and_fits_better(shipped, sample):
    image, labels = sample
    clipped_iou, free_iou, cut = [], [], 0
    for z in (8, 12, 16):
        emb = shipped.encode(image[z])
        for k in np.unique(labels[z])[1:]:
            truth = labels[z] == k
            if truth.sum() < 30:
                continue
            ys, xs = np.nonzero(truth)
            box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            raw = shipped.segment(box=box, embedding=emb, clip_box=False, fill_holes=False, one_piece=False)[0]
            clipped = shipped.segment(box=box, embedding=emb, fill_holes=False, one_piece=False)[0]
            np.testing.assert_array_equal(clipped, clip_to_box(raw, box))
            cut += bool((raw & ~clipped).any())
            clipped_iou.append(_iou(shipped.segment(box=box, embedding=emb)[0], truth))
            free_iou.append(_iou(shipped.segment(box=box, embedding=emb, clip_box=False)[0], truth))
    # measured on these 3 slices: 45 nuclei, 19 masks cut, mIoU 0.832 -> 0.863
    assert cut >= 8
    assert np.mean(clipped_iou) >= np.mean(free_iou) + 0.02


@pytest.mark.usefixtures("one_thread")
def test_a_click_ends_at_the_box_the_prior_joins_to_it(shipped, sample):
    """segment_click: the granularity rule's box is joined to the click, and the mask ends at
    it as a box prompt's does (unless ``clip_box=False``)."""
    from napari_edgesam.inference.core.postprocess import keep_prompted_pieces
    from napari_edgesam.inference.prior import ProposalSet

    image, labels = sample
    emb = shipped.encode(image[12])
    truth = labels[12] == np.unique(labels[12])[1]
    ys, xs = np.nonzero(truth)
    cx, cy = float(xs.mean()), float(ys.mean())
    # a proposal that covers the middle 40% of the nucleus only
    rx, ry = 0.2 * (xs.max() - xs.min()), 0.2 * (ys.max() - ys.min())
    small = np.float32([cx - rx, cy - ry, cx + rx, cy + ry])
    with_box = emb.with_proposals(ProposalSet(small[None], np.ones(1, np.float32), emb.original_size))
    pt = np.float32([[cx, cy]])
    one = np.ones(1, np.float32)
    free = shipped.segment(pt, one, small, embedding=emb, clip_box=False, one_piece=False)[0]
    assert (free & ~clip_to_box(free, small)).any(), "the decoder's mask reaches past the proposal"
    np.testing.assert_array_equal(shipped.segment_click(pt[0], embedding=with_box)[0],
                                  keep_prompted_pieces(clip_to_box(free, small), pt, one))
    np.testing.assert_array_equal(shipped.segment_click(pt[0], embedding=with_box, clip_box=False)[0],
                                  keep_prompted_pieces(free, pt, one))


@pytest.mark.usefixtures("one_thread")
def test_prior_box_masks_end_at_their_box_and_more_objects_are_found():
    """Automatic prior-box mode with the shipped model and prior: masks cut at their box
    (``BoxAutomaticConfig.box_margin``, the default) pass the box check where the decoder's
    mask ran into a neighbour; without the cut those objects are dropped."""
    pytest.importorskip("torch")
    from _helpers import f1_at
    from napari_edgesam.datasets import synthetic_nuclei_2d
    from napari_edgesam.inference.automatic.boxes import BoxAutomaticConfig, segment_automatic_boxes
    from napari_edgesam.inference.loading.with_prior import load_predictor

    predictor, why = load_predictor("edgesam-nuclei", backend="torch", device="cpu", allow_download=False)
    assert predictor.prior is not None, why
    image, truth = synthetic_nuclei_2d(seed=7)
    cut = segment_automatic_boxes(predictor, predictor.prior, image, BoxAutomaticConfig())
    free = segment_automatic_boxes(predictor, predictor.prior, image, BoxAutomaticConfig(box_margin=None))
    # measured: F1@0.5 0.889 without the cut, 0.949 with it
    assert f1_at(truth, cut) >= f1_at(truth, free) + 0.03
    assert f1_at(truth, cut) >= 0.9


def test_positive_points_outside_the_box_widen_the_cut():
    mask = np.ones((40, 60), bool)
    box = np.float32([10, 10, 20, 20])
    out = clip_to_box(mask, box, points=np.float32([[45, 15], [15, 30]]))
    cols, rows = np.flatnonzero(out.any(0)), np.flatnonzero(out.any(1))
    assert cols[-1] >= 45 and rows[-1] >= 30, "the clicks' pixels are kept"
    assert cols[0] == 8 and rows[0] == 8  # the box's own sides (1 px + 2% of the grown side)
    np.testing.assert_array_equal(clip_to_box(mask, box, points=np.zeros((0, 2), np.float32)), clip_to_box(mask, box))


def test_a_line_drawn_as_a_box_does_not_cut_across_it():
    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:40] = True
    line = np.float32([15, 20, 45, 20])  # zero height: a line across the object
    out = clip_to_box(mask, line)
    np.testing.assert_array_equal(out[:, 13:48], mask[:, 13:48])  # rows are not cut
    assert not out[:, :13].any() and not out[:, 48:].any()  # columns are


@pytest.mark.usefixtures("one_thread")
def test_a_positive_click_outside_the_box_keeps_its_object(shipped, sample):
    image, labels = sample
    emb = shipped.encode(image[12])
    ids = np.unique(labels[12])[1:]
    a, b = labels[12] == ids[0], labels[12] == ids[1]
    ys, xs = np.nonzero(a)
    box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    yb, xb = np.nonzero(b)
    click = np.float32([[xb.mean(), yb.mean()]])
    assert not clip_to_box(b, box).any() or (b & ~clip_to_box(b, box)).any()
    raw = shipped.segment(click, np.ones(1, np.float32), box, embedding=emb, clip_box=False, one_piece=False)[0]
    cut = shipped.segment(click, np.ones(1, np.float32), box, embedding=emb, one_piece=False)[0]
    np.testing.assert_array_equal(cut, clip_to_box(raw, box, points=click))
    x, y = int(click[0, 0]), int(click[0, 1])
    assert raw[y, x] == cut[y, x]


@pytest.mark.usefixtures("one_thread")
def test_autozoom_and_zoomed_propagation_cut_at_the_box_unless_asked_not_to(shipped, sample):
    from napari_edgesam.inference.core.autozoom import AutoZoom

    image, labels = sample
    zoom = AutoZoom(shipped, image[12], band=1.0)  # every box through a crop
    changed = 0
    for k in np.unique(labels[12])[1:6]:
        truth = labels[12] == k
        ys, xs = np.nonzero(truth)
        box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        free = zoom.segment(box=box, clip_box=False, fill_holes=False, one_piece=False).mask
        cut = zoom.segment(box=box, fill_holes=False, one_piece=False).mask
        assert not (cut & ~free).any()
        assert not (cut & ~clip_to_box(np.ones_like(cut), box)).any(), "nothing outside the widened box"
        changed += bool((free & ~cut).any())
    assert changed >= 1


@pytest.mark.usefixtures("one_thread")
def test_prior_box_masks_are_cut_exactly_where_segment_cuts(shipped):
    """The automatic mode's windowed decoding must not lose pixels inside the widened box (the
    bilinear upscaling pulls the skipped logits half a low-res pixel into the window)."""
    from napari_edgesam.datasets import synthetic_nuclei_2d
    from napari_edgesam.inference.automatic.boxes import (
        BoxAutomaticConfig,
        generate_masks_from_boxes,
    )
    from napari_edgesam.inference.prior import ProposalSet

    image, labels = synthetic_nuclei_2d(seed=5, shape=(1024, 1024), n_nuclei=60, radius=(10, 30))
    emb = shipped.encode(image)
    boxes = np.float32([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels) if s][:20])
    cfg = BoxAutomaticConfig(stability_thresh=0.0, min_box_iou=0.0, nms_thresh=1.0, skip_covered=False,
                             min_area=1, fill_holes=False, hole_area=0, zoom=False, box_margin=0.0)
    cands = generate_masks_from_boxes(shipped, emb, ProposalSet(boxes, np.linspace(1, 0.5, len(boxes)).astype(np.float32),
                                                                emb.original_size), cfg)
    assert len(cands) >= 15
    worst, lost = 1.0, 0
    for c in cands:
        b = boxes[np.argmin([abs((bx[0] + bx[2]) / 2 - c.point[0]) + abs((bx[1] + bx[3]) / 2 - c.point[1]) for bx in boxes])]
        full = np.zeros(emb.original_size, bool)
        full[c.y0 : c.y0 + c.mask.shape[0], c.x0 : c.x0 + c.mask.shape[1]] = c.mask
        free = shipped.segment(box=b, embedding=emb, fill_holes=False, one_piece=False, clip_box=False,
                               box_centre=False)[0]  # the automatic mode decodes boxes alone by default
        ref = clip_to_box(free, b, margin_fraction=0.0)
        assert not (full & ~clip_to_box(np.ones_like(full), b, margin_fraction=0.0)).any()
        worst = min(worst, _iou(full, ref))
        lost = max(lost, int((ref & ~full).sum()))
    # measured: identical masks (19 pixels lost per mask at most when the window had no pad)
    assert worst > 0.97 and lost <= 2


@pytest.mark.usefixtures("one_thread")
def test_tiled_images_cut_at_the_box_unless_asked_not_to(shipped, sample):
    """Batch prompt mode goes through tiles: the cut and its opt-out reach the tile's decode."""
    from napari_edgesam.inference.embeddings.tiling import TiledImage

    image, labels = sample
    plane = image[12]
    tiled = TiledImage(shipped, plane, 96, 32)  # 192 x 192 in 96-px tiles: prompts cross tiles
    differs = 0
    for k in np.unique(labels[12])[1:7]:
        truth = labels[12] == k
        ys, xs = np.nonzero(truth)
        box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        cut = tiled.segment(box=box).full(plane.shape)
        free = tiled.segment(box=box, clip_box=False).full(plane.shape)
        assert not (cut & ~clip_to_box(np.ones_like(cut), box)).any()
        differs += bool((free & ~cut).any())
    assert differs >= 1
