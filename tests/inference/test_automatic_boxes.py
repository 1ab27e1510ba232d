"""Box-prompted automatic mode: the algorithm on stubs with known instances, plumbing on the golden model.

``BoxOraclePredictor`` plays EdgeSAM for box prompts and ``ThresholdPrior`` the box head (see
``_helpers``).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from _helpers import (
    BoxOraclePredictor,
    ThresholdPrior,
    matched_ious,
    one_thread,  # noqa: F401 - a fixture, used below
    synthetic_instances,
    truth_boxes,
)
from napari_edgesam.inference.automatic.boxes import (
    BoxAutomaticConfig,
    generate_masks_from_boxes,
    prompt_boxes,
    segment_automatic_boxes,
)
from napari_edgesam.inference.automatic.grid import (
    AutomaticConfig,
    Cancelled,
    generate_masks,
    masks_to_labels,
)
from napari_edgesam.inference.automatic.modes import segment_automatic_any
from napari_edgesam.inference.prior import ProposalSet

pytestmark = pytest.mark.usefixtures("one_thread")


def instances(shape=(400, 560), n=12, seed=3):
    """Disks 6 px apart at least (instance ``i`` has value ``40 + 7 i``) and their labels."""
    return synthetic_instances(shape, n=n, rmin=12, rmax=28, seed=seed, gap=6)


# -- the algorithm ----------------------------------------------------------------------------
def test_boxes_become_instances_with_few_batched_calls():
    image, truth = instances()
    stub = BoxOraclePredictor()
    emb = stub.encode_rgb(np.repeat(image[..., None], 3, -1))
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
    assert not stub.upscaled and not stub.is_image_set  # the predictor's state is not used
    assert len(masks) == len(tb)
    labels = masks_to_labels(masks, truth.shape)
    ious = matched_ious(truth, labels)
    assert (ious > 0.85).all(), ious
    assert int(labels.max()) == truth.max()


def test_boxes_inside_found_objects_are_not_decoded():
    """``skip_covered``: lower-scored boxes lying mostly inside masks already found (parts of
    found objects that box NMS let through) are not decoded; a box over background still is;
    the instances are the same as when every box is decoded."""
    image, truth = instances(n=8, seed=4)
    stub = BoxOraclePredictor()
    emb = stub.encode_rgb(np.repeat(image[..., None], 3, -1))
    tb = truth_boxes(truth)

    def shrunk(b, f):
        cx, cy, hw, hh = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) * f / 2, (b[3] - b[1]) * f / 2
        return [cx - hw, cy - hh, cx + hw, cy + hh]

    inner = np.float32([shrunk(tb[0], 0.6), shrunk(tb[1], 0.7)])   # box IoU 0.36 and 0.49: not NMS'd
    empty = np.float32([[1, 1, 9, 9]]) if not truth[:10, :10].any() else np.float32([[0, 0, 1, 1]])
    boxes = np.concatenate([tb, inner, empty])
    scores = np.concatenate([np.full(len(tb), 0.9), [0.5, 0.45, 0.4]]).astype(np.float32)
    props = ProposalSet(boxes, scores, truth.shape)
    labels = {}
    for skip in (True, False):
        counting = BoxOraclePredictor()
        cfg = BoxAutomaticConfig(boxes_per_batch=4, skip_covered=skip, min_box_iou=0.0)
        labels[skip] = masks_to_labels(generate_masks_from_boxes(counting, emb, props, cfg), truth.shape)
        assert counting.prompts == len(tb) + (1 if skip else 3)
    for skip in (True, False):
        assert (matched_ious(truth, labels[skip]) > 0.85).all()
        assert int(labels[skip].max()) == int(truth.max())
    with pytest.raises(ValueError, match="covered_fraction"):
        BoxAutomaticConfig(covered_fraction=0.0)


def test_zoom_plan_from_the_typical_proposal():
    """Tiles that bring the median proposal radius to ``target_radius`` frame pixels (at most
    ``max_zoom``), overlapping by 4 radii; no zoom for objects near the target or too few boxes."""
    from napari_edgesam.inference.automatic.boxes import zoom_plan
    from napari_edgesam.inference.core.predictor import ImageEmbedding

    def emb_with(radius, shape=(1024, 1024), n=9):
        boxes = np.float32([[10 * i, 10 * i, 10 * i + 2 * radius, 10 * i + 2 * radius] for i in range(n)])
        long = max(shape)
        input_size = (round(shape[0] * 1024 / long), round(shape[1] * 1024 / long))
        return ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), shape, input_size,
                              ProposalSet(boxes, np.full(n, 0.9, np.float32), shape))

    cfg = BoxAutomaticConfig()
    assert zoom_plan(emb_with(8.0), cfg) == (256, 32)            # zoom 4: tiles of 1024 / 4
    assert zoom_plan(emb_with(4.0), cfg) == (256, 32)            # zoom 8 capped at max_zoom 4
    tile, overlap = zoom_plan(emb_with(16.0), cfg)               # zoom 2
    assert (tile, overlap) == (512, 64)
    assert zoom_plan(emb_with(8.0, shape=(512, 300)), cfg) == (256, 32)  # frame x2: zoom 2 of 512
    assert zoom_plan(emb_with(24.0), cfg) is None                # within target / zoom_band
    assert zoom_plan(emb_with(8.0, n=3), cfg) is None            # too few boxes to measure
    assert zoom_plan(emb_with(8.0), BoxAutomaticConfig(max_zoom=1.0)) is None
    with pytest.raises(ValueError, match="max_zoom"):
        BoxAutomaticConfig(max_zoom=0.5)


def test_zoom_plan_ignores_proposals_outside_the_image():
    """Proposals outside the image come clipped to its edge with no area: they say nothing of
    the objects' size (counted, they made the median 0 and switched the zoom off)."""
    from napari_edgesam.inference.automatic.boxes import typical_radius, zoom_plan
    from napari_edgesam.inference.core.predictor import ImageEmbedding

    small = [[10 * i, 10 * i, 10 * i + 16, 10 * i + 16] for i in range(9)]      # radius 8
    outside = [[1024, 40 * i, 1024, 40 * i + 30] for i in range(12)]            # clipped to x = 1024
    boxes = np.float32(outside + small)
    props = ProposalSet(boxes, np.linspace(0.95, 0.6, len(boxes)).astype(np.float32), (1024, 1024))
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (1024, 1024), (1024, 1024), props)
    cfg = BoxAutomaticConfig()
    assert typical_radius(props, cfg) == 8.0
    assert zoom_plan(emb, cfg) == (256, 32)
    flat = ProposalSet(np.float32(outside + small[:4]), np.full(16, 0.9, np.float32), (1024, 1024))
    assert typical_radius(flat, cfg) is None  # 4 sized boxes: too few to measure


