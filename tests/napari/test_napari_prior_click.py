"""The "a click takes the whole object" option of the interactive widget (granularity prior).

Uses the shipped ``edgesam-nuclei`` model with the prior stored beside it, on synthetic nuclei
(512 x 512, the scale the model was trained at). The prior is wrapped to count its calls; the
encoder outputs are remembered by input (the model is deterministic), so the tests pay for
each distinct plane once.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage as ndi

from _helpers import CountingBackend
from napari_edgesam._napari import layers as L
from napari_edgesam._napari import names
from napari_edgesam._napari.interactive_widget import InteractiveWidget
from napari_edgesam._napari.model_panel import ModelPanel
from napari_edgesam._napari.names import WHOLE_OBJECT_TIP
from napari_edgesam.datasets import synthetic_nuclei_2d
from napari_edgesam.inference.core.predictor import EdgeSamPredictor
from napari_edgesam.inference.loading.with_prior import NO_PRIOR_REASON, load_predictor
from napari_edgesam.inference.prior import ProposalSet, compute_proposals
from napari_edgesam.interactive.session import PRIOR_CHOICE, ObjectPrompt, Session

TIMEOUT = 120_000  # ms; the shared CI machine can be slow
SHAPE = (512, 512)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class CountingPrior:
    """Wraps a prior: counts ``embed_and_propose`` / ``propose`` calls, remembers outputs."""

    _memo: dict[tuple, tuple] = {}

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def shares_encoder_with(self, backend) -> bool:
        return self.inner.shares_encoder_with(backend)

    def _run(self, name: str, image: np.ndarray, input_size) -> tuple:
        with self._lock:
            self.calls[name] += 1
        key = (id(self.inner), name, _digest(image), tuple(input_size))
        if key not in self._memo:
            self._memo[key] = getattr(self.inner, name)(image, input_size)
        return tuple(np.copy(a) for a in self._memo[key])

    def embed_and_propose(self, image, input_size):
        return self._run("embed_and_propose", image, input_size)

    def propose(self, image, input_size):
        return self._run("propose", image, input_size)


@pytest.fixture(scope="module")
def nuclei_model():
    """``edgesam-nuclei`` with the prior beside it, loaded as the model panel loads it."""
    predictor, reason = load_predictor("edgesam-nuclei", "torch", "cpu", allow_download=False, jit=False)
    assert reason == "" and predictor.prior is not None
    return predictor


@pytest.fixture()
def predictor(nuclei_model):
    p = EdgeSamPredictor(CountingBackend(nuclei_model.backend), nuclei_model.model_name)
    p.prior = CountingPrior(nuclei_model.prior)
    return p


def _nuclei(seed: int = 3):
    return synthetic_nuclei_2d(seed=seed, shape=SHAPE, n_nuclei=40)


@pytest.fixture()
def make_widget(make_napari_viewer, monkeypatch, qtbot):
    monkeypatch.setattr(ModelPanel, "autoload", lambda self: None)  # no start-up model loading here
    made = []

    def make(image: np.ndarray | None, predictor=None, whole_object: bool = True):
        viewer = make_napari_viewer()
        if image is not None:
            viewer.add_image(image, name="nuclei")
        w = InteractiveWidget(viewer)
        w.default_use_prior = w.controller.use_prior
        w.controller.use_prior = whole_object  # the user's choice (on by default)
        w.controller.autozoom = False  # boxes on the whole plane: answers equal predictor.segment's
        w.controller.embeddings.prefetch_radius = 0  # count only what the user's planes need
        if predictor is not None:
            w.set_predictor(predictor)
        made.append(w)
        return w

    yield make
    for w in made:
        w.controller.close()
        qtbot.waitUntil(lambda w=w: not w.controller._decode.busy and not w.controller.embeddings.busy_embedding,
                        timeout=TIMEOUT)


def wait_ready(qtbot, c, proposals: bool = True) -> None:
    """Until the current plane's embedding (and proposals) are cached and the worker is idle."""
    def ready():
        view = c.current_view()
        return (c.embeddings.lookup(view) is not None and not c.embeddings.busy_embedding
                and (not proposals or c.embeddings.lookup_proposals(view) is not None))

    qtbot.waitUntil(ready, timeout=TIMEOUT)


