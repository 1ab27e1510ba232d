"""A box prompt whose first mask falls short of the object is decoded again with the box's
centre as a positive point (``segment(box_centre=True)``, the default).

The second decode runs when the box's first mask holds the centre but fills less of the box than
the ellipse inscribed in it, and the box is at least 16 pixels long. On the development sets the
shipped model's box mIoU (default post-processing) went: stardist train crop 0.703 -> 0.719,
synthetic 512 image 0.875 -> 0.895, 3D sample seed 7 0.870 -> 0.896, sized nuclei 0.883 ->
0.923. Without the fill condition the point also grew masks that already filled their box;
without the size condition it grew the masks of tiny objects seen magnified. Objects whose
centre is background (rings, crescents) keep the box-only mask.
"""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import one_thread  # noqa: F401
from napari_edgesam.constants import LOW_RES_SIZE
from napari_edgesam.inference.core.predictor import (
    EdgeSamPredictor,
    ImageEmbedding,
    box_centre_point,
)


def test_centre_point_when_the_first_mask_holds_the_centre_and_falls_short():
    mask = np.zeros((300, 600), bool)
    box = np.float32([100, 50, 200, 150])  # 100 x 100, centre (150, 100)
    mask[60:140, 110:160] = True  # 4000 px: 0.40 of the box, short of its right side
    np.testing.assert_array_equal(box_centre_point(mask, box, None), np.float32([[150, 100]]))
    # the mask does not hold the centre: no point (a ring, a crescent)
    mask[95:105, 145:155] = False
    assert box_centre_point(mask, box, None) is None
    # a mask filling the ellipse inscribed in the box or more is left as it is
    full = np.zeros((300, 600), bool)
    full[50:150, 100:200] = True
    full[50:71, 100:200] = False  # 0.79 of the box
    assert box_centre_point(full, box, None) is None
    full[71, 100:200] = False  # 0.78 < pi / 4
    np.testing.assert_array_equal(box_centre_point(full, box, None), np.float32([[150, 100]]))
    # pixels outside the box do not count towards its fill
    wide = np.zeros((300, 600), bool)
    wide[60:140, 110:160] = True
    wide[:, 200:] = True
    assert box_centre_point(wide, box, None) is not None


def test_no_centre_point_beside_a_positive_point_or_in_a_small_box():
    mask = np.zeros((64, 64), bool)
    mask[12:28, 12:24] = True  # 0.48 of the 20 x 20 box
    box = np.float32([10, 10, 30, 30])
    pts = np.float32([[5, 5], [40, 40]])  # both outside the box
    assert box_centre_point(mask, box, pts, np.float32([0, 1])) is None
    np.testing.assert_array_equal(box_centre_point(mask, box, pts, np.float32([0, 0])), np.float32([[20, 20]]))
    # a negative click inside the box: the user is correcting there, no positive point beside it
    assert box_centre_point(mask, box, np.float32([[20, 20]]), np.float32([0])) is None
    assert box_centre_point(mask, box, np.float32([[12, 29]]), np.float32([0])) is None
    # a box under 16 pixels long (8 px half-side) gets no point: tiny objects seen magnified
    assert box_centre_point(mask, np.float32([10, 10, 25.5, 25.5]), None) is None
    assert box_centre_point(mask, np.float32([10, 10, 26, 26]), None) is not None


class ShapeBackend:
    """A decoder whose mask is a fixed shape (``positive``: low-res ``256 x 256`` bool), grown
    by 2 low-res pixels around every positive point prompt; records every prompt it gets."""

    name = "shape"
    provides_iou_scores = True
    supports_mask_input = False

    def __init__(self, positive: np.ndarray) -> None:
        self.positive = positive
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def encode(self, image):
        return np.zeros((1, 256, 64, 64), np.float32)

    def decode(self, embeddings, point_coords, point_labels, mask_input=None):
        self.calls.append((point_coords.copy(), point_labels.copy()))
        b = point_coords.shape[0]
        low = np.where(self.positive, 4.0, -4.0).astype(np.float32)
        low = np.broadcast_to(low, (b, 4, LOW_RES_SIZE, LOW_RES_SIZE)).copy()
        for i in range(b):
            for (x, y), lab in zip(point_coords[i], point_labels[i], strict=True):
                if lab == 1:
                    r, c = int(y / 4), int(x / 4)
                    low[i, :, max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3] = 4.0
        return low, np.full((b, 4), 0.9, np.float32)