def test_small_objects_are_segmented_in_zoomed_tiles():
    """A field of small objects (radius 6-9 px in a 1000 px image, ~8 frame pixels) is segmented
    again in zoomed tiles (one prior pass per tile after the whole-image one) and every object
    comes out once, whole, across tile borders; ``zoom=False`` keeps the single pass, where
    the 256 x 256 logits are too coarse for some of them."""
    image, truth = synthetic_instances((1000, 1000), n=30, rmin=6, rmax=9, seed=12, gap=6)  # values 40 + 7 i < 256
    found = {}
    for zoom in (True, False):
        stub, prior = BoxOraclePredictor(), ThresholdPrior()
        labels = segment_automatic_boxes(stub, prior, image, BoxAutomaticConfig(zoom=zoom, min_area=10))
        ious = matched_ious(truth, labels)
        found[zoom] = (prior.calls, int((ious > 0.85).sum()))
        if zoom:
            assert (ious > 0.85).all(), ious
            assert int(labels.max()) == int(truth.max())
    assert found[True][0] > 4 and found[False][0] == 1
    assert found[False][1] < found[True][1] == int(truth.max())


def test_box_agreement_filter_drops_masks_that_overflow_their_box():
    image, truth = instances(n=4, seed=5)
    stub = BoxOraclePredictor()
    emb = stub.encode_rgb(np.repeat(image[..., None], 3, -1))
    tb = truth_boxes(truth)
    # a box covering only the centre part of object 0: the oracle answers the whole object
    x0, y0, x1, y1 = tb[0]
    cx, cy, qw, qh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 5, (y1 - y0) / 5
    inner = np.float32([[cx - qw, cy - qh, cx + qw, cy + qh]])
    props = ProposalSet(inner, np.float32([0.9]), truth.shape)
    uncut = {"box_margin": None}  # masks may reach past their box (the check then judges them)
    assert generate_masks_from_boxes(stub, emb, props, BoxAutomaticConfig(min_box_iou=0.5, **uncut)) == []
    assert len(generate_masks_from_boxes(stub, emb, props, BoxAutomaticConfig(min_box_iou=0.0, **uncut))) == 1
    # by default the mask ends at its box (plus a pixel and 2%): it then agrees with it
    (cut,) = generate_masks_from_boxes(stub, emb, props, BoxAutomaticConfig(min_box_iou=0.5))
    bx0, by0, bx1, by1 = inner[0]
    assert cut.x0 >= bx0 - 2 and cut.y0 >= by0 - 2 and cut.box[2] <= bx1 + 2 and cut.box[3] <= by1 + 2


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
    # progress counts the prompted boxes, decoded or skipped as covered
    assert prior.calls == 1 and done[-1][0] == done[-1][1] >= stub.prompts


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
    emb = stub.encode_rgb(np.repeat(image[..., None], 3, -1))
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