def do(qtbot, c, action):
    """Run ``action`` and return the preview result it leads to."""
    with qtbot.waitSignal(c.preview_updated, timeout=TIMEOUT) as blocker:
        action()
    return blocker.args[0]


def click(qtbot, c, xy, positive=True):
    points, _ = c.prompt_layers()
    return do(qtbot, c, lambda: L.add_point(points, c.current_plane(), xy, positive))


class decoder_on_cache:  # noqa: N801 - reads like the function it replaces
    """``segment``/``segment_click`` of the predictor on the cached embedding of the plane (with
    the proposals of the prior in use, or none); the predictor's state is not used."""

    def __init__(self, c, predictor, with_proposals: bool = True) -> None:
        view = c.current_view()
        emb = c.embeddings.lookup(view)
        self.predictor = predictor
        self.embedding = emb.with_proposals(c.embeddings.lookup_proposals(view) if with_proposals else None)

    def segment(self, *args, **kwargs):
        return self.predictor.segment(*args, embedding=self.embedding, **kwargs)

    def segment_click(self, *args, **kwargs):
        return self.predictor.segment_click(*args, embedding=self.embedding, **kwargs)


def typical_nucleus(labels: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The nucleus nearest the median size whose centroid lies inside it: its mask and
    centroid (x, y)."""
    areas = np.bincount(labels.ravel())[1:]
    for i in np.argsort(np.abs(areas - np.median(areas)), kind="stable") + 1:
        cy, cx = ndi.center_of_mass(labels == i)
        if labels[int(round(cy)), int(round(cx))] == i:
            return labels == i, (float(cx), float(cy))
    raise AssertionError("no convex nucleus")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def preview_mask(w) -> np.ndarray:
    return np.asarray(w.viewer.layers[names.PREVIEW_LAYER].data) > 0


# -- (a) the option is there only with a prior -----------------------------------------------
def test_checkbox_follows_the_prior(make_widget, golden_predictor, predictor, qtbot):
    w = make_widget(None)
    assert w.default_use_prior, "on by default"
    assert not w.whole_object.isEnabled()  # no model yet
    w.set_predictor(EdgeSamPredictor(golden_predictor.backend, "golden"))
    assert not w.whole_object.isEnabled() and not w.whole_object.isChecked()
    assert w.whole_object.toolTip() == NO_PRIOR_REASON
    assert "napari-edgesam train prior" in w.whole_object.toolTip()
    assert not w.controller.prior_on
    w.set_predictor(predictor)
    assert w.whole_object.isEnabled() and w.whole_object.isChecked()  # available, on by default
    assert w.whole_object.toolTip() == WHOLE_OBJECT_TIP and w.controller.prior_on
    assert w.controller.embeddings.prior is not None
    w.whole_object.setChecked(False)  # the user's choice ...
    assert not w.controller.prior_on
    w.set_predictor(EdgeSamPredictor(golden_predictor.backend, "golden"))
    assert not w.whole_object.isEnabled() and not w.controller.prior_on
    w.set_predictor(predictor)
    assert w.whole_object.isEnabled() and not w.whole_object.isChecked()  # ... is kept


def test_a_broken_prior_file_leaves_a_working_model(golden_checkpoint, tmp_path):
    model = tmp_path / "lab_model.pth"
    shutil.copy(golden_checkpoint, model)
    predictor, reason = load_predictor(str(model), "torch", "cpu", jit=False)
    assert predictor.prior is None and reason == NO_PRIOR_REASON
    (tmp_path / "lab_model.prior.pth").write_bytes(b"not a box head")
    predictor, reason = load_predictor(str(model), "torch", "cpu", jit=False)
    assert predictor.prior is None
    assert "lab_model.prior.pth" in reason and "cannot be used" in reason


class BrokenPrior:
    """A prior whose every call fails (e.g. a head for another encoder)."""

    calls = 0

    def shares_encoder_with(self, backend) -> bool:
        return True

    def embed_and_propose(self, image, input_size):
        BrokenPrior.calls += 1
        raise RuntimeError("box head exploded")

    propose = embed_and_propose


def test_a_failing_prior_is_reported_and_switched_off(make_widget, golden_predictor, monkeypatch, qtbot):
    from napari_edgesam._napari import workers

    shown = []
    monkeypatch.setattr(workers, "show_error", shown.append)
    p = EdgeSamPredictor(CountingBackend(golden_predictor.backend), "golden")
    p.prior = BrokenPrior()
    w = make_widget(_nuclei()[0][:96, :128], p)
    c = w.controller
    wait_ready(qtbot, c, proposals=False)  # embedded all the same
    qtbot.waitUntil(lambda: not w.whole_object.isEnabled(), timeout=TIMEOUT)
    assert "box head exploded" in w.whole_object.toolTip() and not c.prior_on
    assert len(shown) == 1 and "box head exploded" in shown[0]
    result = click(qtbot, c, (60.0, 40.0))  # the plain click
    assert result.objects[0].candidate is not None and BrokenPrior.calls == 1


def test_session_rule_with_known_proposals(golden_predictor):
    """Qt-free: the session applies EdgeSAM's rule to given proposals, and falls back to the
    4 candidates where no proposal holds the click."""
    image = _nuclei()[0][:96, :128]
    emb = golden_predictor.encode(image)
    proposals = ProposalSet(np.float32([[10, 10, 40, 40], [5, 5, 120, 90], [60, 50, 100, 90]]),
                            np.float32([0.9, 0.5, 0.8]), (96, 128))
    p = golden_predictor
    with_props = emb.with_proposals(proposals)
    session = Session()
    inside = ObjectPrompt(np.float32([[20, 20]]), np.array([1]))
    got = session.decode(p, emb, "k", [inside], proposals=proposals).objects[0]
    np.testing.assert_array_equal(got.prior_box, [10, 10, 40, 40])  # best score among those holding it
    np.testing.assert_array_equal(got.mask, p.segment_click((20, 20), embedding=with_props)[0])
    np.testing.assert_array_equal(got.mask, p.segment(np.float32([[20, 20]]), np.ones(1), np.float32([10, 10, 40, 40]),
                                                      embedding=emb)[0])
    whole = got.mask
    for k in range(4):  # prior -> the 4 candidates -> prior
        assert session.cycle_candidate("k") == k
        res = session.decode(p, emb, "k", [inside], proposals=proposals).objects[0]
        assert res.candidate == k and res.prior_box is None
        np.testing.assert_array_equal(res.mask, p.segment(np.float32([[20, 20]]), np.ones(1), candidate=k, embedding=emb)[0])
    assert session.cycle_candidate("k") == PRIOR_CHOICE
    np.testing.assert_array_equal(session.decode(p, emb, "k", [inside], proposals=proposals).objects[0].mask, whole)
    outside = ObjectPrompt(np.float32([[125, 94]]), np.array([1]))
    got = session.decode(p, emb, "o", [outside], proposals=proposals).objects[0]
    plain, _, _ = p.segment(np.float32([[125, 94]]), np.ones(1), embedding=emb)
    assert got.prior_box is None and got.candidate is not None
    np.testing.assert_array_equal(got.mask, plain)
    assert session.cycle_candidate("o") == (got.candidate + 1) % 4  # plain cycling, no prior step


# -- (b) one click: the prior's rule; option off: the plain click ------------------------------
def test_a_click_takes_the_whole_object(make_widget, predictor, qtbot):
    image, labels = _nuclei()
    w = make_widget(image, predictor)
    c = w.controller
    wait_ready(qtbot, c)
    assert predictor.prior.calls == {"embed_and_propose": 1}  # one encoder pass for both
    assert predictor.backend.encodes == 0
    view = c.current_view()
    cached = c.embeddings.lookup_proposals(view)
    fresh = compute_proposals(predictor.prior.inner, image, **view.normalisation)
    np.testing.assert_allclose(cached.boxes, fresh.boxes, atol=1e-3)

    truth, xy = typical_nucleus(labels)
    result = click(qtbot, c, xy)
    expected, score, _ = decoder_on_cache(c, predictor).segment_click(xy)
    np.testing.assert_array_equal(preview_mask(w), expected)
    obj = result.objects[0]
    assert obj.prior_box is not None and obj.candidate is None and obj.score == pytest.approx(score)
    assert "granularity prior" in w.status.text()
    assert iou(preview_mask(w), truth) > 0.5, "the whole nucleus"  # measured 0.59 with the shipped v2 (0.6x with v1.1)

    result = do(qtbot, c, lambda: w.whole_object.setChecked(False))
    plain, _, _ = decoder_on_cache(c, predictor, False).segment(np.float32([xy]), np.ones(1))
    np.testing.assert_array_equal(preview_mask(w), plain)
    assert result.objects[0].prior_box is None and result.objects[0].candidate is not None
    do(qtbot, c, lambda: w.whole_object.setChecked(True))
    np.testing.assert_array_equal(preview_mask(w), expected)


# -- (c) proposals are cached with the embedding, per plane -------------------------------------
def test_proposals_are_reused_per_plane(make_widget, predictor, qtbot):
    stack = np.stack([_nuclei(seed)[0] for seed in (3, 4, 5)])
    w = make_widget(stack, predictor)
    c, viewer, calls = w.controller, w.viewer, predictor.prior.calls
    wait_ready(qtbot, c)
    first = c.embeddings.lookup_proposals(c.current_view())
    z0 = viewer.dims.current_step[0]
    others = [z for z in range(3) if z != z0]
    viewer.dims.set_current_step(0, others[0])
    wait_ready(qtbot, c)
    assert calls == {"embed_and_propose": 2} and predictor.backend.encodes == 0
    viewer.dims.set_current_step(0, z0)  # back: everything from the cache
    qtbot.wait(300)
    wait_ready(qtbot, c)
    assert c.embeddings.lookup_proposals(c.current_view()) is first
    result = click(qtbot, c, (200.0, 200.0))
    assert calls == {"embed_and_propose": 2} and predictor.backend.encodes == 0
    assert result.plane_key == c.current_plane().key

    # a plane embedded while the option was off gets its proposals alone, in a worker
    w.whole_object.setChecked(False)
    viewer.dims.set_current_step(0, others[1])
    wait_ready(qtbot, c, proposals=False)
    assert predictor.backend.encodes == 1 and c.embeddings.lookup_proposals(c.current_view()) is None
    w.whole_object.setChecked(True)
    wait_ready(qtbot, c)
    assert calls == {"embed_and_propose": 2, "propose": 1} and predictor.backend.encodes == 1
    found = c.embeddings.lookup_proposals(c.current_view())
    assert isinstance(found, ProposalSet) and found.original_size == SHAPE and len(found) > 0


# -- (d) refining bypasses the rule; candidates still cycle -------------------------------------
def test_more_prompts_bypass_the_prior_and_candidates_cycle(make_widget, predictor, qtbot):
    image, labels = _nuclei()
    w = make_widget(image, predictor)
    c = w.controller
    wait_ready(qtbot, c)
    truth, (x, y) = typical_nucleus(labels)
    whole = click(qtbot, c, (x, y)).objects[0]
    assert whole.prior_box is not None

    # Shift-M: the 4 plain candidates, then the whole object again
    for k in range(4):
        assert do(qtbot, c, c.cycle_candidate).objects[0].candidate == k
        expected, _, _ = decoder_on_cache(c, predictor).segment(np.float32([[x, y]]), np.ones(1), candidate=k)
        np.testing.assert_array_equal(preview_mask(w), expected)
    res = {}
    res["back"] = do(qtbot, c, lambda: res.setdefault("chosen", c.cycle_candidate()))
    assert res["chosen"] == PRIOR_CHOICE and res["back"].objects[0].prior_box is not None
    np.testing.assert_array_equal(preview_mask(w), whole.mask)

    # a second point refines from the whole object's logits, without the rule
    second = (x + 3.0, y + 2.0)
    refined = click(qtbot, c, second).objects[0]
    expected, _, _ = decoder_on_cache(c, predictor).segment(
        np.float32([[x, y], second]), np.ones(2), mask_input=whole.low_res[None])
    np.testing.assert_array_equal(preview_mask(w), expected)
    assert refined.prior_box is None

    # one negative point alone, and a box, are not single clicks either
    c.clear()
    neg = click(qtbot, c, (x, y), positive=False).objects[0]
    expected, _, _ = decoder_on_cache(c, predictor).segment(np.float32([[x, y]]), np.zeros(1))
    np.testing.assert_array_equal(preview_mask(w), expected)
    assert neg.prior_box is None
    c.clear()
    rows, cols = np.nonzero(truth)
    box = (cols.min() - 2.0, rows.min() - 2.0, cols.max() + 2.0, rows.max() + 2.0)
    _, boxes = c.prompt_layers()
    boxed = do(qtbot, c, lambda: L.add_box(boxes, c.current_plane(), box)).objects[0]
    expected, _, _ = decoder_on_cache(c, predictor).segment(box=np.float32(box))
    np.testing.assert_array_equal(preview_mask(w), expected)
    assert boxed.prior_box is None
    # a point inside the box joins it (token 0), still no rule
    boxed_point = click(qtbot, c, (x, y)).objects[0]
    expected, _, _ = decoder_on_cache(c, predictor).segment(
        np.float32([[x, y]]), np.ones(1), np.float32(box), boxed.low_res[None])
    np.testing.assert_array_equal(preview_mask(w), expected)
    assert boxed_point.prior_box is None
    assert predictor.prior.calls == {"embed_and_propose": 1}


# -- (e) with a disk cache, proposals outlive the session like the embeddings -------------------
def test_proposals_are_kept_on_disk_with_the_embeddings(make_widget, nuclei_model, tmp_path, qtbot):
    image = _nuclei(6)[0]
    sessions = []
    for _ in range(2):  # the second widget is a new session on the same cache folder
        p = EdgeSamPredictor(CountingBackend(nuclei_model.backend), nuclei_model.model_name)
        p.prior = CountingPrior(nuclei_model.prior)
        p.prior.source_path = nuclei_model.prior.source_path  # the file it came from: its identity
        w = make_widget(None, p)
        w.controller.embeddings.set_cache_dir(tmp_path / "cache")
        w.viewer.add_image(image, name="nuclei")
        wait_ready(qtbot, w.controller)
        sessions.append((p, w.controller.embeddings.lookup_proposals(w.controller.current_view())))
    (first, found_first), (second, found_second) = sessions
    assert first.prior.calls == {"embed_and_propose": 1}
    assert second.prior.calls == {} and second.backend.encodes == 0  # all from the disk
    np.testing.assert_array_equal(found_second.boxes, found_first.boxes)
    np.testing.assert_array_equal(found_second.scores, found_first.scores)
    files = list((tmp_path / "cache").glob("*.npz"))  # one file: the embedding with its proposals
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as z:
        np.testing.assert_array_equal(z["proposal_boxes"], found_first.boxes)
        assert str(z["proposal_tag"]) == found_first.tag is not None


def test_proposals_of_another_prior_are_not_served(make_widget, nuclei_model, tmp_path, qtbot):
    """A cached embedding keeps its proposals with the tag of the prior that made them: a session
    with another prior (another file, or the file retrained) takes the embedding from the disk
    but finds its own proposals in a worker, and puts them back."""
    image = _nuclei(7)[0]
    found = []
    for tag in ("prior-A", "prior-B"):
        p = EdgeSamPredictor(CountingBackend(nuclei_model.backend), nuclei_model.model_name)
        p.prior = CountingPrior(nuclei_model.prior)
        p.prior.source_tag = tag  # what load_prior records: the file's identity
        w = make_widget(None, p)
        w.controller.embeddings.set_cache_dir(tmp_path / "cache")
        w.viewer.add_image(image, name="nuclei")
        wait_ready(qtbot, w.controller)
        found.append((p, w.controller, w.controller.embeddings.lookup_proposals(w.controller.current_view())))
    (first, _, a), (second, c, b) = found
    assert first.prior.calls == {"embed_and_propose": 1}
    assert second.backend.encodes == 0 and second.prior.calls == {"propose": 1}  # embedding from disk, own proposals
    assert a.tag == "prior-A" and b.tag == "prior-B"
    np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)  # the same head underneath
    cached = c.embeddings.cache.get(c.embeddings.key(c.current_view()))
    assert cached.proposals is b  # put back: they travel with the embedding from now on


def test_one_click_runs_the_rule_once(make_widget, predictor, qtbot, monkeypatch):
    import napari_edgesam.inference.prior.rule as rule

    calls = []
    real = rule.choose_box_for_click
    monkeypatch.setattr(rule, "choose_box_for_click", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    image, labels = _nuclei()
    w = make_widget(image, predictor)
    c = w.controller
    wait_ready(qtbot, c)
    _, xy = typical_nucleus(labels)
    result = click(qtbot, c, xy)
    assert result.objects[0].prior_box is not None and len(calls) == 1
