"""Test helpers shared by the automatic-mode, batch and widget tests: oracle predictors whose
answers are known, a stand-in box prior, synthetic instances and instance matching.

The oracles play EdgeSAM on images whose pixel values encode instance ids (the embedding carries
the label image, with the real ``ImageEmbedding`` and 1024/256 frame conventions):

* :class:`LabelOraclePredictor` answers point prompts: the low-res logits of the instance under
  the point, plus three decoys like SAM's multimask output (a soft dilated mask, the whole image,
  noise);
* :class:`BoxOraclePredictor` answers box prompts: crisp logits of the instance that fills most
  of the box, unstable noise when none does; give it a ``prior`` (e.g. :class:`ThresholdPrior`)
  to stand for a model loaded with its granularity prior.
"""

from __future__ import annotations

import hashlib
import textwrap
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_edgesam.constants import IMG_SIZE, LOW_RES_SIZE, token_slice
from napari_edgesam.inference.core.postprocess import stability_score, upscale_logits
from napari_edgesam.inference.core.predictor import OWN_PRIOR, ImageEmbedding, Prediction
from napari_edgesam.inference.core.preprocess import resized_shape, to_rgb_uint8
from napari_edgesam.inference.prior import propose_rgb


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one thread is faster, and far faster on a shared, busy CPU; it also makes
    CPU reductions bit-reproducible (the training resume tests rely on that).
    Use it in a module with ``pytestmark = pytest.mark.usefixtures("one_thread")`` after
    importing it."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _OracleBase:
    """Image state of the oracles: the embedding holds the instance label image. Like the
    predictor, ``decode_batch``/``segment(embedding=)`` never use or change the current image."""

    def __init__(self, seed: int = 0, prior=None) -> None:
        self.backend = SimpleNamespace(name="oracle", supports_mask_input=False, provides_iou_scores=False)
        self.model_name = "oracle"
        self.prior = prior
        self.calls = 0
        self.prompts = 0
        self.embedded = 0
        self._emb = None
        self._rng = np.random.default_rng(seed)
        self._cache: dict = {}

    def encode_rgb(self, rgb: np.ndarray, *, prior=OWN_PRIOR) -> ImageEmbedding:
        """Pixel value v > 0 of channel 0 means "instance of class v"; instances are the
        connected components of each value inside the embedded image (or tile). With a prior
        (the oracle's own by default), the embedding carries its proposals."""
        v = rgb[..., 0].astype(np.int64)
        lab = np.zeros(v.shape, np.int64)
        n = 0
        for val in np.unique(v[v > 0]):
            cc, k = ndimage.label(v == val)
            lab[cc > 0] = cc[cc > 0] + n
            n += k
        self.embedded += 1
        emb = ImageEmbedding(lab[None, None].astype(np.float32), tuple(v.shape), resized_shape(v.shape))
        prior = self.prior if prior is OWN_PRIOR else prior
        return emb if prior is None else emb.with_proposals(propose_rgb(prior, rgb))

    def encode(self, image, *, prior=OWN_PRIOR, **norm) -> ImageEmbedding:
        return self.encode_rgb(to_rgb_uint8(image, **norm), prior=prior)

    def set_image(self, image, **norm):
        self._emb = self.encode(image, **norm)
        return self._emb

    def set_embedding(self, emb, proposals=None):
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

    def predict_batch(self, *args, **kwargs) -> Prediction:
        return self.decode_batch(self.embedding, *args, **kwargs)

    @staticmethod
    def _labels(emb) -> np.ndarray:
        return np.asarray(emb.features[0, 0], np.int64)

    @staticmethod
    def _to_low(mask: np.ndarray, emb) -> np.ndarray:
        ih, iw = emb.input_size
        img = Image.fromarray(mask.astype(np.float32)).resize((iw, ih), Image.BILINEAR)
        frame = np.zeros((IMG_SIZE, IMG_SIZE), np.float32)
        frame[:ih, :iw] = np.clip(np.asarray(img), 0, 1)
        f = IMG_SIZE // LOW_RES_SIZE
        return frame.reshape(LOW_RES_SIZE, f, LOW_RES_SIZE, f).mean((1, 3))