def test_3d_boxes_per_slice_then_merged():
    z, h, w = 5, 120, 150
    zz, yy, xx = np.mgrid[:z, :h, :w]
    truth = np.zeros((z, h, w), np.int32)
    for i, (cz, cy, cx, r) in enumerate([(2.0, 40, 45, 22), (2.0, 80, 110, 20)], 1):
        truth[((zz - cz) * 8) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    vol = np.where(truth > 0, 60 + 20 * truth, 0).astype(np.uint8)
    seen = []
    prior = ThresholdPrior()
    labels = segment_automatic_any(BoxOraclePredictor(prior=prior), vol, BoxAutomaticConfig(min_area=10),
                                   stack=True, progress=lambda d, t: seen.append((d, t)))
    assert labels.shape == truth.shape and seen[-1] == (z, z) and prior.calls == z
    assert int(labels.max()) == 2
    assert (matched_ious(truth, labels) > 0.8).all()


def test_one_call_for_both_modes():
    from napari_edgesam.inference.automatic.grid import AutomaticConfig

    image, truth = instances(shape=(200, 260), n=5, seed=2)
    with_prior = BoxOraclePredictor(prior=ThresholdPrior())
    labels = segment_automatic_any(with_prior, image, BoxAutomaticConfig())
    assert with_prior.calls >= 1 and (matched_ious(truth, labels) > 0.85).all()
    stack = segment_automatic_any(with_prior, np.stack([image, image]), BoxAutomaticConfig(), stack=True)
    assert stack.shape == (2, *image.shape) and int(stack.max()) == truth.max()
    with pytest.raises(RuntimeError, match="prior="):
        segment_automatic_any(BoxOraclePredictor(), image, BoxAutomaticConfig())
    with pytest.raises(TypeError, match="BoxAutomaticConfig"):
        segment_automatic_any(with_prior, image, {"points_per_side": 8})
    from _helpers import LabelOraclePredictor

    grid = segment_automatic_any(LabelOraclePredictor(), image, AutomaticConfig(points_per_side=16))
    assert (matched_ious(truth, grid) > 0.8).all()


def test_where_a_models_prior_is(tmp_path):
    from napari_edgesam.inference.loading.model_prior import find_model_prior, missing_prior_message

    shipped = find_model_prior("edgesam-nuclei")
    assert shipped is not None and shipped.name == "edge_sam_nuclei.prior.pth"
    model = tmp_path / "lab_model.pth"
    model.write_bytes(b"not loaded")
    assert find_model_prior(model) is None and find_model_prior("no-such-model") is None
    message = missing_prior_message(model)
    assert str(tmp_path / "lab_model.prior.pth") in message and "napari-edgesam train prior" in message
    assert "edgesam-nuclei" in message
    (tmp_path / "lab_model.prior.pth").write_bytes(b"x")
    assert find_model_prior(str(model)) == tmp_path / "lab_model.prior.pth"


def test_shared_settings_are_validated_in_both_modes():
    from napari_edgesam.inference.automatic.grid import AutomaticConfig

    for config in (AutomaticConfig, BoxAutomaticConfig):
        for bad in ({"nms_thresh": 0.0}, {"min_visible_fraction": 2.0}, {"tile_size": 10}):
            with pytest.raises(ValueError, match=next(iter(bad))):
                config(**bad)
    assert BoxAutomaticConfig().stability_thresh == 0.85 and AutomaticConfig().stability_thresh == 0.9
    assert set(BoxAutomaticConfig().to_dict()) >= {"score_thresh", "max_proposals", "tile_size", "min_area"}


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


def test_the_current_image_and_its_proposals_are_untouched(golden_predictor, make_golden_image):
    """Both automatic modes decode the embedding they are given; the predictor's current image
    (and its proposals) stays what it was, nothing is set and restored."""
    emb = golden_predictor.encode(make_golden_image(seed=3, h=64, w=80))
    other = golden_predictor.encode(make_golden_image(seed=4, h=64, w=96))
    props = ProposalSet(np.float32([[1, 2, 30, 40]]), np.float32([0.9]), (64, 80))
    other_props = ProposalSet(np.float32([[4, 4, 40, 50], [50, 10, 90, 60]]), np.float32([0.9, 0.8]), (64, 96))
    golden_predictor.set_embedding(emb, props)
    try:
        calls = []
        golden_predictor.set_embedding = lambda *a, **k: calls.append(a)  # nobody may call it now
        generate_masks_from_boxes(golden_predictor, other, other_props,
                                  BoxAutomaticConfig(score_thresh=0.0, stability_thresh=0.0, min_box_iou=0.0))
        generate_masks(golden_predictor, other, AutomaticConfig(points_per_side=4, stability_thresh=0.0))
        del golden_predictor.set_embedding
        assert calls == []
        assert golden_predictor.embedding.features is emb.features and golden_predictor.proposals is props
    finally:
        golden_predictor.__dict__.pop("set_embedding", None)
        golden_predictor.reset_image()
