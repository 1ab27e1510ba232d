"""The box head (granularity prior): shapes, exact decoding/NMS, files, encoder signature, ONNX."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _helpers import one_thread  # noqa: F401

torch = pytest.importorskip("torch")

from napari_edgesam.inference.prior import (  # noqa: E402
    load_box_head,
    nms_boxes,
    prior_path_for,
    save_box_head,
    select_proposals,
)
from napari_edgesam.model.box_head import (  # noqa: E402
    BoxHead,
    BoxHeadConfig,
    HeadOutput,
    box_iou,
    decode_dense,
    encoder_signature,
    locations,
    nms,
    select_boxes,
    signatures_match,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def features(batch: int, size: int, seed: int = 0, scale: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "stage1": scale * torch.randn(batch, 96, size // 8, size // 8, generator=g),
        "stage2": scale * torch.randn(batch, 192, size // 16, size // 16, generator=g),
        "stage3": scale * torch.randn(batch, 384, size // 32, size // 32, generator=g),
    }


@pytest.fixture(scope="module")
def head() -> BoxHead:
    torch.manual_seed(0)
    h = BoxHead(BoxHeadConfig(channels=32, groups=8)).eval()
    with torch.no_grad():  # make the outputs less uniform than the initialisation
        for p in h.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return h


# -- shapes -----------------------------------------------------------------------------------
def test_head_output_shapes_and_ranges(head):
    size = 256
    feats = features(2, size)
    with torch.no_grad():
        out = head(feats)
    n = sum((size // s) ** 2 for s in (8, 16, 32))
    assert out.sizes == tuple((size // s, size // s) for s in (8, 16, 32))
    assert out.logits.shape == (2, n) and out.centerness.shape == (2, n)
    assert out.ltrb.shape == (2, n, 4) and bool((out.ltrb > 0).all())
    with torch.no_grad():
        boxes, scores = head.dense_boxes(feats)
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    assert bool((boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all())
    # a sequence (finest first) is the same as the dict; images of a batch are independent
    with torch.no_grad():
        seq = head([feats["stage1"], feats["stage2"], feats["stage3"]])
        single = head({k: v[1:] for k, v in feats.items()})
    torch.testing.assert_close(seq.logits, out.logits)
    torch.testing.assert_close(single.ltrb[0], out.ltrb[1], rtol=1e-4, atol=1e-4)


def test_head_output_shapes_at_1024(head):
    with torch.no_grad():
        out = head(features(1, 1024))
    assert out.sizes == ((128, 128), (64, 64), (32, 32))
    assert out.ltrb.shape == (1, 128 * 128 + 64 * 64 + 32 * 32, 4)


def test_head_is_robust_to_feature_scale(head):
    """GroupNorm on the laterals: random-weight encoders give features of std ~1e3."""
    with torch.no_grad():
        small = head(features(1, 256, seed=3))
        big = head(features(1, 256, seed=3, scale=1000.0))
    torch.testing.assert_close(small.logits, big.logits, rtol=1e-3, atol=1e-3)


def test_head_rejects_wrong_features(head):
    feats = features(1, 256)
    feats["stage2"] = feats["stage2"][:, :100]
    with pytest.raises(ValueError, match="192"):
        head(feats)
    with pytest.raises(ValueError, match="features"):
        head([features(1, 256)["stage1"]])


def test_config_validation_and_round_trip():
    cfg = BoxHeadConfig(channels=48, groups=8, score_thresh=0.2)
    assert BoxHeadConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="groups"):
        BoxHeadConfig(channels=30, groups=8)
    with pytest.raises(ValueError, match="size_bounds"):
        BoxHeadConfig(size_bounds=(0.0, 64.0))
    with pytest.raises(ValueError, match="unknown"):
        BoxHeadConfig.from_dict({"channels": 64, "anchors": 9})


def test_locations_are_cell_centres():
    pts = locations([(2, 3), (1, 2)], (8, 16))
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert pts.tolist() == expected


# -- decoding and NMS on constructed outputs --------------------------------------------------
def constructed_output(sizes=((4, 4), (2, 2), (1, 1))):
    """Outputs that are background everywhere except three locations with known boxes."""
    n = sum(h * w for h, w in sizes)
    logits = torch.full((1, n), -12.0)
    ctr = torch.zeros(1, n)
    ltrb = torch.full((1, n, 4), 2.0)
    # location 5 of level 0: centre (12, 12); box (4, 6, 20, 22)
    logits[0, 5], ctr[0, 5], ltrb[0, 5] = 3.0, 2.0, torch.tensor([8.0, 6.0, 8.0, 10.0])
    # location 6 of level 0: centre (20, 12); box (5, 6, 21, 22), overlaps the first (IoU 15/17)
    logits[0, 6], ctr[0, 6], ltrb[0, 6] = 1.0, 1.0, torch.tensor([15.0, 6.0, 1.0, 10.0])
    # level 1 location 3: centre (24, 24); box (20, 18, 40, 30), distinct
    i = 16 + 3
    logits[0, i], ctr[0, i], ltrb[0, i] = 2.0, 0.0, torch.tensor([4.0, 6.0, 16.0, 6.0])
    return HeadOutput(logits, ltrb, ctr, sizes)


def test_decode_and_nms_exact_on_constructed_outputs():
    out = constructed_output()
    pts = locations(out.sizes, (8, 16, 32))
    boxes, scores = decode_dense(out, pts)
    assert boxes[0, 5].tolist() == [4.0, 6.0, 20.0, 22.0]
    assert boxes[0, 19].tolist() == [20.0, 18.0, 40.0, 30.0]
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert float(scores[0, 5]) == pytest.approx(math.sqrt(sig(3.0) * sig(2.0)), rel=1e-6)
    kept_b, kept_s = select_boxes(boxes[0], scores[0], None, score_thresh=0.05, nms_thresh=0.5,
                                  pre_nms_top_k=100, max_detections=10)
    # location 6 overlaps location 5 (IoU 0.88) and scores lower: suppressed
    assert kept_b.tolist() == [[4.0, 6.0, 20.0, 22.0], [20.0, 18.0, 40.0, 30.0]]
    assert kept_s.tolist() == [float(scores[0, 5]), float(scores[0, 19])]
    # with a loose NMS it survives, ranked by score
    b2, _ = select_boxes(boxes[0], scores[0], None, score_thresh=0.05, nms_thresh=0.9,
                         pre_nms_top_k=100, max_detections=10)
    assert b2[:, 0].tolist() == [4.0, 5.0, 20.0]  # scores 0.916, 0.731, 0.664
    # a valid region of 24 x 24 (h, w): the third box's centre (30, 24) is outside -> dropped;
    # the others are clipped
    b3, _ = select_boxes(boxes[0], scores[0], (24, 24), score_thresh=0.05, nms_thresh=0.9,
                         pre_nms_top_k=100, max_detections=10)
    assert b3.tolist() == [[4.0, 6.0, 20.0, 22.0], [5.0, 6.0, 21.0, 22.0]]
    # max_detections and the score threshold
    assert len(select_boxes(boxes[0], scores[0], None, score_thresh=0.05, nms_thresh=0.9,
                            pre_nms_top_k=100, max_detections=1)[0]) == 1
    assert len(select_boxes(boxes[0], scores[0], None, score_thresh=0.99, nms_thresh=0.9,
                            pre_nms_top_k=100, max_detections=10)[0]) == 0


def reference_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """Textbook greedy NMS, one pair at a time."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= thresh for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_torch_and_numpy_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (60, 2))
    wh = rng.uniform(5, 40, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.choice(np.linspace(0.1, 1, 12), 60).astype(np.float32)  # with ties
    ref = reference_nms(boxes.astype(np.float64), scores.astype(np.float64), 0.4)
    assert nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).tolist() == ref
    assert nms_boxes(boxes, scores, 0.4).tolist() == ref
    assert box_iou(torch.from_numpy(boxes[:3]), torch.from_numpy(boxes[:3])).diagonal().tolist() == pytest.approx([1.0] * 3)


