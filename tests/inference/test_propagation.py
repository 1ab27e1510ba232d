"""3D propagation: the algorithm with a deterministic fake predictor on synthetic volumes
(where the right answer is known), plus one end-to-end smoke run with the golden model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage

from _propagation_fakes import FakePredictor
from napari_edgesam.inference.core.postprocess import upscale_logits
from napari_edgesam.inference.core.predictor import ImageEmbedding
from napari_edgesam.inference.core.preprocess import resized_shape
from napari_edgesam.inference.volume.propagation import (
    STOP_ANNOTATED,
    STOP_CANCELLED,
    STOP_END,
    STOP_LOW_OVERLAP,
    STOP_LOW_STABILITY,
    STOP_MET,
    STOP_VANISHED,
    PropagationResult,
    mask_to_low_res_logits,
    prompt_from_mask,
    propagate_object,
    propagate_objects,
    results_to_labels,
)

H, W = 64, 80


def iou(a, b):
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def ellipsoid(n_slices, centre, radii):
    zz, yy, xx = np.mgrid[0:n_slices, 0:H, 0:W].astype(np.float32)
    (cz, cy, cx), (rz, ry, rx) = centre, radii
    return ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def embeddings_for(n_slices):
    """get_embedding for the fake: the slice index lives in the features; calls are counted."""
    calls = []

    def get(z):
        calls.append(z)
        return ImageEmbedding(np.full((1, 1, 1, 1), z, np.float32), (H, W), resized_shape((H, W)))

    get.calls = calls
    return get


# -- prompt helpers --------------------------------------------------------------------------
def test_mask_to_low_res_logits_round_trips_through_upscaling():
    yy, xx = np.mgrid[0:300, 0:200]
    mask = (yy - 120) ** 2 + (xx - 90) ** 2 < 50**2
    input_size = resized_shape(mask.shape)
    logits = mask_to_low_res_logits(mask, input_size, mask.shape)
    assert logits.shape == (256, 256) and logits.dtype == np.float32
    back = upscale_logits(logits, input_size, mask.shape) > 0
    assert iou(back, mask) > 0.95
    # the padding right of the image (200 px -> 683 of 1024) is background
    assert (logits[:, 180:] < 0).all()
    with pytest.raises(ValueError, match="differs"):
        mask_to_low_res_logits(mask, input_size, (10, 10))


def test_prompt_from_mask_box_and_interior_point():
    mask = np.zeros((H, W), bool)
    mask[10:30, 20:60] = True
    mask[25:30, 55:60] = False
    box, point = prompt_from_mask(mask, box_extension=0.0)
    np.testing.assert_array_equal(box, [20, 10, 59, 29])
    x, y = point[0].astype(int)
    assert mask[y, x]
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    assert dist[y, x] == dist.max()
    ext, _ = prompt_from_mask(mask, box_extension=0.1)
    assert ext[0] < 20 and ext[1] < 10 and ext[2] > 59 and ext[3] > 29
    edge = np.zeros((H, W), bool)
    edge[0:5, 0:5] = True  # touching the border: clipped to the image
    b, _ = prompt_from_mask(edge)
    assert b[0] == 0 and b[1] == 0
    with pytest.raises(ValueError, match="empty"):
        prompt_from_mask(np.zeros((H, W), bool))


# -- the algorithm ---------------------------------------------------------------------------
def test_ellipsoid_from_its_middle_slice():
    n = 24
    truth = ellipsoid(n, (10, 30, 40), (6.5, 20, 25)).astype(np.int32)
    z_true = [z for z in range(n) if truth[z].any()]
    assert z_true == list(range(4, 17))
    fake = FakePredictor(truth)
    get = embeddings_for(n)
    progress = []
    res = propagate_object(fake, get, {10: truth[10] > 0}, n, progress=lambda d, t: progress.append((d, t)))
    assert isinstance(res, PropagationResult)
    assert res.slices == z_true
    for z in z_true:
        assert iou(res.masks[z], truth[z] > 0) > 0.9, z
    assert res.stopped == {"forward": STOP_VANISHED, "backward": STOP_VANISHED}
    assert res.seeded == (10,) and res.scores[10] == 1.0
    assert all(res.scores[z] == pytest.approx(0.95) for z in z_true if z != 10)
    # it stopped just outside the object: slices 3 and 17 were tried, nothing beyond
    # (the seeded slice itself needs no embedding)
    assert sorted(set(get.calls)) == [z for z in range(3, 18) if z != 10]
    assert len(get.calls) == len(set(get.calls))  # each slice embedded once
    # the previous slice's logits went in as mask input
    z, mask_in = fake.mask_inputs[0]
    prev = truth[z - 1 if z > 10 else z + 1] > 0
    assert iou(upscale_logits(mask_in, resized_shape((H, W)), (H, W)) > 0, prev) > 0.9
    assert progress[-1][0] == progress[-1][1] == n - 1


def test_one_direction_and_end_of_stack():
    n = 12
    truth = np.zeros((n, H, W), np.int32)
    truth[:, 20:40, 30:50] = 1  # a column through the whole stack
    fake = FakePredictor(truth)
    res = propagate_object(fake, embeddings_for(n), {4: truth[4] > 0}, n, direction="forward")
    assert res.slices == list(range(4, n))
    assert res.stopped == {"forward": STOP_END}
    res = propagate_object(fake, embeddings_for(n), {0: truth[0] > 0, 11: truth[11] > 0}, n, use_mask_input=False)
    assert res.slices == list(range(n))
    assert res.stopped["backward"] == STOP_END and res.stopped["forward"] == STOP_END
    with pytest.raises(ValueError, match="direction"):
        propagate_object(fake, embeddings_for(n), {4: truth[4] > 0}, n, direction="up")


def test_low_stability_stops():
    n = 20
    truth = np.zeros((n, H, W), np.int32)
    truth[:, 20:40, 30:50] = 1
    fake = FakePredictor(truth, stability=lambda z, label: 0.3 if z >= 14 else 0.9)
    res = propagate_object(fake, embeddings_for(n), {8: truth[8] > 0}, n, min_stability=0.6)
    assert res.slices == list(range(0, 14))
    assert res.stopped == {"forward": STOP_LOW_STABILITY, "backward": STOP_END}


def test_low_overlap_stops():
    n = 16
    yy, xx = np.mgrid[0:H, 0:W]
    truth = np.zeros((n, H, W), np.int32)
    for z in range(n):
        cx = 20 if z < 10 else 33  # the object jumps sideways at slice 10
        truth[z][(yy - 30) ** 2 + (xx - cx) ** 2 <= 64] = 1
    res = propagate_object(FakePredictor(truth), embeddings_for(n), {5: truth[5] > 0}, n, min_overlap=0.2)
    assert res.slices == list(range(0, 10))
    assert res.stopped["forward"] == STOP_LOW_OVERLAP


def test_fill_between_two_seeds():
    n = 24
    truth = ellipsoid(n, (12, 32, 40), (10.5, 22, 30)).astype(np.int32)
    z_true = list(range(2, 23))
    assert [z for z in range(n) if truth[z].any()] == z_true
    seeds = {5: truth[5] > 0, 15: truth[15] > 0}
    seeds[15] = ndimage.binary_erosion(seeds[15], iterations=2)  # a slightly different seed
    fake = FakePredictor(truth)
    res = propagate_object(fake, embeddings_for(n), seeds, n)
    assert res.slices == z_true
    assert res.masks[15] is seeds[15] or np.array_equal(res.masks[15], seeds[15])  # seeds kept as given
    for z in z_true:
        if z not in seeds:
            assert iou(res.masks[z], truth[z] > 0) > 0.9, z
    assert res.stopped == {
        "backward": STOP_VANISHED, "forward": STOP_VANISHED,
        "fill 5->15": STOP_MET, "fill 15->5": STOP_MET,
    }
    # the two fill directions met in the middle: 9 gap slices, slice 10 decoded from both sides
    fill_decodes = [z for z, size in fake.decodes for _ in range(size) if 5 < z < 15]
    assert sorted(fill_decodes) == [6, 7, 8, 9, 10, 10, 11, 12, 13, 14]


def test_fill_takes_the_nearer_seed_and_breaks_ties_by_stability():
    n = 16
    truth = np.zeros((n, H, W), np.int32)
    truth[:, 10:30, 10:30] = 1  # two separate columns, A and B
    truth[:, 35:55, 45:70] = 2
    # the user marked A on slice 2 and B on slice 12; at the tie (slice 7) B is more stable
    fake = FakePredictor(truth, stability=lambda z, label: 0.9 if label == 2 else 0.8)
    res = propagate_object(fake, embeddings_for(n), {2: truth[2] == 1, 12: truth[12] == 2}, n, direction="forward")
    assert res.slices == list(range(2, n))
    for z in range(3, 7):
        assert np.array_equal(res.masks[z], truth[z] == 1), z
    for z in range(7, n):
        assert np.array_equal(res.masks[z], truth[z] == 2), z
    assert res.scores[6] == pytest.approx(0.8) and res.scores[7] == pytest.approx(0.9)


def test_fill_continues_past_the_middle_when_the_other_side_stops():
    n = 14
    truth = np.zeros((n, H, W), np.int32)
    truth[:, 20:40, 30:50] = 1
    # slice 3 is unreliable: the fill from slice 2 stops at once, the one from 12 goes on
    fake = FakePredictor(truth, stability=lambda z, label: 0.2 if z in (3,) else 0.9)
    res = propagate_object(fake, embeddings_for(n), {2: truth[2] > 0, 12: truth[12] > 0}, n, direction="forward")
    assert res.stopped["fill 2->12"] == STOP_LOW_STABILITY
    assert res.stopped["fill 12->2"] == STOP_LOW_STABILITY
    assert res.slices == [2] + list(range(4, n))
    # a one-slice gap: both fill directions decode it and reach the other seed
    res = propagate_object(FakePredictor(truth), embeddings_for(n), {2: truth[2] > 0, 4: truth[4] > 0}, n, direction="backward")
    assert res.stopped == {"backward": STOP_END, "fill 2->4": STOP_ANNOTATED, "fill 4->2": STOP_ANNOTATED}
    assert res.slices == [0, 1, 2, 3, 4]


def test_two_objects_share_each_slice_embedding():
    n = 24
    a = ellipsoid(n, (10, 20, 20), (5.5, 12, 14))
    b = ellipsoid(n, (12, 44, 56), (7.5, 14, 16))
    truth = a.astype(np.int32) + 2 * b.astype(np.int32)
    fake = FakePredictor(truth)
    get = embeddings_for(n)
    seen = []
    results = propagate_objects(
        fake, get, {1: {10: a[10]}, 7: {11: b[11]}}, n, on_result=lambda o, z, m, s: seen.append((o, z))
    )
    assert set(results) == {1, 7}
    for obj, truth_obj in ((1, a), (7, b)):
        z_true = [z for z in range(n) if truth_obj[z].any()]
        assert results[obj].slices == z_true
        assert all(iou(results[obj].masks[z], truth_obj[z]) > 0.9 for z in z_true)
        assert results[obj].stopped == {"forward": STOP_VANISHED, "backward": STOP_VANISHED}
    # each slice's embedding was fetched once and decoded in one call, both objects batched there
    assert len(get.calls) == len(set(get.calls)) == len(fake.decodes)
    assert [z for z, _ in fake.decodes] == get.calls
    assert any(size == 2 for _, size in fake.decodes)
    assert sorted(seen) == sorted((o, z) for o in results for z in results[o].slices if z not in results[o].seeded)
    labels = results_to_labels(results, (n, H, W))
    assert set(np.unique(labels)) == {0, 1, 7}
    assert iou(labels == 1, a) > 0.9 and iou(labels == 7, b) > 0.9


def test_cancel_returns_partial_results():
    n = 24
    truth = ellipsoid(n, (12, 30, 40), (10.5, 20, 25)).astype(np.int32)
    cancel = threading.Event()
    seen = []

    def on_result(z, mask, score):
        seen.append(z)
        if len(seen) == 4:
            cancel.set()

    res = propagate_object(FakePredictor(truth), embeddings_for(n), {12: truth[12] > 0}, n, cancel=cancel, on_result=on_result)
    assert res.stopped == {"forward": STOP_CANCELLED, "backward": STOP_CANCELLED}
    assert sorted(res.slices) == sorted([12, *seen])
    assert 4 <= len(seen) <= 5  # the slice in progress finishes
    assert all(iou(res.masks[z], truth[z] > 0) > 0.9 for z in res.slices)


def test_errors_reach_the_caller():
    n = 6
    truth = np.zeros((n, H, W), np.int32)
    truth[:, 10:20, 10:20] = 1

    class Broken(FakePredictor):
        def decode(self, *args, **kwargs):
            raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        propagate_object(Broken(truth), embeddings_for(n), {2: truth[2] > 0}, n)
    with pytest.raises(ValueError, match="empty"):
        propagate_object(FakePredictor(truth), embeddings_for(n), {2: np.zeros((H, W), bool)}, n)
    with pytest.raises(ValueError, match="seed slice"):
        propagate_object(FakePredictor(truth), embeddings_for(n), {6: truth[0] > 0}, n)
    with pytest.raises(ValueError, match="size"):
        propagate_object(FakePredictor(truth), embeddings_for(n), {2: np.ones((H, W + 1), bool)}, n)


def test_results_to_labels_preserves_or_overwrites():
    z, h, w = 3, 8, 8
    existing = np.zeros((z, h, w), np.uint16)
    existing[1, 0:4, 0:4] = 5  # another object the user drew
    existing[1, 6:8, 6:8] = 2  # object 2's old, outdated outline on slice 1
    m2 = np.zeros((h, w), bool)
    m2[2:6, 2:6] = True
    m3 = np.zeros((h, w), bool)
    m3[3:7, 3:7] = True
    results = {2: PropagationResult(masks={1: m2}), 3: PropagationResult(masks={1: m3, 2: m3})}
    out = results_to_labels(results, (z, h, w), existing)
    assert out.dtype == np.uint16 and existing[1, 6, 6] == 2  # input untouched
    assert (out[1][0:4, 0:4][existing[1, 0:4, 0:4] == 5] == 5).all()  # preserved
    assert out[1, 7, 7] == 0  # object 2 re-segmented on slice 1: its old pixels are gone
    assert (out[1][m2 & ~(existing[1] == 5)] == 2).all()
    assert (out[1][m3 & ~m2] == 3).all() and (out[2][m3] == 3).all()
    over = results_to_labels(results, (z, h, w), existing, overwrite=True)
    assert (over[1][m3] == 3).all()  # later ids win where objects overlap
    assert (over[1][m2 & ~m3] == 2).all() and over[1, 2, 2] == 2  # over object 5
    assert over[1, 0, 0] == 5 and over[1, 7, 7] == 0
    fresh = results_to_labels(results, (z, h, w))
    assert fresh.dtype == np.uint32 and fresh[0].max() == 0
    with pytest.raises(ValueError, match="object id"):
        results_to_labels({0: PropagationResult(masks={0: m2})}, (z, h, w))
    with pytest.raises(ValueError, match="shape"):
        results_to_labels(results, (z, h, w), existing[:2])


# -- the real model, end to end (random weights: plumbing only) -------------------------------
def test_golden_predictor_smoke(golden_predictor, make_golden_image, tmp_path):
    from napari_edgesam.inference.embeddings.cache import EmbeddingCache, data_signature
    from napari_edgesam.inference.embeddings.slices import SliceEmbedder

    stack = np.stack([make_golden_image(seed=s, h=96, w=128)[..., 0] for s in range(3)])
    embedder = SliceEmbedder(golden_predictor, EmbeddingCache(disk_dir=tmp_path))
    sig = data_signature(stack)

    def get(z):
        return embedder.embed(stack[z], embedder.key(sig, (z,)))

    seed = np.zeros(stack.shape[1:], bool)
    seed[30:60, 40:90] = True
    res = propagate_object(golden_predictor, get, {1: seed}, len(stack), min_stability=0, min_overlap=0, min_area=0)
    assert res.masks[1] is seed or np.array_equal(res.masks[1], seed)
    for z, m in res.masks.items():
        assert m.shape == seed.shape and m.dtype == bool
        assert 0.0 <= res.scores[z] <= 1.0
    assert res.stopped == {"forward": STOP_END, "backward": STOP_END}  # no stop criteria
    assert res.slices == [0, 1, 2]
    assert embedder.computed == 2  # slices 0 and 2; the seeded slice needs no embedding
    again = propagate_object(golden_predictor, get, {1: seed}, len(stack), direction="forward")
    assert embedder.computed == 2  # served from the cache
    assert again.seeded == (1,)