def _disk(r0: float, r1: float = -1.0, centre=(128, 128)) -> np.ndarray:
    yy, xx = np.mgrid[:LOW_RES_SIZE, :LOW_RES_SIZE]
    d = np.hypot(yy - centre[0], xx - centre[1])
    return (d <= r0) & (d > r1)


def test_segment_adds_the_centre_of_a_box_when_its_first_mask_holds_it():
    # a 300 x 600 image in the 512 x 1024 model frame (1024 / 600 frame px per image px); the
    # decoder's disk (low-res centre row 64, column 128, radius 20) is cut short of its right side
    backend = ShapeBackend(_disk(20, centre=(64, 128)) & (np.arange(256)[None, :] < 134))
    p = EdgeSamPredictor(backend, "shape")
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (300, 600), (512, 1024))
    r = 80 * 600 / 1024  # the disk's radius in image pixels
    box = np.float32([300 - r, 150 - r, 300 + r, 150 + r])
    mask, _, _ = p.segment(box=box, embedding=emb)
    assert len(backend.calls) == 2
    coords, labels = backend.calls[1]
    # the centre point first (after the user's points), then the box corners, in the model frame
    np.testing.assert_allclose(coords[0, 0], [512, 256], atol=1e-3)
    np.testing.assert_allclose(coords[0, 1:], [[(300 - r) * 1024 / 600, (150 - r) * 512 / 300],
                                               [(300 + r) * 1024 / 600, (150 + r) * 512 / 300]], atol=1e-3)
    np.testing.assert_array_equal(labels[0], [1, 2, 3])
    assert mask[150, 300] and mask.sum() > 0
    backend.calls.clear()
    p.segment(box=box, embedding=emb, box_centre=False)
    assert len(backend.calls) == 1, "box_centre=False: the box alone, one decode"
    backend.calls.clear()
    p.segment(np.float32([[300, 150]]), np.ones(1, np.float32), box, embedding=emb)
    assert len(backend.calls) == 1, "the user's own positive point already says where the object is"
    backend.calls.clear()
    p.segment(np.float32([[300, 150]]), np.zeros(1, np.float32), box, embedding=emb)
    assert len(backend.calls) == 1, "a negative click inside the box: no positive point beside it"
    backend.calls.clear()
    p.segment(np.float32([[20, 20]]), np.zeros(1, np.float32), box, embedding=emb)
    coords, labels = backend.calls[1]
    np.testing.assert_array_equal(labels[0], [0, 1, 2, 3])
    np.testing.assert_allclose(coords[0, 1], [512, 256], atol=1e-3)


def test_a_ring_keeps_its_box_only_mask():
    backend = ShapeBackend(_disk(30, 15))  # an annulus: the box's centre is background
    p = EdgeSamPredictor(backend, "shape")
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (1024, 1024), (1024, 1024))
    box = np.float32([392, 392, 636, 636])
    mask, _, _ = p.segment(box=box, embedding=emb, fill_holes=False)
    assert len(backend.calls) == 1
    assert not mask[512, 512], "no point forced into the ring's hole"
    alone, _, _ = p.segment(box=box, embedding=emb, fill_holes=False, box_centre=False)
    np.testing.assert_array_equal(mask, alone)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def shipped():
    pytest.importorskip("torch")
    from napari_edgesam.inference.loading.api import load_model

    return load_model("edgesam-nuclei", backend="torch", device="cpu", allow_download=False)