def test_torch_and_numpy_selection_agree(head):
    with torch.no_grad():
        boxes, scores = head.dense_boxes(features(1, 256, seed=5))
    kw = dict(score_thresh=0.0, nms_thresh=0.5, pre_nms_top_k=200, max_detections=50)
    tb, ts = select_boxes(boxes[0], scores[0], (200, 256), **kw)
    nb, ns = select_proposals(boxes[0].numpy(), scores[0].numpy(), (200, 256), **kw)
    assert len(tb) > 5
    np.testing.assert_allclose(nb, tb.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ns, ts.numpy(), rtol=1e-6)
    dets = head.detect(features(2, 256, seed=5), [(200, 256), (256, 256)], score_thresh=0.0,
                       nms_thresh=0.5, max_detections=50)
    assert len(dets) == 2 and dets[0][0].shape[1] == 4
    assert float(((dets[0][0][:, 1] + dets[0][0][:, 3]) / 2).max()) < 200
    with pytest.raises(ValueError, match="valid_sizes"):
        head.detect(features(2, 256), [(256, 256)])


# -- files ------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path, head):
    path = save_box_head(head, tmp_path / "m.prior.pth", {"encoder": "edgesam", "encoder_signature": [1.0, 2.0]})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "config", "state_dict", "meta"}
    loaded, meta = load_box_head(path)
    assert meta["encoder"] == "edgesam" and loaded.config == head.config and not loaded.training
    feats = features(1, 256, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats).ltrb, head(feats).ltrb)
    assert not list(tmp_path.glob(".*.tmp"))
    assert prior_path_for(tmp_path / "edge_sam.pth") == tmp_path / "edge_sam.prior.pth"
    assert prior_path_for("x/edge_sam_encoder.onnx").name == "edge_sam.prior.pth"


