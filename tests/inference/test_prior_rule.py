"""The paper's click rule on constructed proposals, ProposalSet, and the prior's plumbing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from _helpers import one_thread  # noqa: F401
from napari_edgesam.inference.core.predictor import EdgeSamPredictor, ImageEmbedding
from napari_edgesam.inference.prior import ProposalSet, choose_box_for_click, find_prior

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the rule ---------------------------------------------------------------------------------
def test_rule_picks_best_score_among_containing_boxes():
    boxes = np.array([
        [0, 0, 100, 100],    # a big region containing the point (cluster of cells)
        [40, 40, 60, 60],    # the cell under the point
        [200, 200, 220, 220],  # far away, best score, does not contain the point
    ], np.float32)
    scores = np.array([0.5, 0.8, 0.99], np.float32)
    np.testing.assert_array_equal(choose_box_for_click((50, 52), boxes, scores), boxes[1])
    # the big box wins when it scores higher
    np.testing.assert_array_equal(choose_box_for_click((50, 52), boxes, np.float32([0.9, 0.8, 0.99])), boxes[0])


def test_rule_considers_only_the_k_nearest_centres():
    point = (50.0, 50.0)
    # five small boxes centred near the point, then a larger one centred far from it that
    # contains the point and has the best score: not among the 5 nearest -> not chosen
    near = np.array([[50 - r, 50 - r, 50 + r + d, 50 + r] for r, d in [(3, 0), (4, 1), (5, 2), (6, 3), (7, 4)]],
                    np.float32)
    far = np.array([[45, 45, 150, 150]], np.float32)
    boxes = np.concatenate([far, near])
    scores = np.array([0.95, 0.1, 0.2, 0.6, 0.3, 0.4], np.float32)
    np.testing.assert_array_equal(choose_box_for_click(point, boxes, scores), near[2])
    # with k = 6 the far box is in the candidate set and wins
    np.testing.assert_array_equal(choose_box_for_click(point, boxes, scores, k_nearest=6), far[0])
    # k = 1: the nearest centre, whatever its score
    np.testing.assert_array_equal(choose_box_for_click(point, boxes, scores, k_nearest=1), near[0])


def test_rule_borders_ties_and_misses():
    boxes = np.array([[10, 10, 20, 20], [10, 10, 30, 30]], np.float32)
    # on the border counts as inside
    np.testing.assert_array_equal(choose_box_for_click((20, 20), boxes, np.float32([0.9, 0.1])), boxes[0])
    # equal scores: the nearer centre wins (box 0's centre (15, 15) vs box 1's (20, 20))
    np.testing.assert_array_equal(choose_box_for_click((14, 14), boxes, np.float32([0.5, 0.5])), boxes[0])
    np.testing.assert_array_equal(choose_box_for_click((21, 21), boxes, np.float32([0.5, 0.5])), boxes[1])
    assert choose_box_for_click((5, 5), boxes, np.float32([0.9, 0.9])) is None
    assert choose_box_for_click((5, 5), np.zeros((0, 4)), np.zeros(0)) is None


@pytest.mark.parametrize("kwargs, match", [
    ({"k_nearest": 0}, "k_nearest"),
    ({"k_nearest": 2.5}, "k_nearest"),
    ({"point": (1.0, np.nan)}, "point"),
    ({"point": (1.0, 2.0, 3.0)}, "point"),
    ({"scores": np.float32([0.1, 0.2, 0.3])}, "scores"),
    ({"boxes": np.zeros((2, 8), np.float32)}, "K x 4"),
])
def test_rule_rejects_bad_input(kwargs, match):
    args = {"point": (1.0, 1.0), "boxes": np.float32([[0, 0, 4, 4], [0, 0, 2, 2]]), "scores": np.float32([0.5, 0.4])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        choose_box_for_click(**args)


def test_click_box_refuses_proposals_of_another_image():
    # proposals travel with embeddings now: the error names the embedding's image, not "the predictor's"
    from napari_edgesam.inference.prior import click_box

    props = ProposalSet(np.float32([[0, 0, 4, 4]]), np.float32([0.9]), (100, 120))
    np.testing.assert_array_equal(click_box(props, (2, 2), (100, 120)), props.boxes[0])
    with pytest.raises(ValueError, match=r"\(100, 120\) image.*embedding's image is \(50, 60\).*encode"):
        click_box(props, (2, 2), (50, 60))


# -- ProposalSet ------------------------------------------------------------------------------
def test_proposal_set_maps_sorts_and_filters():
    # a 300 x 500 image is resized to 614 x 1024 in the model frame
    boxes = np.float32([[102.4, 61.4, 204.8, 122.8], [0, 0, 1100, 700]])
    props = ProposalSet.from_input_frame(boxes, np.float32([0.2, 0.7]), (614, 1024), (300, 500))
    assert props.original_size == (300, 500) and len(props) == 2
    np.testing.assert_allclose(props.scores, [0.7, 0.2])  # sorted
    np.testing.assert_allclose(props.boxes[0], [0, 0, 500, 300])  # clipped to the image
    np.testing.assert_allclose(props.boxes[1], [50, 30, 100, 60], atol=0.05)
    assert len(props.above(0.5)) == 1
    again = ProposalSet.from_dict(props.to_dict())
    np.testing.assert_array_equal(again.boxes, props.boxes)
    assert again.original_size == props.original_size
    empty = ProposalSet(np.zeros((0, 4)), np.zeros(0), (10, 10))
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="K x 4"):
        ProposalSet(np.zeros((2, 4)), np.zeros(3), (10, 10))
    with pytest.raises(ValueError, match="K x 4"):
        ProposalSet(np.zeros((3, 8)), np.zeros(6), (10, 10))
    with pytest.raises(ValueError, match="NaN"):
        ProposalSet(np.float32([[0, 0, np.nan, 1]]), np.float32([0.5]), (10, 10))


# -- segment_click with the embedding's proposals ---------------------------------------------
class RecordingPredictor(EdgeSamPredictor):
    """Records the prompts ``segment`` receives (and the embedding they are for)."""

    def __init__(self):
        super().__init__(SimpleNamespace(name="recording", encode=lambda x: None))
        self.calls = []

    def segment(self, point_coords=None, point_labels=None, box=None, mask_input=None, candidate=None, *,
                fill_holes=True, one_piece=True, embedding=None, clip_box=True):
        self.calls.append((np.asarray(point_coords), np.asarray(point_labels), None if box is None else np.asarray(box),
                           embedding))
        return np.zeros(embedding.original_size, bool), 0.9, np.zeros((256, 256), np.float32)


def test_segment_click_sends_box_and_point_or_point_alone():
    pred = RecordingPredictor()
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (100, 120), (853, 1024))
    props = ProposalSet(np.float32([[10, 10, 40, 30], [0, 0, 120, 100]]), np.float32([0.9, 0.3]), (100, 120))
    mask, stab, low = pred.segment_click((20, 20), embedding=emb.with_proposals(props))
    assert mask.shape == (100, 120) and stab == 0.9 and low.shape == (256, 256)
    coords, labels, box, used = pred.calls[-1]
    np.testing.assert_array_equal(coords, [[20, 20]])
    np.testing.assert_array_equal(labels, [1])
    np.testing.assert_array_equal(box, [10, 10, 40, 30])
    assert used.proposals is props and not pred.is_image_set  # the predictor's state is not used
    only_small = ProposalSet(props.boxes[:1], props.scores[:1], (100, 120))
    pred.segment_click((80, 80), embedding=emb.with_proposals(only_small))
    assert pred.calls[-1][2] is None  # no proposal contains the point: the point goes alone
    pred.segment_click((80, 80), embedding=emb)
    assert pred.calls[-1][2] is None  # no proposals at all: the point alone
    with pytest.raises(ValueError, match=r"\(50, 50\) image but the embedding.s image is \(100, 120\)"):
        pred.segment_click((20, 20), embedding=emb.with_proposals(ProposalSet(props.boxes, props.scores, (50, 50))))
    with pytest.raises(TypeError, match="ProposalSet"):
        pred.segment_click((20, 20), embedding=emb.with_proposals((props.boxes, props.scores)))


def test_find_prior_beside_model(tmp_path):
    assert find_prior(tmp_path / "m.pth") is None
    (tmp_path / "m.prior.pth").write_bytes(b"x")
    assert find_prior(tmp_path / "m.pth") == tmp_path / "m.prior.pth"
    assert find_prior(tmp_path / "m_encoder.onnx") == tmp_path / "m.prior.pth"
    (tmp_path / "m.prior.onnx").write_bytes(b"x")
    assert find_prior(tmp_path / "m_encoder.onnx") == tmp_path / "m.prior.onnx"


def test_int8_prior_beside_an_int8_encoder_only_with_a_passed_gate(tmp_path):
    """``x.prior_int8.onnx`` (encoder + head in one int8 graph) is found beside the int8 encoder
    only while its gate record says passed; the float32 encoder keeps the float32 prior; the
    embedding output is used only for the predictor of the twin int8 encoder file."""
    import json
    from types import SimpleNamespace

    from napari_edgesam.inference.prior.files import _is_int8_twin

    for name in ("m.prior.onnx", "m.prior_int8.onnx"):
        (tmp_path / name).write_bytes(b"x")
    int8, fp32 = tmp_path / "m_encoder_int8.onnx", tmp_path / "m_encoder.onnx"
    assert find_prior(int8) == tmp_path / "m.prior.onnx"  # no gate record
    gate = tmp_path / "m.prior_int8.gate.json"
    gate.write_text(json.dumps({"passed": False, "mean_iou": 0.9}))
    assert find_prior(int8) == tmp_path / "m.prior.onnx"
    gate.write_text("{not json")
    assert find_prior(int8) == tmp_path / "m.prior.onnx"
    gate.write_text(json.dumps({"passed": True, "mean_iou": 0.98}))
    assert find_prior(int8) == tmp_path / "m.prior_int8.onnx"
    assert find_prior(fp32) == tmp_path / "m.prior.onnx"
    prior = tmp_path / "m.prior_int8.onnx"
    assert _is_int8_twin(prior, SimpleNamespace(source_path=int8))
    assert not _is_int8_twin(prior, SimpleNamespace(source_path=fp32))
    assert not _is_int8_twin(prior, SimpleNamespace(source_path=None))
    assert not _is_int8_twin(tmp_path / "m.prior.onnx", SimpleNamespace(source_path=int8))


# -- with the golden model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_prior(golden_predictor, tmp_path_factory):
    torch = pytest.importorskip("torch")
    from napari_edgesam.inference.prior import load_prior, save_box_head
    from napari_edgesam.model.box_head import BoxHead, BoxHeadConfig, encoder_signature

    torch.manual_seed(0)
    head = BoxHead(BoxHeadConfig(channels=32, score_thresh=0.0, max_detections=40))
    enc = golden_predictor.backend.model.image_encoder
    path = save_box_head(head, tmp_path_factory.mktemp("prior") / "golden.prior.pth",
                         {"encoder": "golden", "encoder_signature": encoder_signature(enc)})
    return load_prior(path, golden_predictor), path


def test_one_pass_embedding_equals_the_predictors(golden_predictor, torch_prior, make_golden_image):
    prior, _ = torch_prior
    image = make_golden_image(seed=3, h=300, w=500)
    emb = golden_predictor.encode(image, prior=prior)
    props = emb.proposals
    ref = golden_predictor.encode(image)  # the golden predictor has no prior of its own
    assert ref.proposals is None
    assert emb.original_size == ref.original_size and emb.input_size == ref.input_size
    # one graph: the prior reads the taps of the backend's own encoder pass, so the embedding
    # is the same bits as the predictor's on any CPU (no kernel-choice tolerance needed)
    np.testing.assert_array_equal(emb.features, ref.features)
    assert props.original_size == ref.original_size and 0 < len(props) <= 40
    h, w = ref.original_size
    assert props.boxes.min() >= 0 and props.boxes[:, 2].max() <= w and props.boxes[:, 3].max() <= h
    # the click rule on the golden model: the prompt with a box decodes (token 0)
    x, y = (props.boxes[0, :2] + props.boxes[0, 2:]) / 2
    mask, stab, low = golden_predictor.segment_click((x, y), embedding=emb)
    assert mask.shape == (h, w) and low.shape == (256, 256) and 0 <= stab <= 1
    assert not golden_predictor.is_image_set


def test_head_from_another_encoder_is_refused(golden_predictor, tmp_path):
    pytest.importorskip("torch")
    from napari_edgesam.inference.prior import load_prior, save_box_head
    from napari_edgesam.model.box_head import BoxHead

    path = save_box_head(BoxHead(), tmp_path / "other.prior.pth", {"encoder": "other", "encoder_signature": [1.0] * 384})
    with pytest.raises(ValueError, match="another encoder"):
        load_prior(path, golden_predictor)
    assert load_prior(path, golden_predictor, check_encoder=False) is not None
    with pytest.raises(ValueError, match="predictor"):
        load_prior(path)
    onnx_like = SimpleNamespace(backend=SimpleNamespace(name="onnxruntime"))
    with pytest.raises(ValueError, match="torch backend"):
        load_prior(path, onnx_like)