class LabelOraclePredictor(_OracleBase):
    """Point-prompt oracle (see the module docstring)."""

    def _maps(self, emb) -> tuple[np.ndarray, np.ndarray]:
        """Instance labels and background components of ``emb`` (cached)."""
        features = emb.features
        if self._cache.get("features") is not features:  # identity, not id(): ids get reused
            lab = self._labels(emb)
            self._cache = {"features": features, "maps": (lab, ndimage.label(lab == 0)[0])}
        return self._cache["maps"]

    def _object(self, emb, x: float, y: float) -> tuple[tuple, np.ndarray]:
        lab, bg = self._maps(emb)
        r, c = int(y), int(x)
        if lab[r, c] > 0:
            return ("fg", int(lab[r, c])), lab == lab[r, c]
        return ("bg", int(bg[r, c])), bg == bg[r, c]

    def object_mask(self, x: float, y: float, embedding=None) -> np.ndarray:
        return self._object(self.embedding if embedding is None else embedding, x, y)[1]

    def _tokens(self, emb, x: float, y: float) -> np.ndarray:
        key, mask = self._object(emb, x, y)
        store = self._cache.setdefault("tokens", {})
        if key not in store:
            low = self._to_low(mask, emb)
            crisp = 20.0 * (low - 0.5)
            soft = 8.0 * (ndimage.gaussian_filter(ndimage.maximum_filter(low, 5), 3) - 0.5)
            store[key] = (crisp, soft, np.full_like(low, 10.0))
        crisp, soft, whole = store[key]
        noise = self._rng.normal(0, 0.5, crisp.shape).astype(np.float32)
        return np.stack([crisp, soft, whole, noise]).astype(np.float32)

    def decode_batch(self, embedding, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                     num_multimask_outputs=1, return_logits=False, use_stability_score=False,
                     upscale=True) -> Prediction:
        pc = np.asarray(point_coords, np.float32)
        assert pc.ndim == 3 and pc.shape[2] == 2 and np.asarray(point_labels).shape == pc.shape[:2]
        self.calls += 1
        self.prompts += len(pc)
        low = np.stack([self._tokens(embedding, *p[0]) for p in pc])[:, token_slice(num_multimask_outputs)]
        scores = stability_score(low) if use_stability_score else np.full(low.shape[:2], 0.5, np.float32)
        masks = None
        if upscale:
            masks = upscale_logits(low, embedding.input_size, embedding.original_size) > 0
        return Prediction(masks, scores, low)

    def segment(self, point_coords=None, point_labels=None, box=None, mask_input=None, candidate=None, *,
                fill_holes=True, one_piece=True, embedding=None, clip_box=True, box_centre=True):
        emb = self.embedding if embedding is None else embedding
        if box is not None:
            x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        else:
            pts = np.asarray(point_coords).reshape(-1, 2)
            lab = np.asarray(point_labels).reshape(-1)
            x, y = pts[lab == 1][0]
        h, w = emb.original_size
        mask = self.object_mask(min(x, w - 1), min(y, h - 1), emb)
        return mask, 1.0, self._to_low(mask, emb)


class BoxOraclePredictor(_OracleBase):
    """Box-prompt oracle (see the module docstring)."""

    def __init__(self, seed: int = 0, prior=None) -> None:
        super().__init__(seed, prior)
        self.upscaled = False
        self.centre_prompts = 0

    def _answer(self, emb, box) -> np.ndarray:
        lab = self._labels(emb)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        inside = lab[max(y0, 0):y1, max(x0, 0):x1]
        ids, counts = np.unique(inside[inside > 0], return_counts=True)
        if len(ids) and counts.max() >= 0.3 * inside.size:
            return 20.0 * (self._to_low(lab == ids[np.argmax(counts)], emb) - 0.5)
        return self._rng.normal(0, 0.5, (LOW_RES_SIZE, LOW_RES_SIZE)).astype(np.float32)

    def decode_batch(self, embedding, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                     num_multimask_outputs=1, return_logits=False, use_stability_score=False, upscale=True):
        # points come only as the centre of their box (``box_centre``): the answer is the box's
        assert num_multimask_outputs == 1
        b = np.asarray(boxes, np.float32)
        if point_coords is not None:
            centres = (b[:, :2] + b[:, 2:]) / 2
            assert np.allclose(np.asarray(point_coords)[:, 0], centres, atol=1e-3), "a point other than the centre"
            self.centre_prompts += len(b)  # counted apart: calls/prompts are the boxes' own decodes
        assert b.ndim == 2 and b.shape[1] == 4
        h, w = embedding.original_size
        assert (b >= -0.5).all() and (b[:, [0, 2]] <= w + 0.5).all() and (b[:, [1, 3]] <= h + 0.5).all()
        if point_coords is None:
            self.calls += 1
            self.prompts += len(b)
        self.upscaled |= upscale
        low = np.stack([self._answer(embedding, x) for x in b])[:, None]
        return Prediction(None, stability_score(low), low)


