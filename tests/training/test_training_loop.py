"""The prompt-in-the-loop step with a stub teacher / ground truth whose answers are known."""

from __future__ import annotations

import pytest
import torch

from _helpers import one_thread  # noqa: F401
from napari_edgesam.training.config import LoopConfig, ModelConfig, TrainConfig
from napari_edgesam.training.loop import (
    GroundTruthTargets,
    Objective,
    TeacherTargets,
    initial_prompts,
    prompt_loop,
    scaled_min_error_pixels,
)
from napari_edgesam.training.losses import mask_loss
from napari_edgesam.training.prompts import low_res_to_input
from napari_edgesam.training.student import build_student, configure_trainable
from napari_edgesam.training.teacher import decode_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

S = 64  # input size: 4 x 4 embeddings, 16 x 16 low-res masks


class StubTeacher:
    """Teacher whose mask ``m`` is a fixed square per token; the IoU head prefers token 2."""

    def __init__(self, n: int) -> None:
        self.logits = torch.full((n, 4, 16, 16), -10.0)
        for m in range(4):
            self.logits[:, m, 2 : 6 + 2 * m, 3 : 9 + m] = 10.0
        self.iou = torch.tensor([0.1, 0.2, 0.9, 0.3]).expand(n, 4)
        self.calls = []

    def decode(self, emb, coords, labels, mask_input=None, has_box=None):
        self.calls.append((coords.clone(), labels.clone(), has_box))
        return self.logits.clone(), self.iou.clone()


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    model = build_student(ModelConfig(img_size=S))
    configure_trainable(model, True, True)
    return model


def _inputs(n=3):
    torch.manual_seed(1)
    emb = torch.randn(n, 256, 4, 4)
    boxes = torch.tensor([[8.0, 8.0, 30.0, 40.0]]).repeat(n, 1)
    points = torch.tensor([[20.0, 20.0]]).repeat(n, 1)
    valid = torch.ones(n, 16, 16, dtype=torch.bool)
    valid[:, :, 14:] = False  # the image ends at column 56 of 64
    return emb, boxes, points, valid


class RecordingTargets(TeacherTargets):
    def __init__(self, teacher, emb):
        super().__init__(teacher, emb)
        self.student_masks = []

    def __call__(self, coords, labels, has_box, token, student_masks):
        self.student_masks.append(student_masks.clone())
        return super().__call__(coords, labels, has_box, token, student_masks)


def test_point_loop_appends_fp_fn_points_from_the_teacher_argmax(student):
    emb, boxes, points, valid = _inputs()
    teacher = StubTeacher(3)
    targets = RecordingTargets(teacher, emb)
    coords, labels = initial_prompts("point", boxes, points)
    cfg = LoopConfig(num_refinements=2, min_error_pixels=1)
    res = prompt_loop(student, emb, coords, labels, valid, targets, "point", cfg, S, torch.Generator().manual_seed(0))
    assert len(teacher.calls) == 3  # 2 refinements -> 3 decode iterations
    for it, (c, lab, has_box) in enumerate(teacher.calls):
        assert c.shape == (3, 1 + it, 2) and lab.shape == (3, 1 + it) and has_box is False
    target = (teacher.logits[:, 2] > 0) & valid  # the teacher's IoU argmax is token 2
    for it in (1, 2):
        c, lab, _ = teacher.calls[it]
        pred = targets.student_masks[it - 1][:, 2]  # the student's (binarised, valid) token 2
        for i in range(3):
            x, y = ((c[i, -1] + 0.5) / 4 - 0.5).round().long().tolist()  # back to the low-res grid
            assert low_res_to_input(torch.tensor([float(x), float(y)]), 4.0).tolist() == c[i, -1].tolist()
            if lab[i, -1] == 1:
                assert target[i, y, x] and not pred[i, y, x]
            else:
                assert lab[i, -1] == 0 and pred[i, y, x] and not target[i, y, x]
    assert res.loss.requires_grad and torch.isfinite(res.loss)
    assert set(res.metrics) >= {"mask_loss", "iou_first", "iou_last", "refine_ignored"}


def test_box_loop_supervises_token_zero_with_no_padding_point(student):
    emb, boxes, points, valid = _inputs(2)
    teacher = StubTeacher(2)
    coords, labels = initial_prompts("box", boxes, points)
    assert labels.tolist() == [[2, 3], [2, 3]] and coords.shape == (2, 2, 2)
    cfg = LoopConfig(num_refinements=0)
    res = prompt_loop(student, emb, coords, labels, valid, TeacherTargets(teacher, emb), "box", cfg, S)
    assert teacher.calls[0][2] is True
    with torch.no_grad():
        logits, _ = decode_prompts(student, emb, coords, labels, num_outputs=1, has_box=True)
        target = teacher.logits[:, :1] > 0
        expected = mask_loss(logits, target, valid[:, None], 5.0, 5.0).mean()
    assert res.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ground_truth_loop_loss_is_the_mean_over_iterations(student):
    emb, boxes, points, valid = _inputs(2)
    gt = torch.zeros(2, 16, 16, dtype=torch.bool)
    gt[:, 3:9, 4:10] = True
    coords, labels = initial_prompts("point", boxes, points)
    cfg = LoopConfig(num_refinements=0, bce_weight=1.0, dice_weight=0.0)
    res = prompt_loop(student, emb, coords, labels, valid, GroundTruthTargets(gt), "point", cfg, S)
    with torch.no_grad():
        logits, _ = decode_prompts(student, emb, coords, labels, num_outputs=4, has_box=False)
        per_mask = mask_loss(logits, gt[:, None].expand(-1, 4, -1, -1), valid[:, None], 1.0, 0.0)
    assert res.loss.item() == pytest.approx(per_mask.mean().item(), rel=1e-5)
    res_min = prompt_loop(student, emb, coords, labels, valid, GroundTruthTargets(gt), "point", cfg, S, point_supervision="min")
    assert res_min.loss.item() == pytest.approx(per_mask.min(dim=1).values.mean().item(), rel=1e-5)


