"""The stateless core: ``encode(image) -> ImageEmbedding`` (with the prior's proposals) and
``decode(embedding, prompts)``; the official-style ``set_image``/``predict`` are a thin layer
over them, nothing reads or changes the predictor's state, and the click rule runs once per click.
"""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import CountingBackend, ThresholdPrior, one_thread  # noqa: F401
from napari_edgesam.inference.core.predictor import EdgeSamPredictor
from napari_edgesam.inference.core.preprocess import prepare_input, to_rgb_uint8
from napari_edgesam.inference.prior import ProposalSet, compute_proposals, prior_tag

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def image(make_golden_image):
    return make_golden_image(seed=11, h=120, w=160)


@pytest.fixture(scope="module")
def predictor(golden_predictor):
    """The golden model behind an encoder counter (a fresh predictor: no image, no prior)."""
    return EdgeSamPredictor(CountingBackend(golden_predictor.backend), "golden")


@pytest.fixture(scope="module")
def torch_prior(golden_predictor, tmp_path_factory):
    """A (random, deterministic) box head on the golden encoder, loaded from its file."""
    torch = pytest.importorskip("torch")
    from napari_edgesam.inference.prior import load_prior, save_box_head
    from napari_edgesam.model.box_head import BoxHead, BoxHeadConfig, encoder_signature

    torch.manual_seed(0)
    head = BoxHead(BoxHeadConfig(channels=32, score_thresh=0.0, max_detections=40))
    path = save_box_head(head, tmp_path_factory.mktemp("prior") / "golden.prior.pth",
                         {"encoder": "golden", "encoder_signature": encoder_signature(
                             golden_predictor.backend.model.image_encoder)})
    return load_prior(path, golden_predictor)


# -- decode is predict without the state --------------------------------------------------------
def test_decode_equals_predict_after_set_image(predictor, image):
    emb = predictor.encode(image)
    assert not predictor.is_image_set  # encode leaves the predictor alone
    predictor.set_image(image)
    try:
        np.testing.assert_array_equal(predictor.embedding.features, emb.features)
        prompts = [
            {"point_coords": np.float32([[40, 30]]), "point_labels": np.ones(1)},
            {"box": np.float32([20, 10, 90, 70]), "num_multimask_outputs": 1},
            {"point_coords": np.float32([[40, 30], [100, 80]]), "point_labels": np.int64([1, 0]),
             "num_multimask_outputs": 4, "return_logits": True},
        ]
        for kw in prompts:
            got, want = predictor.decode(emb, **kw), predictor.predict(**kw)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
        batch = {"point_coords": np.float32([[[40, 30]], [[100, 80]]]), "point_labels": np.ones((2, 1))}
        got, want = predictor.decode_batch(emb, **batch), predictor.predict_batch(**batch)
        np.testing.assert_array_equal(got.masks, want.masks)
        np.testing.assert_array_equal(got.low_res_logits, want.low_res_logits)
    finally:
        predictor.reset_image()


def test_segment_in_another_embedding_leaves_the_current_one(predictor, image):
    e1 = predictor.encode(image)
    e2 = predictor.encode(np.random.default_rng(0).integers(0, 255, image.shape, np.uint8))  # another image
    props = ProposalSet(np.float32([[20, 10, 90, 70]]), np.float32([0.9]), e1.original_size)
    predictor.set_embedding(e1, props)
    try:
        current = predictor.embedding
        there = predictor.segment(np.float32([[40, 30]]), np.ones(1), embedding=e2)
        here = predictor.segment(np.float32([[40, 30]]), np.ones(1))
        assert predictor.embedding is current and predictor.proposals is props
        np.testing.assert_array_equal(there[0], predictor.segment(np.float32([[40, 30]]), np.ones(1),
                                                                 embedding=e2)[0])
        assert not np.array_equal(there[2], here[2])  # really decoded in the other image
        # segment_click takes the proposals of the embedding it is given, not the current ones
        click = predictor.segment_click((40, 30), embedding=e2)
        np.testing.assert_array_equal(click[0], there[0])  # e2 has no proposals: the point alone
        assert predictor.embedding is current
    finally:
        predictor.reset_image()