@pytest.mark.usefixtures("one_thread")
def test_the_centre_point_makes_the_shipped_models_box_masks_fit_better(shipped):
    """Large nuclei (radius 48 in a 512 image: 96 px in the 1024 frame) and a 3D sample other
    than the plugin's own; thresholds below the measured values."""
    from napari_edgesam.datasets import synthetic_nuclei_3d, synthetic_nuclei_sized

    sets = [[synthetic_nuclei_sized(seed=5, shape=(512, 512), radius=48)]]
    volume, labels = synthetic_nuclei_3d(seed=7, shape=(24, 192, 192), n_nuclei=20)
    sets.append([(volume[z], labels[z]) for z in (6, 12, 18)])
    for pairs in sets:
        with_centre, alone = [], []
        for image, lab in pairs:
            emb = shipped.encode(image)
            for k in np.unique(lab)[1:]:
                truth = lab == k
                if truth.sum() < 30:
                    continue
                ys, xs = np.nonzero(truth)
                box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                with_centre.append(_iou(shipped.segment(box=box, embedding=emb)[0], truth))
                alone.append(_iou(shipped.segment(box=box, embedding=emb, box_centre=False)[0], truth))
        print(f"{len(alone)} boxes: alone {np.mean(alone):.3f}, with the centre {np.mean(with_centre):.3f}")
        assert np.mean(with_centre) >= np.mean(alone) + 0.01
        assert np.mean(with_centre) >= 0.87


class CentreKnowsBackend(ShapeBackend):
    """Box alone: the left part of a disk (falls short); with a positive point: the whole disk."""

    def __init__(self, disk: np.ndarray) -> None:
        super().__init__(disk & (np.arange(LOW_RES_SIZE)[None, :] < 134))
        self.disk = disk

    def decode(self, embeddings, point_coords, point_labels, mask_input=None):
        low, iou = super().decode(embeddings, point_coords, point_labels, mask_input)
        for i in range(point_coords.shape[0]):
            if (point_labels[i] == 1).any():
                low[i] = np.where(self.disk, 4.0, -4.0)
        return low, iou


@pytest.mark.parametrize("centre", [True, False])
def test_prior_box_mode_decodes_short_masks_again_with_the_centre(centre):
    from napari_edgesam.inference.automatic.boxes import (
        BoxAutomaticConfig,
        generate_masks_from_boxes,
    )
    from napari_edgesam.inference.prior import ProposalSet

    # a 300 x 600 image in the 512 x 1024 model frame; the disk at low-res row 64, column 128
    disk = _disk(20, centre=(64, 128))
    backend = CentreKnowsBackend(disk)
    p = EdgeSamPredictor(backend, "shape")
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (300, 600), (512, 1024))
    yy, xx = np.mgrid[:300, :600]
    r = 80 * 600 / 1024  # the disk's radius in image pixels
    truth = np.hypot(yy + 0.5 - 150, xx + 0.5 - 300) <= r
    box = np.float32([[300 - r, 150 - r, 300 + r, 150 + r]])
    cfg = BoxAutomaticConfig(box_centre=centre, min_area=10)
    masks = generate_masks_from_boxes(p, emb, ProposalSet(box, np.float32([0.9]), (300, 600)), cfg)
    assert len(masks) == 1
    full = np.zeros((300, 600), bool)
    m = masks[0]
    full[m.y0 : m.y0 + m.mask.shape[0], m.x0 : m.x0 + m.mask.shape[1]] = m.mask
    score = _iou(full, truth)
    if centre:
        assert len(backend.calls) == 2 and (backend.calls[1][1][0] == [1, 2, 3]).all()
        np.testing.assert_allclose(backend.calls[1][0][0, 0], [512, 256], atol=1e-3)  # the centre, model frame
        assert score > 0.9
    else:
        assert len(backend.calls) == 1 and score < 0.85


class BoxShortBackend(ShapeBackend):
    """Answers each box (corner labels 2, 3, model frame) with a disk at the box's centre:
    radius 0.3 x the box's side from the box alone (short of the object, holding the centre),
    0.5 x (the inscribed disk) when a positive point comes with it."""

    def __init__(self) -> None:
        super().__init__(np.zeros((LOW_RES_SIZE, LOW_RES_SIZE), bool))

    def decode(self, embeddings, point_coords, point_labels, mask_input=None):
        self.calls.append((point_coords.copy(), point_labels.copy()))
        b = point_coords.shape[0]
        low = np.full((b, 4, LOW_RES_SIZE, LOW_RES_SIZE), -4.0, np.float32)
        yy, xx = np.mgrid[:LOW_RES_SIZE, :LOW_RES_SIZE] * 4.0 + 2.0  # low-res pixel centres, model frame
        for i in range(b):
            (x0, y0), (x1, y1) = point_coords[i][np.isin(point_labels[i], (2, 3))]
            share = 0.5 if (point_labels[i] == 1).any() else 0.3
            inside = np.hypot(yy - (y0 + y1) / 2, xx - (x0 + x1) / 2) <= share * min(x1 - x0, y1 - y0)
            low[i, :, inside] = 4.0
        return low, np.full((b, 4), 0.9, np.float32)


