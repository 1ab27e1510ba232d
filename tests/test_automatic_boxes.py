"""Box-prompted automatic mode: the algorithm on stubs with known instances, plumbing on the golden model.

``BoxOraclePredictor`` plays EdgeSAM for box prompts on images whose pixel values encode instance
ids (the embedding carries the label image, with the real 1024/256 frame conventions): a box
returns crisp low-res logits of the instance that fills most of it, and unstable noise when no
instance does. ``ThresholdPrior`` plays the box head: connected components of the prepared
input above background, as boxes in the 1024 frame.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_edgesam.constants import IMG_SIZE, LOW_RES_SIZE
from napari_edgesam.inference.automatic import Cancelled
from napari_edgesam.inference.automatic_boxes import (
    BoxAutomaticConfig,
    generate_masks_from_boxes,
    prompt_boxes,
    segment_automatic_boxes,
)
from napari_edgesam.inference.postprocess import stability_score
from napari_edgesam.inference.predictor import ImageEmbedding, Prediction
from napari_edgesam.inference.preprocess import resized_shape
from napari_edgesam.inference.prior import ProposalSet


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions: one thread is faster, and far faster on a shared, busy CPU."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class BoxOraclePredictor:
    def __init__(self, seed: int = 0) -> None:
        self.backend = SimpleNamespace(name="oracle", supports_mask_input=False, provides_iou_scores=False)
        self.calls = 0
        self.prompts = 0
        self.upscaled = False
        self._emb = None
        self._rng = np.random.default_rng(seed)

    def embed_rgb(self, rgb):
        v = rgb[..., 0].astype(np.int64)
        lab = np.zeros(v.shape, np.int64)
        n = 0
        for val in np.unique(v[v > 0]):
            cc, k = ndimage.label(v == val)
            lab[cc > 0] = cc[cc > 0] + n
            n += k
        return ImageEmbedding(lab[None, None].astype(np.float32), tuple(v.shape), resized_shape(v.shape))

    def set_embedding(self, emb):
        self._emb = emb

    def reset_image(self):
        self._emb = None

    @property
    def is_image_set(self):
        return self._emb is not None

    @property
    def embedding(self):
        if self._emb is None:
            raise RuntimeError("no image is set")
        return self._emb

    def _to_low(self, mask):
        ih, iw = self.embedding.input_size
        img = Image.fromarray(mask.astype(np.float32)).resize((iw, ih), Image.BILINEAR)
        frame = np.zeros((IMG_SIZE, IMG_SIZE), np.float32)
        frame[:ih, :iw] = np.clip(np.asarray(img), 0, 1)
        f = IMG_SIZE // LOW_RES_SIZE
        return frame.reshape(LOW_RES_SIZE, f, LOW_RES_SIZE, f).mean((1, 3))

    def _answer(self, box):
        lab = np.asarray(self.embedding.features[0, 0], np.int64)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        inside = lab[max(y0, 0):y1, max(x0, 0):x1]
        ids, counts = np.unique(inside[inside > 0], return_counts=True)
        if len(ids) and counts.max() >= 0.3 * inside.size:
            return 20.0 * (self._to_low(lab == ids[np.argmax(counts)]) - 0.5)
        return self._rng.normal(0, 0.5, (LOW_RES_SIZE, LOW_RES_SIZE)).astype(np.float32)

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      num_multimask_outputs=1, return_logits=False, use_stability_score=False, upscale=True):
        assert point_coords is None and num_multimask_outputs == 1
        b = np.asarray(boxes, np.float32)
        assert b.ndim == 2 and b.shape[1] == 4
        h, w = self.embedding.original_size
        assert (b >= -0.5).all() and (b[:, [0, 2]] <= w + 0.5).all() and (b[:, [1, 3]] <= h + 0.5).all()
        self.calls += 1
        self.prompts += len(b)
        self.upscaled |= upscale
        low = np.stack([self._answer(x) for x in b])[:, None]
        return Prediction(None, stability_score(low), low)


class ThresholdPrior:
    """Boxes of the connected foreground components of the prepared input (1024 frame)."""

    def __init__(self, extra=()):
        self.extra = list(extra)
        self.calls = 0

    def shares_encoder_with(self, backend):
        return False

    def propose(self, image, input_size):
        self.calls += 1
        fg = image[0, 0] > -1.9  # background pixels (value 0) normalise to -2.12
        lab, n = ndimage.label(fg)
        boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(lab)]
        boxes = np.asarray(boxes + self.extra, np.float32).reshape(-1, 4)
        scores = np.linspace(0.95, 0.5, len(boxes)).astype(np.float32)
        return boxes, scores


def instances(shape=(400, 560), n=12, seed=3):
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    truth = np.zeros(shape, np.int32)
    placed = []
    while len(placed) < n:
        r = rng.uniform(12, 28)
        cy, cx = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        if any(np.hypot(cy - py, cx - px) < r + pr + 6 for py, px, pr in placed):
            continue
        placed.append((cy, cx, r))
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = len(placed)
    return np.where(truth > 0, 40 + 7 * truth, 0).astype(np.uint8), truth


def truth_boxes(truth):
    return np.asarray([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(truth)], np.float32)


def matched_ious(truth, pred):
    out = []
    for i in range(1, int(truth.max()) + 1):
        t = truth == i
        best = 0.0
        for c in np.unique(pred[t]):
            if c:
                p = pred == c
                best = max(best, (t & p).sum() / (t | p).sum())
        out.append(best)
    return np.array(out)


# -- the algorithm ----------------------------------------------------------------------------
def test_boxes_become_instances_with_few_batched_calls():
    image, truth = instances()
    stub = BoxOraclePredictor()
    emb = stub.embed_rgb(np.repeat(image[..., None], 3, -1))
    tb = truth_boxes(truth)
    rng = np.random.default_rng(1)
    dupes = tb[:6] + rng.uniform(-1, 1, (6, 4)).astype(np.float32)    # near-duplicates -> box NMS
    background = np.float32([[2, 2, 10, 10], [530, 360, 555, 395]])   # nothing there -> unstable
    weak = tb[6:9] + 2                                                 # below the score threshold
    boxes = np.concatenate([tb, dupes, background, weak])
    scores = np.concatenate([np.full(len(tb), 0.9), np.full(6, 0.8), np.full(2, 0.7), np.full(3, 0.1)])
    props = ProposalSet(boxes, scores, truth.shape)
    cfg = BoxAutomaticConfig(boxes_per_batch=5)
    decoded, _ = prompt_boxes(props, cfg)
    assert len(decoded) == len(tb) + 2  # duplicates and weak boxes are not decoded
    masks = generate_masks_from_boxes(stub, emb, props, cfg)
    assert stub.prompts == len(decoded) and stub.calls == -(-len(decoded) // 5)
    assert not stub.upscaled and not stub.is_image_set  # previous (no) image restored
    assert len(masks) == len(tb)
    from napari_edgesam.inference.automatic import masks_to_labels

    labels = masks_to_labels(masks, truth.shape)
    ious = matched_ious(truth, labels)
    assert (ious > 0.85).all(), ious
    assert int(labels.max()) == truth.max()


def test_box_agreement_filter_drops_masks_that_overflow_their_box():
    image, truth = instances(n=4, seed=5)
    stub = BoxOraclePredictor()
    emb = stub.embed_rgb(np.repeat(image[..., None], 3, -1))
    tb = truth_boxes(truth)
    # a box covering only the centre part of object 0: the oracle answers the whole object
    x0, y0, x1, y1 = tb[0]
    cx, cy, qw, qh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 5, (y1 - y0) / 5
    inner = np.float32([[cx - qw, cy - qh, cx + qw, cy + qh]])
    props = ProposalSet(inner, np.float32([0.9]), truth.shape)
    assert generate_masks_from_boxes(stub, emb, props, BoxAutomaticConfig(min_box_iou=0.5)) == []
    assert len(generate_masks_from_boxes(stub, emb, props, BoxAutomaticConfig(min_box_iou=0.0))) == 1


def test_segment_automatic_boxes_maps_frames_on_a_non_square_image():
    image, truth = instances(shape=(300, 500), n=10, seed=7)
    stub, prior = BoxOraclePredictor(), ThresholdPrior(extra=[(0, 0, 30, 30)])
    done = []
    labels = segment_automatic_boxes(stub, prior, image, BoxAutomaticConfig(boxes_per_batch=4),
                                     progress=lambda d, t: done.append((d, t)))
    assert labels.shape == truth.shape and labels.dtype == np.uint32
    ious = matched_ious(truth, labels)
    assert (ious > 0.85).all(), ious
    assert np.unique(labels).tolist() == list(range(int(labels.max()) + 1))
    assert prior.calls == 1 and done[-1][0] == done[-1][1] == stub.prompts


def test_region_and_tiles():
    image, truth = instances(shape=(300, 500), n=10, seed=7)
    stub, prior = BoxOraclePredictor(), ThresholdPrior()
    labels = segment_automatic_boxes(stub, prior, image, region=(0, 0, 250, 300))
    assert not labels[:, 250:].any() and labels[:, :250].any()
    big, big_truth = instances(shape=(420, 900), n=16, seed=11)
    tiled = segment_automatic_boxes(BoxOraclePredictor(), ThresholdPrior(), big,
                                    BoxAutomaticConfig(tile_size=512, tile_overlap=96))
    ious = matched_ious(big_truth, tiled)
    assert (ious > 0.8).mean() >= 0.9, ious
    with pytest.raises(ValueError, match="region"):
        segment_automatic_boxes(stub, prior, image, region=(600, 0, 700, 10))


def test_cancel_and_validation():
    image, truth = instances(n=6)
    stub = BoxOraclePredictor()
    emb = stub.embed_rgb(np.repeat(image[..., None], 3, -1))
    props = ProposalSet(truth_boxes(truth), np.full(6, 0.9), truth.shape)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        generate_masks_from_boxes(stub, emb, props, cancel=cancel)
    with pytest.raises(ValueError, match="proposals"):
        generate_masks_from_boxes(stub, emb, ProposalSet(props.boxes, props.scores, (10, 10)))
    for bad in ({"score_thresh": 2.0}, {"boxes_per_batch": 0}, {"min_box_iou": -0.1}, {"tile_overlap": 600}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BoxAutomaticConfig(**bad)


# -- plumbing on the golden model -------------------------------------------------------------
def test_golden_model_box_mode_runs_in_one_encoder_pass(golden_predictor, make_golden_image):
    torch = pytest.importorskip("torch")
    from napari_edgesam.inference.prior import TorchBoxPrior
    from napari_edgesam.model.box_head import BoxHead, BoxHeadConfig

    torch.manual_seed(1)
    head = BoxHead(BoxHeadConfig(channels=16, score_thresh=0.0, max_detections=20))
    prior = TorchBoxPrior.from_backend(golden_predictor.backend, head)
    encodes = []
    original = golden_predictor.backend.encode
    golden_predictor.backend.encode = lambda x: encodes.append(1) or original(x)
    try:
        cfg = BoxAutomaticConfig(score_thresh=0.0, stability_thresh=0.0, min_box_iou=0.0, boxes_per_batch=8)
        labels = segment_automatic_boxes(golden_predictor, prior, make_golden_image(seed=2, h=200, w=260), cfg)
    finally:
        del golden_predictor.backend.encode
    assert encodes == []  # the embedding came from the prior's pass
    assert labels.shape == (200, 260) and labels.dtype == np.uint32
    assert np.unique(labels).tolist() == list(range(int(labels.max()) + 1))