def test_load_rejects_other_files(tmp_path, golden_checkpoint):
    with pytest.raises(ValueError, match="not a box head"):
        load_box_head(golden_checkpoint)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is damaged or not a PyTorch file"):
        load_box_head(bad)
    with pytest.raises(FileNotFoundError):
        load_box_head(tmp_path / "missing.pth")


def test_official_checkpoint_still_loads_strictly_beside_a_head(tmp_path, golden_checkpoint, head):
    import shutil

    from napari_edgesam.model import build_edge_sam

    checkpoint = shutil.copy(golden_checkpoint, tmp_path / "edge_sam.pth")  # the shared one stays prior-free
    save_box_head(head, prior_path_for(checkpoint))
    model = build_edge_sam(checkpoint)  # strict load of the official layout
    assert not any(k.startswith(("fpn", "cls_tower")) for k in model.state_dict())


def test_encoder_signature(golden_state_dict):
    import copy

    from napari_edgesam.model import build_edge_sam

    unfused = build_edge_sam(golden_state_dict).image_encoder
    sig = encoder_signature(unfused)
    assert len(sig) == 384
    assert signatures_match(encoder_signature(copy.deepcopy(unfused).fuse()), sig)
    other = copy.deepcopy(unfused)
    with torch.no_grad():
        other.features[0][0].c.weight.mul_(-1.0)
    assert not signatures_match(encoder_signature(other), sig)


# -- ONNX -------------------------------------------------------------------------------------
def test_onnx_export_features_to_boxes(tmp_path, head):
    pytest.importorskip("onnxruntime")
    from napari_edgesam.export.box_head_onnx import check_parity, export_box_head

    path = export_box_head(head, tmp_path / "head.onnx", meta={"encoder": "edgesam"})
    inputs = {k: v.numpy() for k, v in features(1, 1024, seed=11).items()}
    diff = check_parity(head, path, inputs)
    assert set(diff) == {"boxes", "scores"}
    assert diff["boxes"] < 1e-2 and diff["scores"] < 1e-4, diff


@pytest.mark.slow
def test_onnx_export_image_to_boxes_and_embedding(tmp_path, head, golden_state_dict):
    pytest.importorskip("onnxruntime")
    from napari_edgesam.export.box_head_onnx import check_parity, export_box_head
    from napari_edgesam.inference.prior import OnnxBoxPrior
    from napari_edgesam.model import build_edge_sam

    encoder = build_edge_sam(golden_state_dict).image_encoder
    path = export_box_head(head, tmp_path / "m.prior.onnx", encoder=encoder, with_embedding=True)
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (1, 3, 1024, 1024)).astype(np.float32)
    diff = check_parity(head, path, {"image": image}, encoder=encoder)
    assert set(diff) == {"image_embeddings", "boxes", "scores"}
    assert diff["scores"] < 1e-3 and diff["boxes"] < 0.5, diff
    prior = OnnxBoxPrior(path, use_embedding=True)
    assert prior.settings["nms_thresh"] == head.config.nms_thresh
    emb, boxes, scores = prior.embed_and_propose(image, (1024, 1024))
    assert emb.shape == (1, 256, 64, 64) and boxes.shape[1] == 4 and len(boxes) == len(scores)
    assert np.all(np.diff(scores) <= 0)