def test_gradients_reach_encoder_and_decoder_but_not_the_prompt_encoder(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(phase="finetune")
    cfg.model.img_size = S
    cfg.data.images = str(tmp_path)
    cfg.data.labels = str(tmp_path)
    model = build_student(cfg.model)
    configure_trainable(model, True, True)
    objective = Objective(model, cfg)
    gt = torch.zeros(2, 16, 16, dtype=torch.bool)
    gt[:, 4:10, 4:10] = True
    batch = {
        "image": torch.randn(2, 3, S, S),
        "input_size": torch.tensor([[64, 64], [48, 64]]),
        "boxes": torch.tensor([[16.0, 16.0, 39.0, 39.0], [10.0, 10.0, 30.0, 30.0]]),
        "points": torch.tensor([[25.0, 25.0], [20.0, 20.0]]),
        "masks": gt,
        "instance_image": torch.tensor([0, 1]),
    }
    loss, metrics = objective(batch, step=0)
    loss.backward()
    assert model.image_encoder.features[0][0].c.weight.grad.abs().sum() > 0
    assert model.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.prompt_encoder.parameters())
    modes = [objective.choose_mode(step) for step in range(200)]
    assert 0.35 < modes.count("box") / 200 < 0.65  # p = 0.5
    assert modes == [objective.choose_mode(step) for step in range(200)]  # a function of the step only
    empty = dict(batch, boxes=torch.zeros(0, 4), points=torch.zeros(0, 2), masks=gt[:0], instance_image=torch.zeros(0, dtype=torch.long))
    loss0, _ = objective(empty, step=1)
    assert loss0.item() == 0.0 and loss0.requires_grad


def test_min_error_pixels_scale_with_the_low_res_grid():
    assert scaled_min_error_pixels(10, 256) == 10  # EdgeSAM at 1024
    assert scaled_min_error_pixels(10, 128) == 2  # 512 input: a quarter of the area
    assert scaled_min_error_pixels(10, 16) == 1  # never below one pixel
    assert scaled_min_error_pixels(0, 256) == 1


def test_mask_input_in_refinement_trains_only_the_mask_path():
    """With ``mask_input_in_refinement`` the refinement decodes get the previous logits as
    mask input; with ``train_mask_input`` only ``mask_downscaling`` of the prompt encoder (and
    nothing else when encoder and decoder are frozen) receives gradients, and a few steps of
    training make the refined masks better."""
    torch.manual_seed(0)
    model = build_student(ModelConfig(img_size=S))
    configure_trainable(model, False, False, train_mask_input=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prompt_encoder.mask_downscaling.") for n in trainable)
    emb, boxes, points, valid = _inputs()
    gt = torch.zeros(3, 16, 16, dtype=torch.bool)
    gt[:, 3:11, 2:9] = True
    seen = []
    real = model.prompt_encoder.embed_masks

    def spy(masks):
        seen.append(masks.shape)
        return real(masks)

    model.prompt_encoder.embed_masks = spy
    cfg = LoopConfig(num_refinements=2, mask_input_in_refinement=True)
    coords, labels = initial_prompts("box", boxes, points)
    result = prompt_loop(model, emb, coords, labels, valid, GroundTruthTargets(gt), "box", cfg, S,
                         torch.Generator().manual_seed(0))
    assert seen == [(3, 1, 16, 16), (3, 1, 16, 16)]  # both refinements, none in the first decode
    result.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == trainable and any(g.abs().sum() > 0 for g in grads.values())
    # without the option no mask input is passed
    seen.clear()
    prompt_loop(model, emb, coords, labels, valid, GroundTruthTargets(gt), "box", LoopConfig(num_refinements=2), S,
                torch.Generator().manual_seed(0))
    assert seen == []
    # a few steps on the mask path alone lower the loss
    model.prompt_encoder.embed_masks = real
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        out = prompt_loop(model, emb, coords, labels, valid, GroundTruthTargets(gt), "box", cfg, S,
                          torch.Generator().manual_seed(0))
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]


def test_train_mask_input_needs_mask_input_in_refinement():
    from napari_edgesam.training.config import ConfigError

    cfg = TrainConfig.from_dict({"phase": "finetune", "model": {"train_mask_input": True},
                                 "data": {"images": "x", "labels": "y"}})
    with pytest.raises(ConfigError, match="mask_input_in_refinement"):
        cfg.validate()