# -- encode carries the prior's proposals --------------------------------------------------------
def test_encode_with_a_torch_prior_is_one_pass_with_the_old_paths_proposals(predictor, torch_prior, image):
    before = predictor.backend.encodes
    emb = predictor.encode(image, prior=torch_prior)
    assert predictor.backend.encodes == before  # the prior read the taps of the backend's own pass
    plain = predictor.encode(image)  # no prior of its own: the embedding alone
    assert plain.proposals is None
    # one graph: the same bits as the predictor's embedding on any CPU
    np.testing.assert_array_equal(emb.features, plain.features)
    # the old path: the prior's one pass, mapped to the image's pixels; and its proposals alone
    rgb = to_rgb_uint8(image)
    x, input_size = prepare_input(rgb)
    features, boxes, scores = torch_prior.embed_and_propose(x, input_size)
    old = ProposalSet.from_input_frame(boxes, scores, input_size, rgb.shape[:2])
    np.testing.assert_array_equal(emb.proposals.boxes, old.boxes)
    np.testing.assert_array_equal(emb.proposals.scores, old.scores)
    alone = compute_proposals(torch_prior, image)
    np.testing.assert_array_equal(alone.boxes, old.boxes)
    assert emb.proposals.tag == prior_tag(torch_prior) is not None and 0 < len(emb.proposals) <= 40
    # a predictor carrying the prior does the same by default
    with_prior = EdgeSamPredictor(predictor.backend, "golden")
    with_prior.prior = torch_prior
    again = with_prior.encode(image)
    np.testing.assert_array_equal(again.proposals.boxes, emb.proposals.boxes)
    assert with_prior.encode(image, prior=None).proposals is None


def test_encode_with_a_prior_of_its_own_pass(predictor, image):
    """A prior that does not share the encoder (an ONNX prior): one encoder pass and one prior
    pass, as before."""
    prior = ThresholdPrior()
    before = predictor.backend.encodes
    emb = predictor.encode(image, prior=prior)
    assert predictor.backend.encodes == before + 1 and prior.calls == 1
    alone = compute_proposals(prior, image)
    np.testing.assert_array_equal(emb.proposals.boxes, alone.boxes)
    assert emb.proposals.original_size == emb.original_size and emb.proposals.tag is None


# -- the click rule runs once per click ----------------------------------------------------------
def test_the_session_runs_the_click_rule_once_per_click(predictor, image, monkeypatch):
    import napari_edgesam.inference.core.predictor as predictor_module
    import napari_edgesam.inference.prior.rule as rule
    from napari_edgesam.interactive import session as session_module
    from napari_edgesam.interactive.session import ObjectPrompt, Session

    calls = []
    real = rule.choose_box_for_click

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(rule, "choose_box_for_click", counting)  # what click_box calls
    emb = predictor.encode(image)
    proposals = ProposalSet(np.float32([[20, 10, 90, 70], [0, 0, 160, 120]]), np.float32([0.9, 0.4]), (120, 160))
    click = ObjectPrompt(np.float32([[40, 30]]), np.array([1]))
    result = Session().decode(predictor, emb, "p", [click], proposals=proposals).objects[0]
    assert len(calls) == 1
    np.testing.assert_array_equal(result.prior_box, [20, 10, 90, 70])
    # the same mask as segment_click (which runs the rule once too)
    expected = predictor.segment_click((40, 30), embedding=emb.with_proposals(proposals))
    assert len(calls) == 2
    np.testing.assert_array_equal(result.mask, expected[0])
    assert session_module.click_box is predictor_module.click_box  # one rule for both
    assert not predictor.is_image_set


def test_an_embedding_is_checked_once_and_converted_once(predictor, image, monkeypatch):
    """Repeated clicks on one embedding skip the finite/shape check and the float16 -> float32
    conversion after the first; any other embedding (a damaged one included) is checked."""
    from dataclasses import replace

    import napari_edgesam.inference.core.predictor as core

    checks = []
    real = core._check_embedding
    monkeypatch.setattr(core, "_check_embedding", lambda e, s: (checks.append(e), real(e, s)))
    emb = predictor.encode(image)
    emb16 = emb.astype(np.float16)
    pt, lab = np.float32([[40, 30]]), np.ones(1)
    first = predictor.segment(pt, lab, embedding=emb16)
    again = predictor.segment(pt, lab, embedding=emb16)
    predictor.decode(emb16, pt, lab)
    assert len(checks) == 1
    np.testing.assert_array_equal(first[0], again[0])
    # the float16 features decode as their float32 values would
    as32 = replace(emb16, features=emb16.features.astype(np.float32))
    np.testing.assert_array_equal(predictor.segment(pt, lab, embedding=as32)[2], first[2])
    assert len(checks) == 2
    bad = emb.features.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predictor.segment(pt, lab, embedding=replace(emb, features=bad))
    with pytest.raises(ValueError, match="NaN"):  # and again: a failed check is not remembered
        predictor.decode(replace(emb, features=bad), pt, lab)
