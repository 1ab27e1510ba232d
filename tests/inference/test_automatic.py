"""Automatic mode (point grid): the algorithm on a stub predictor with known instances
(``LabelOraclePredictor``, see ``_helpers``), plumbing on the golden model."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from _helpers import LabelOraclePredictor, matched_ious, synthetic_instances
from napari_edgesam.inference.automatic.grid import (
    AutomaticConfig,
    Cancelled,
    MaskCandidate,
    clean_mask,
    generate_masks,
    masks_to_labels,
    nms,
    point_grid,
    segment_automatic,
    segment_automatic_3d,
    upscale_in_box,
)
from napari_edgesam.inference.core.postprocess import upscale_logits

__all__ = ["LabelOraclePredictor", "matched_ious", "synthetic_instances"]  # older tests import them from here


# -- the algorithm ----------------------------------------------------------------------------
def test_automatic_finds_known_instances_with_batched_calls():
    image, truth = synthetic_instances()
    stub = LabelOraclePredictor()
    cfg = AutomaticConfig(points_per_side=32, points_per_batch=64, skip_covered=False)
    labels = segment_automatic(stub, image, cfg)
    assert labels.shape == truth.shape and labels.dtype == np.uint32
    ious = matched_ious(truth, labels)
    assert (ious > 0.8).mean() >= 0.9, ious
    # decoys (soft dilation, whole image, noise) must all have been filtered out
    assert int(labels.max()) <= truth.max() + 1
    assert np.unique(labels).tolist() == list(range(int(labels.max()) + 1))
    assert stub.prompts == len(point_grid(image.shape, 32))
    assert stub.calls == -(-stub.prompts // 64)
    assert not stub.is_image_set  # predictor state restored


def test_skip_covered_decodes_fewer_points_with_the_same_result():
    image, truth = synthetic_instances(seed=5)
    full, fast = LabelOraclePredictor(), LabelOraclePredictor()
    a = segment_automatic(full, image, AutomaticConfig(skip_covered=False))
    b = segment_automatic(fast, image, AutomaticConfig(skip_covered=True))
    assert fast.prompts < 0.5 * full.prompts
    ia, ib = matched_ious(truth, a), matched_ious(truth, b)
    assert (ib > 0.8).mean() >= (ia > 0.8).mean() - 0.1


def test_region_restricts_the_output_and_finds_objects_inside():
    image, truth = synthetic_instances(seed=8)
    region = (100, 50, 400, 300)
    labels = segment_automatic(LabelOraclePredictor(), image, AutomaticConfig(), region=region)
    outside = np.ones(image.shape, bool)
    outside[50:300, 100:400] = False
    assert not labels[outside].any()
    inside_ids = [i for i in range(1, truth.max() + 1)
                  if ((truth == i) & ~outside).sum() == (truth == i).sum()]
    assert inside_ids
    ious = matched_ious(np.where(np.isin(truth, inside_ids), truth, 0), labels)
    assert (ious[np.array(inside_ids) - 1] > 0.8).all()


def test_3d_per_slice_then_merged():
    z, h, w = 6, 160, 160
    zz, yy, xx = np.mgrid[:z, :h, :w]
    truth = np.zeros((z, h, w), np.int32)
    for i, (cz, cy, cx, r) in enumerate([(2.5, 50, 50, 22), (2.5, 110, 110, 20), (1.0, 40, 120, 15)], 1):
        truth[((zz - cz) * 8) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    vol = np.where(truth > 0, 60 + 20 * truth, 0).astype(np.uint8)
    seen = []
    labels = segment_automatic_3d(LabelOraclePredictor(), vol, AutomaticConfig(points_per_side=16, min_area=10),
                                  progress=lambda d, t: seen.append((d, t)))
    assert labels.shape == truth.shape
    assert seen[-1] == (z, z)
    assert int(labels.max()) == 3
    ious = matched_ious(truth, labels)
    assert (ious > 0.8).all(), ious


def test_progress_and_cancel():
    image, _ = synthetic_instances(seed=1)
    seen = []
    segment_automatic(LabelOraclePredictor(), image, AutomaticConfig(points_per_side=16, skip_covered=False, points_per_batch=32),
                      progress=lambda d, t: seen.append((d, t)))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == seen[-1][1]
    cancel = threading.Event()
    stub = LabelOraclePredictor()

    def stop_after_first(done, total):
        cancel.set()

    with pytest.raises(Cancelled):
        segment_automatic(stub, image, AutomaticConfig(points_per_batch=16), progress=stop_after_first, cancel=cancel)
    assert stub.calls == 1


# -- pieces -----------------------------------------------------------------------------------
def test_point_grid_is_isotropic_and_coarse_first():
    pts = point_grid((100, 200), 8)
    assert pts.shape == (4 * 8, 2)
    assert pts[:, 0].min() > 0 and pts[:, 0].max() < 200 and pts[:, 1].max() < 100
    first = pts[: 2 * 1]  # coarse level: rows 0 (and 4...), cols 0, 4
    assert set(np.round(first[:, 0]).tolist()) == {12.0, 112.0}
    assert len(np.unique(pts, axis=0)) == len(pts)


def _cand(x0, y0, w, h, score, fill=True):
    return MaskCandidate(y0, x0, np.full((h, w), fill), score, score, (x0, y0))


def test_nms_keeps_best_of_overlapping_boxes():
    a, b, c = _cand(0, 0, 10, 10, 0.9), _cand(0, 1, 10, 10, 0.95), _cand(30, 30, 5, 5, 0.5)
    assert nms([a, b, c], 0.7) == [b, c]  # box IoU 90/110
    assert nms([a, b, c], 0.85) == [b, a, c]
    d = _cand(1, 1, 10, 10, 0.99)  # IoU with b 90/110 (dropped), with a 81/119 (kept)
    assert nms([a, b, c, d], 0.7) == [d, a, c]
    assert nms([], 0.5) == []


def test_masks_to_labels_paints_nested_objects_on_top_and_drops_small():
    big, small, tiny = _cand(0, 0, 40, 40, 0.9), _cand(10, 10, 10, 10, 0.9), _cand(60, 60, 2, 2, 0.9)
    labels = masks_to_labels([small, big, tiny], (80, 80), min_area=5)
    assert labels.max() == 2
    assert (labels[10:20, 10:20] == 2).all() and labels[0, 0] == 1 and labels[61, 61] == 0
    hidden = masks_to_labels([big, _cand(0, 0, 40, 39, 0.9)], (80, 80), min_visible_fraction=0.25)
    assert hidden.max() == 1


def test_clean_mask_removes_islands_and_fills_holes():
    m = np.zeros((40, 40), bool)
    m[5:30, 5:30] = True
    m[15:17, 15:17] = False  # hole of 4
    m[35:37, 35:37] = True  # island of 4
    out = clean_mask(m, min_area=10, hole_area=10)
    assert out[15:17, 15:17].all() and not out[35:37, 35:37].any()
    assert out.sum() == 25 * 25
    edge = np.zeros((10, 10), bool)
    edge[:, :5] = True
    assert (clean_mask(edge, 0, 100) == edge).all()  # background touching the border is no hole


def test_chunk_size_fixed_on_gpu_and_probed_on_cpu():
    from napari_edgesam.inference.automatic.grid import ChunkSizer, on_gpu

    def on(device):
        return SimpleNamespace(backend=SimpleNamespace(device=device))

    assert not on_gpu(LabelOraclePredictor()) and not on_gpu(on(SimpleNamespace(type="cpu")))
    assert on_gpu(on(SimpleNamespace(type="cuda"))) and on_gpu(on("cuda:1")) and on_gpu(on("mps"))
    assert ChunkSizer(32).next() == 32
    sizer = ChunkSizer(None, probe=(64, 16, 4))
    for size, seconds in ((64, 6.4), (16, 0.8), (4, 0.3)):  # 0.1, 0.05, 0.075 s per prompt
        assert sizer.next() == size
        sizer.record(size, size, seconds)
    assert sizer.next() == 16
    sizer.record(16, 16, 100.0)  # later chunks do not re-time
    assert sizer.next() == 16
    partial = ChunkSizer(None, probe=(8, 2))
    partial.record(8, 3, 0.1)  # a short last chunk is no measurement
    assert partial.next() == 8


def test_auto_chunking_decodes_every_point_once():
    image, truth = synthetic_instances(seed=9)
    stub = LabelOraclePredictor()
    labels = segment_automatic(stub, image, AutomaticConfig(points_per_side=16, skip_covered=False))
    assert stub.prompts == 256 and stub.calls >= 6  # 3 probes (64 + 16 + 4), then 172 points
    assert (matched_ious(truth, labels) > 0.8).mean() >= 0.9


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="num_multimask_outputs"):
        AutomaticConfig(num_multimask_outputs=2)
    with pytest.raises(ValueError, match="stability_thresh"):
        AutomaticConfig(stability_thresh=1.5)
    with pytest.raises(ValueError, match="region"):
        segment_automatic(LabelOraclePredictor(), np.zeros((50, 50), np.uint8), region=(100, 100, 200, 200))


# -- the real model ---------------------------------------------------------------------------
def test_upscale_in_box_equals_full_upscaling(golden_predictor, make_golden_image):
    img = make_golden_image(h=300, w=450)
    emb = golden_predictor.encode(img)
    pred = golden_predictor.decode_batch(emb, np.array([[[100.0, 80.0]], [[300.0, 200.0]]]), np.ones((2, 1)),
                                         num_multimask_outputs=4, upscale=False)
    full = upscale_logits(pred.low_res_logits, emb.input_size, emb.original_size) > 0
    checked = 0
    for b in range(2):
        for c in range(4):
            got = upscale_in_box(pred.low_res_logits[b, c], emb)
            if got is None:
                assert not full[b, c].any()
                continue
            y0, x0, crop = got
            rebuilt = np.zeros(emb.original_size, bool)
            rebuilt[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
            assert (rebuilt == full[b, c]).all()
            checked += 1
    assert checked > 0


def test_golden_model_plumbing(golden_predictor, make_golden_image):
    img = make_golden_image(h=256, w=320)
    golden_predictor.reset_image()  # a shared fixture: earlier tests may have set an image
    cfg = AutomaticConfig(points_per_side=4, points_per_batch=8, stability_thresh=0.0, min_area=0,
                          hole_area=0, max_area_fraction=1.0, require_point_inside=False, skip_covered=False)
    emb = golden_predictor.encode(img)
    masks = generate_masks(golden_predictor, emb, cfg)
    assert masks and all(m.mask.dtype == bool and m.area > 0 for m in masks)
    assert all(0 <= m.y0 and m.y0 + m.mask.shape[0] <= 256 and m.x0 + m.mask.shape[1] <= 320 for m in masks)
    labels = segment_automatic(golden_predictor, img, cfg, embedding=emb)
    assert labels.shape == (256, 320) and labels.dtype == np.uint32 and labels.max() >= 1
    assert not golden_predictor.is_image_set


# -- the 3D merge -----------------------------------------------------------------------------
def test_merge_slices_links_tapering_objects_and_keeps_neighbours_apart():
    from napari_edgesam.inference.volume.merge3d import merge_slices

    s = np.zeros((4, 40, 40), np.int32)
    s[0, 15:19, 15:19] = 3  # a small cap (IoU with the next slice 16/196 but fully inside it)
    s[1, 10:24, 10:24] = 1
    s[2, 10:24, 10:24] = 2
    s[1, 30:36, 30:36] = 2  # a separate object in slice 1
    s[2, 30:36, 30:36] = 1
    s[3, 30:36, 30:36] = 5
    s[3, 0:5, 0:5] = 1  # appears in one slice only
    out = merge_slices(s)
    assert out.dtype == np.uint32 and out.max() == 3
    assert len({out[0, 16, 16], out[1, 12, 12], out[2, 12, 12]}) == 1
    assert len({out[1, 32, 32], out[2, 32, 32], out[3, 32, 32]}) == 1
    assert out[1, 12, 12] != out[1, 32, 32] != out[3, 1, 1]
    assert merge_slices(s, min_slices=2).max() == 2
    strict = merge_slices(s, iou_threshold=0.5, overlap_threshold=1.0)
    assert strict[0, 16, 16] == strict[1, 12, 12]  # complete containment still links
    with pytest.raises(ValueError, match="iou_threshold"):
        merge_slices(s, iou_threshold=0)


def test_merge_slices_one_to_one_on_a_split():
    from napari_edgesam.inference.volume.merge3d import merge_slices

    s = np.zeros((2, 20, 40), np.int32)
    s[0, 5:15, 5:35] = 1  # one object splits into two halves in the next slice
    s[1, 5:15, 5:19] = 1
    s[1, 5:15, 21:35] = 2
    out = merge_slices(s, iou_threshold=0.3, overlap_threshold=1.0)
    assert out.max() == 2  # the larger-IoU half continues the object, the other is new
    assert out[0, 10, 10] in (out[1, 10, 10], out[1, 10, 30])
