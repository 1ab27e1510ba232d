"""Training the granularity prior: targets, losses, boxes from labels, metrics, a training run."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tifffile = pytest.importorskip("tifffile")

from napari_edgesam.datasets import synthetic_nuclei_2d  # noqa: E402
from napari_edgesam.inference.prior import load_box_head  # noqa: E402
from napari_edgesam.model.box_head import BoxHead, BoxHeadConfig, HeadOutput  # noqa: E402
from napari_edgesam.training.prior.data import instance_boxes, sa1b_boxes, scale_boxes  # noqa: E402
from napari_edgesam.training.prior.evaluate_prior import average_precision, box_recall  # noqa: E402
from napari_edgesam.training.prior.losses import giou_loss, prior_loss, sigmoid_focal_loss  # noqa: E402
from napari_edgesam.training.prior.targets import (  # noqa: E402
    assign_targets,
    centerness_target,
    level_layout,
)

CFG = BoxHeadConfig()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions: one thread is faster, and far faster on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
SIZES = ((16, 16), (8, 8), (4, 4))  # a 128 x 128 input


def index_of(level: int, row: int, col: int) -> int:
    offset = sum(h * w for h, w in SIZES[:level])
    return offset + row * SIZES[level][1] + col


# -- targets ----------------------------------------------------------------------------------
def test_assignment_of_constructed_boxes():
    layout = level_layout(SIZES, CFG)
    small = [40.0, 40.0, 72.0, 64.0]     # centre (56, 52); largest reach < 64 -> stride 8
    large = [0.0, 0.0, 128.0, 128.0]     # reach 64..128 at its centre -> stride 16
    t = assign_targets(torch.tensor([small, large]), layout, CFG.center_radius)
    i = index_of(0, 6, 6)  # centre (52, 52), inside the small box and near its centre
    assert bool(t.positive[i]) and int(t.matched[i]) == 0
    assert t.ltrb[i].tolist() == [12.0, 12.0, 20.0, 12.0]
    assert float(t.centerness[i]) == pytest.approx(np.sqrt(12 / 20 * 12 / 12))
    # inside the small box but beyond 1.5 strides (12 px) of its centre: not positive for it
    assert int(t.matched[index_of(0, 5, 8)]) != 0  # (68, 44): |dx| = 12
    # far from the small box: nothing at stride 8 (the large box's reach is >= 64 only near its centre)
    assert not bool(t.positive[index_of(0, 0, 0)])
    j = index_of(1, 3, 3)  # centre (56, 56) at stride 16: the large box (reach 72)
    assert bool(t.positive[j]) and int(t.matched[j]) == 1
    assert t.ltrb[j].tolist() == [56.0, 56.0, 72.0, 72.0]
    # negatives carry zero targets; the number of positives per box is small and non-zero
    assert float(t.ltrb[~t.positive].abs().sum()) == 0.0
    assert 0 < int((t.matched == 0).sum()) <= 9 and 0 < int((t.matched == 1).sum()) <= 9
    empty = assign_targets(torch.zeros(0, 4), layout, 1.5)
    assert not bool(empty.positive.any()) and bool((empty.matched == -1).all())


def test_overlapping_boxes_go_to_the_smaller():
    layout = level_layout(SIZES, CFG)
    outer = [30.0, 30.0, 80.0, 80.0]
    inner = [44.0, 44.0, 68.0, 68.0]
    t = assign_targets(torch.tensor([outer, inner]), layout, CFG.center_radius)
    assert int(t.matched[index_of(0, 6, 6)]) == 1
    assert centerness_target(torch.tensor([5.0, 5.0, 5.0, 5.0])).item() == pytest.approx(1.0)


# -- losses -----------------------------------------------------------------------------------
def test_focal_and_giou_losses_against_hand_values():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    expected = torch.stack([
        -0.25 * (1 - p[0]) ** 2 * torch.log(p[0]),
        -0.75 * p[1] ** 2 * torch.log(1 - p[1]),
        -0.75 * p[2] ** 2 * torch.log(1 - p[2]),
    ])
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), expected)
    same = torch.tensor([[3.0, 4.0, 5.0, 6.0]])
    assert float(giou_loss(same, same)) == pytest.approx(0.0, abs=1e-6)
    # prediction covers the left half of the target: IoU 0.5, enclosing box = target -> 0.5
    assert float(giou_loss(torch.tensor([[4.0, 2.0, 0.0, 2.0]]), torch.tensor([[4.0, 2.0, 4.0, 2.0]]))) == pytest.approx(0.5)
    # disjoint boxes are penalised beyond 1
    assert float(giou_loss(torch.tensor([[1.0, 1.0, -3.0, 1.0]]), torch.tensor([[-5.0, 1.0, 7.0, 1.0]]))) > 1.0


def test_prior_loss_with_and_without_positives():
    n = 10
    out = HeadOutput(torch.zeros(1, n, requires_grad=True), torch.ones(1, n, 4, requires_grad=True),
                     torch.zeros(1, n, requires_grad=True), ((n, 1),))
    from napari_edgesam.training.prior.targets import Targets

    none = Targets(torch.zeros(1, n, dtype=torch.bool), torch.zeros(1, n, 4), torch.zeros(1, n),
                   torch.full((1, n), -1))
    losses = prior_loss(out, none)
    assert float(losses["box"]) == 0.0 and float(losses["loss"].detach()) > 0
    losses["loss"].backward()
    pos = none.positive.clone()
    pos[0, 3] = True
    some = Targets(pos, torch.ones(1, n, 4), torch.ones(1, n), torch.zeros(1, n, dtype=torch.int64))
    valid = torch.ones(1, n, dtype=torch.bool)
    valid[0, 5:] = False
    a, b = prior_loss(out, some), prior_loss(out, some, valid)
    assert float(a["box"]) == pytest.approx(0.0, abs=1e-6) and float(b["cls"]) < float(a["cls"])


# -- boxes from labels ------------------------------------------------------------------------
def test_instance_boxes_and_scaling():
    labels = np.zeros((20, 30), np.uint16)
    labels[2:5, 3:9] = 1
    labels[10, 20] = 4  # ids need not be contiguous
    boxes = instance_boxes(labels)
    assert boxes.tolist() == [[3, 2, 9, 5], [20, 10, 21, 11]]
    assert scale_boxes(boxes, (20, 30), (40, 60)).tolist() == [[6, 4, 18, 10], [40, 20, 42, 22]]
    with pytest.raises(ValueError, match="2D integer"):
        instance_boxes(np.zeros((2, 2), np.float32))


def test_sa1b_boxes_from_bbox_and_rle():
    from napari_edgesam.training.rle import encode_rle

    mask = np.zeros((12, 16), bool)
    mask[3:7, 5:11] = True
    anns = [{"bbox": [1, 2, 3, 4], "segmentation": encode_rle(mask)}, {"segmentation": encode_rle(mask)}]
    assert sa1b_boxes(anns).tolist() == [[1, 2, 4, 6], [5, 3, 11, 7]]


# -- metrics ----------------------------------------------------------------------------------
def test_recall_and_ap_on_constructed_detections():
    gt = [np.float32([[0, 0, 10, 10], [20, 20, 30, 30]]), np.float32([[0, 0, 5, 5]])]
    perfect = [(g.copy(), np.ones(len(g))) for g in gt]
    assert box_recall([p[0] for p in perfect], gt) == 1.0
    assert average_precision(perfect, gt) == pytest.approx(1.0)
    # one miss, one false positive ranked first
    preds = [(np.float32([[50, 50, 60, 60], [0, 0, 10, 10]]), np.float32([0.9, 0.8])),
             (np.float32([[0, 0, 5, 5]]), np.float32([0.7]))]
    assert box_recall([p[0] for p in preds], gt) == pytest.approx(2 / 3)
    # precision envelope: recall 1/3 and 2/3 reached at precision 2/3 -> AP = 2/3 * (#r <= 2/3) / 101
    expected = (2 / 3) * sum(1 for r in np.linspace(0, 1, 101) if r <= 2 / 3 + 1e-12) / 101
    assert average_precision(preds, gt) == pytest.approx(expected)
    # a duplicate of a matched box is a false positive: precision 1 up to recall 1/2, then 2/3
    dup = [(np.float32([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]), np.float32([0.9, 0.8, 0.7]))]
    assert average_precision(dup, gt[:1]) == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision([(np.zeros((0, 4)), np.zeros(0))], gt[:1]) == 0.0


# -- a training run on golden-weights features ------------------------------------------------
def write_dataset(root, n, size, seed0=0):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image, labels = synthetic_nuclei_2d(seed=seed0 + i, shape=(size, size), n_nuclei=10, radius=(7, 14))
        tifffile.imwrite(root / "images" / f"im{i}.tif", image)
        tifffile.imwrite(root / "labels" / f"im{i}.tif", labels)
    return root / "images", root / "labels"


@pytest.fixture(scope="module")
def golden_encoder(golden_state_dict):
    from napari_edgesam.model import build_edge_sam

    enc = build_edge_sam(golden_state_dict).image_encoder.fuse().eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


@pytest.fixture(scope="module")
def feature_store(golden_encoder, tmp_path_factory):
    from napari_edgesam.training.config import DataConfig
    from napari_edgesam.training.prior.data import FeatureStore, cache_features, store_digest
    from napari_edgesam.training.records import find_records

    images, labels = write_dataset(tmp_path_factory.mktemp("nuclei"), 3, 192)
    cfg = DataConfig(images=str(images), labels=str(labels))
    store = FeatureStore(tmp_path_factory.mktemp("cache"), store_digest(golden_encoder, 192))
    keys = cache_features(golden_encoder, find_records(cfg), cfg, 192, store)
    return store, keys


def test_feature_cache_contents(feature_store):
    store, keys = feature_store
    entry = store.get(keys[0])
    assert entry["stage1"].shape == (96, 24, 24) and entry["stage1"].dtype == torch.float16
    assert entry["stage3"].shape == (384, 6, 6)
    assert entry["input_size"].tolist() == [192, 192]
    boxes = entry["boxes"]
    assert boxes.ndim == 2 and len(boxes) >= 5
    assert bool((boxes[:, 2] > boxes[:, 0]).all()) and float(boxes.max()) <= 192
    assert len(list(store.folder.glob(f"*.{store.digest}.pt"))) == len(keys)
    with pytest.raises(KeyError, match="cache_features"):
        store.get("missing")


def test_training_steps_reduce_the_loss_and_find_the_nuclei(feature_store):
    from napari_edgesam.training.prior.data import load_batch
    from napari_edgesam.training.prior.evaluate_prior import evaluate_head
    from napari_edgesam.training.prior.train_prior import train_step

    store, keys = feature_store
    torch.manual_seed(0)
    head = BoxHead(BoxHeadConfig(channels=32, score_thresh=0.2))
    before = evaluate_head(head, store, keys)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    feats, boxes, sizes = load_batch(store, keys)
    losses = [train_step(head, optimizer, feats, boxes, sizes, grad_clip=5.0)["loss"] for _ in range(60)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
    after = evaluate_head(head, store, keys)
    assert after["recall50"] > max(before["recall50"], 0.5), (before, after)
    assert after["ap50"] > before["ap50"]


@pytest.mark.slow
def test_train_prior_cli_end_to_end(tmp_path, golden_checkpoint):
    from napari_edgesam.cli import main

    images, labels = write_dataset(tmp_path / "data", 4, 160, seed0=10)
    out = tmp_path / "nuclei.prior.pth"
    rc = main(["train", "prior", "--images", str(images), "--labels", str(labels), "--model", str(golden_checkpoint),
               "--output", str(out), "--img-size", "160", "--epochs", "2", "--batch-size", "2",
               "--channels", "16", "--val-fraction", "0.25", "--num-threads", "1", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0 and out.is_file()
    head, meta = load_box_head(out)
    assert head.config.channels == 16 and meta["img_size"] == 160 and meta["train_images"] == 3
    assert set(meta["validation"]) >= {"recall50", "ap50"} and len(meta["encoder_signature"]) == 384
    json.dumps(meta)  # plain data only
    report = tmp_path / "eval.json"
    rc = main(["train", "prior-evaluate", "--images", str(images), "--labels", str(labels), "--model", str(golden_checkpoint),
               "--prior", str(out), "--limit", "1", "--clicks", "--json", str(report)])
    assert rc == 0
    result = json.loads(report.read_text())
    assert result["proposals"]["images"] == 1 and 0 <= result["proposals"]["recall50"] <= 1
    clicks = result["clicks"]
    assert clicks["instances"] >= 5 and 0 <= clicks["without"] <= 1 and 0 <= clicks["with"] <= 1
    assert main(["train", "prior", "--images", str(tmp_path / "nowhere"), "--output", str(out),
                 "--model", str(golden_checkpoint)]) == 1
