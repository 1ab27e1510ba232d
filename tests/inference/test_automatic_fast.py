"""The automatic modes' shortcuts on the torch CPU path: prompts whose masks cannot contain
their point are not upscaled (same masks as computing everything), box prompts are decoded only
in a window around the box (quality kept), grid batches are fixed (results do not depend on
timing)."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import one_thread  # noqa: F401 - a fixture, used below
from napari_edgesam.constants import SKIPPED_LOGIT
from napari_edgesam.datasets import synthetic_nuclei_2d
from napari_edgesam.inference.automatic.boxes import box_windows
from napari_edgesam.inference.automatic.grid import AutomaticConfig, generate_masks
from napari_edgesam.inference.core.predictor import ImageEmbedding

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_thread")


class Plain:
    """The predictor without the decode hints (computes every mask everywhere)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.backend = predictor.backend  # the grid's batch size follows the backend
        self.calls = 0

    def decode_batch(self, embedding, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                     num_multimask_outputs=1, return_logits=False, use_stability_score=False, upscale=True):
        self.calls += 1
        return self.predictor.decode_batch(embedding, point_coords, point_labels, boxes, mask_input,
                                           num_multimask_outputs, return_logits, use_stability_score, upscale)


@pytest.fixture(scope="module")
def nuclei():
    from napari_edgesam.inference.loading.api import load_model

    predictor = load_model("edgesam-nuclei", backend="torch", device="cpu", allow_download=False)
    image, truth = synthetic_nuclei_2d(seed=41, shape=(256, 256), n_nuclei=10)
    return predictor, predictor.encode(image), truth


def test_needed_at_skips_exactly_the_prompts_with_no_mask_there(golden_predictor, make_golden_image):
    emb = golden_predictor.encode(make_golden_image(seed=3, h=200, w=260))
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 200, (12, 1, 2)).astype(np.float32)
    full = golden_predictor.decode_batch(emb, pts, np.ones((12, 1)), num_multimask_outputs=4, upscale=False,
                                         use_stability_score=True)
    # ask each prompt about a pixel where it is positive or (mostly) clearly negative
    at = np.zeros((12, 2), np.int64)
    for i, low in enumerate(full.low_res_logits):
        best = low.max(0)[:50, :65]
        at[i] = np.unravel_index(np.argmax(best) if i % 3 == 0 else np.argmin(best), best.shape)
    hinted = golden_predictor.decode_batch(emb, pts, np.ones((12, 1)), num_multimask_outputs=4, upscale=False,
                                           use_stability_score=True, needed_at=at)
    needed = full.low_res_logits[np.arange(12), :, at[:, 0], at[:, 1]].max(1) > -0.01
    assert needed.any() and not needed.all()
    np.testing.assert_array_equal(hinted.low_res_logits[needed], full.low_res_logits[needed])
    assert (hinted.low_res_logits[~needed] == SKIPPED_LOGIT).all()
    assert (hinted.scores[~needed] == 0).all()


def test_grid_skips_background_points_with_the_same_masks(nuclei):
    predictor, emb, _ = nuclei
    cfg = AutomaticConfig(points_per_side=12)
    skipped = []
    real = predictor.backend.decode

    def spy(*a, **k):
        low, iou = real(*a, **k)
        skipped.extend((low == SKIPPED_LOGIT).all((1, 2, 3)))
        return low, iou

    predictor.backend.decode = spy
    try:
        fast = generate_masks(predictor, emb, cfg)
    finally:
        del predictor.backend.decode
    plain = Plain(predictor)
    slow = generate_masks(plain, emb, cfg)
    assert np.mean(skipped) > 0.5  # most grid points are on background
    assert len(fast) == len(slow) >= 5
    for a, b in zip(fast, slow):
        assert a.box == b.box and np.array_equal(a.mask, b.mask)
    # the CPU path decodes in fixed batches of 64 (not timed): 144 points, fewer after pruning
    assert plain.calls <= -(-144 // 64)


def test_box_windows_contain_every_mask_that_passes_the_box_check():
    """A box whose IoU with the prompt box is >= t lies inside the window (random boxes)."""
    rng = np.random.default_rng(1)
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (500, 700), (731, 1024))
    prompts = np.sort(rng.uniform(0, 500, (300, 2, 2)), axis=1)
    prompts = np.stack([prompts[:, 0, 0], prompts[:, 0, 1], prompts[:, 1, 0] + 2, prompts[:, 1, 1] + 2], 1)
    sy, sx = 731 / 500 / 4, 1024 / 700 / 4  # pixels -> low-res
    for t in (0.5, 0.7):
        win = box_windows(prompts, emb, t)
        e = (1 - t) / t
        checked = 0
        for box, (r0, r1, c0, c1) in zip(prompts, win):
            w, h = box[2] - box[0], box[3] - box[1]
            for _ in range(20):  # boxes around the prompt, kept when their IoU is >= t
                x0, y0 = box[:2] + rng.uniform(-1.1 * e, 0.3, 2) * (w, h)
                x1, y1 = box[2:] + rng.uniform(-0.3, 1.1 * e, 2) * (w, h)
                inter = max(0, min(x1, box[2]) - max(x0, box[0])) * max(0, min(y1, box[3]) - max(y0, box[1]))
                if inter / ((x1 - x0) * (y1 - y0) + w * h - inter) < t:
                    continue
                checked += 1
                assert r0 <= max(y0 * sy, 0) and min(y1 * sy, 183) <= r1
                assert c0 <= max(x0 * sx, 0) and min(x1 * sx, 256) <= c1
        assert checked > 100
    assert box_windows(prompts, emb, 0.0) is None


def test_box_mode_windows_keep_the_quality_of_full_decoding(nuclei):
    """Box prompts decoded only in their windows find the nuclei full decoding finds (a
    synthetic 512 x 512 image; the window can only change masks that reach far beyond their box)."""
    from _helpers import matched_ious
    from napari_edgesam.inference.automatic.boxes import (
        BoxAutomaticConfig,
        generate_masks_from_boxes,
    )
    from napari_edgesam.inference.automatic.grid import masks_to_labels
    from napari_edgesam.inference.loading.model_prior import find_model_prior
    from napari_edgesam.inference.prior import load_prior

    predictor = nuclei[0]
    prior = load_prior(find_model_prior("edgesam-nuclei"), predictor)
    image, truth = synthetic_nuclei_2d(seed=21, shape=(512, 512), n_nuclei=40)
    emb = predictor.encode(image, prior=prior)
    cfg = BoxAutomaticConfig()
    found = []
    for p in (predictor, Plain(predictor)):
        labels = masks_to_labels(generate_masks_from_boxes(p, emb, emb.proposals, cfg), image.shape,
                                 cfg.min_area, cfg.min_visible_fraction)
        found.append(int((matched_ious(truth, labels) >= 0.5).sum()))
    assert found[0] >= found[1] >= 25  # measured 29 and 28 of 40