def _inscribed(shape, box) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    return np.hypot(yy - (box[1] + box[3]) / 2, xx - (box[0] + box[2]) / 2) <= (box[2] - box[0]) / 2


def test_autozoom_crops_and_tiles_add_the_centre_in_their_own_frames():
    """A small box that AutoZoom magnifies, and a box in a tile away from the image's origin: the
    second decode's point is the centre of the box as the crop or tile sees it, and the mask
    pasted back is the whole (inscribed) object, not the short first one."""
    from napari_edgesam.inference.core.autozoom import AutoZoom
    from napari_edgesam.inference.embeddings.tiling import TiledImage

    image = np.zeros((1024, 1024), np.uint8)
    box = np.float32([600, 300, 620, 320])  # radius 10 in the 1024 frame: zoomed in (target 32)
    for centre in (True, False):
        backend = BoxShortBackend()
        zoom = AutoZoom(EdgeSamPredictor(backend, "shape"), image, box_centre=centre)
        result = zoom.segment(box=box)
        assert result.window is not None and result.window.scale > 2, "the box was decoded in a magnified crop"
        assert len(backend.calls) == (2 if centre else 1)
        if centre:
            coords, labels = backend.calls[1]
            corners = coords[0, 1:]
            np.testing.assert_allclose(coords[0, 0], corners.mean(0), atol=1e-3)
            np.testing.assert_array_equal(labels[0], [1, 2, 3])
        score = _iou(result.mask, _inscribed(image.shape, box))
        assert score > 0.85 if centre else score < 0.5

    image = np.zeros((512, 512), np.uint8)
    box = np.float32([300, 310, 340, 350])
    for centre in (True, False):
        backend = BoxShortBackend()
        tiled = TiledImage(EdgeSamPredictor(backend, "shape"), image, 256, 64)
        region = tiled.segment(box=box, box_centre=centre)
        mask = np.zeros(image.shape, bool)
        h, w = region.mask.shape
        mask[region.y0 : region.y0 + h, region.x0 : region.x0 + w] = region.mask
        assert len(backend.calls) == (2 if centre else 1)
        if centre:
            coords, _ = backend.calls[1]
            np.testing.assert_allclose(coords[0, 0], coords[0, 1:].mean(0), atol=1e-3)
        score = _iou(mask, _inscribed(image.shape, box))
        assert score > 0.85 if centre else score < 0.5


@pytest.mark.parametrize("autozoom", [False, True])
def test_batch_prompt_mode_follows_its_box_centre_setting(autozoom):
    from napari_edgesam.inference.batch.config import BatchConfig
    from napari_edgesam.inference.batch.io import ImageData
    from napari_edgesam.inference.batch.prompt_csv import CsvObject
    from napari_edgesam.inference.batch.prompts import segment_prompts

    disk = _disk(20)
    truth = np.repeat(np.repeat(disk, 4, 0), 4, 1)  # 1024 x 1024 image: 4 px per low-res px
    ys, xs = np.nonzero(truth)
    obj = CsvObject("nucleus", box=np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]))
    image = ImageData(np.zeros((1024, 1024), np.uint8), False, False)
    scores = {}
    for centre in (True, False):
        backend = CentreKnowsBackend(disk)
        config = BatchConfig(mode="prompts", prompts="p.csv", box_centre=centre, autozoom=autozoom)
        labels = segment_prompts(EdgeSamPredictor(backend, "shape"), image, [obj], config)
        scores[centre] = _iou(labels == 1, truth)
        assert len(backend.calls) == (2 if centre else 1)
    assert scores[True] > 0.95 > 0.85 > scores[False]