class ThresholdPrior:
    """Stands for the box head: boxes of the connected foreground components of the prepared
    input (1024 frame), plus ``extra`` boxes; scores descend from 0.95 to 0.5."""

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


# -- data and scoring -------------------------------------------------------------------------
def synthetic_instances(shape=(512, 512), n=14, rmin=12, rmax=30, seed=3, gap=4):
    """A uint8 image whose disks (``gap`` pixels apart at least) carry distinct values, and
    the true label image."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    truth = np.zeros(shape, np.int32)
    placed = []
    tries = 0
    while len(placed) < n and tries < 5000:
        tries += 1
        r = rng.uniform(rmin, rmax)
        cy, cx = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        if any(np.hypot(cy - py, cx - px) < r + pr + gap for py, px, pr in placed):
            continue
        placed.append((cy, cx, r))
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = len(placed)
    image = np.where(truth > 0, 40 + 7 * truth, 0).astype(np.uint8)
    return image, truth


def truth_boxes(truth: np.ndarray) -> np.ndarray:
    """``N x 4`` (x0, y0, x1, y1) boxes of instances 1..N."""
    return np.asarray([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(truth)],
                      np.float32)


def matched_ious(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Best IoU of each true instance with any predicted label."""
    out = []
    for i in range(1, int(truth.max()) + 1):
        t = truth == i
        cand = np.unique(pred[t])
        best = 0.0
        for c in cand[cand > 0]:
            p = pred == c
            best = max(best, (t & p).sum() / (t | p).sum())
        out.append(best)
    return np.array(out)


def f1_at(truth: np.ndarray, pred: np.ndarray, thresh: float = 0.5) -> float:
    """F1 of one-to-one instance matches with IoU >= ``thresh`` (at that IoU, a match is unique)."""
    n_true = len(np.unique(truth[truth > 0]))
    n_pred = len(np.unique(pred[pred > 0]))
    tp = int((matched_ious(truth, pred) >= thresh).sum()) if n_true else 0
    return 2 * tp / max(n_true + n_pred, 1)


def run_widget(widget, qtbot, timeout: int = 60_000):
    """Start ``widget.run()`` and wait until its worker is done (polls ``widget._worker``: a fast
    worker may emit ``finished`` before a late signal connection)."""
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)
    return worker


class CountingBackend:
    """Wraps a backend: counts encoder calls and remembers their outputs by input (the
    golden and shipped encoders are deterministic, so this only makes repeated tests faster).
    ``model`` is the wrapped torch backend's (a torch prior shares it)."""

    _memo: dict[tuple, np.ndarray] = {}

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = getattr(inner, "model", None)
        self.provides_iou_scores = inner.provides_iou_scores
        self.supports_mask_input = inner.supports_mask_input
        self.encodes = 0
        self._lock = threading.Lock()

    def encode(self, image: np.ndarray) -> np.ndarray:
        with self._lock:
            self.encodes += 1
        key = (id(self.inner), hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest())
        if key not in self._memo:
            self._memo[key] = self.inner.encode(image)
        return self._memo[key].copy()

    def decode(self, *args, **kwargs):
        return self.inner.decode(*args, **kwargs)


#: Python source that makes every later ``import torch`` fail (for torch-free subprocess checks).
BLOCKER = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"import of {name} blocked by the test", name=name)
            return None

    sys.meta_path.insert(0, BlockTorch())
    """
)
