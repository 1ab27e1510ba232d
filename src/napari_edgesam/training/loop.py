"""The training objectives: encoder distillation and the prompt-in-the-loop step.

The prompt-in-the-loop step (EdgeSAM phase 2) is shared by teacher distillation and ground-truth
fine-tuning; only the *targets* differ:

1. Per iteration all instances are prompted the same way: all boxes (token 0 supervised) or one
   point each (all 4 mask tokens supervised), chosen with ``loop.box_probability``.
2. Decode with the student (and get the targets: the teacher's binarised masks, or the ground
   truth); loss ``bce_weight * BCE + dice_weight * Dice`` on the low-res logits, masked to the
   valid (un-padded) region.
3. Refinement (``num_refinements`` times): binarise the student's masks and the targets; with
   4 outputs pick one mask per instance (the teacher's IoU argmax, or the student mask closest
   to the ground truth); sample one point from FP u FN (FP -> negative, FN -> positive, fewer
   than ``min_error_pixels`` -> label -2), append it to the prompts and decode again; with
   ``mask_input_in_refinement`` the picked mask's low-res logits (detached) go in as
   ``mask_input`` too.
4. The loss is averaged over the decode iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..constants import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_POSITIVE
from .config import LoopConfig, TrainConfig
from .losses import mask_iou, mask_loss, masked_mse, valid_grid
from .prompts import low_res_to_input, sample_refinement_points
from .teacher import Teacher, decode_prompts


@dataclass
class LoopResult:
    """Scalar ``loss`` (differentiable) and detached scalar ``metrics``."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


class TeacherTargets:
    """Targets from a teacher: its masks binarised at 0; the refinement mask is its IoU argmax.

    Args:
        teacher: the frozen teacher.
        embeddings: teacher embeddings ``N x 256 x g x g`` (one per instance).
    """

    def __init__(self, teacher: Teacher, embeddings: torch.Tensor) -> None:
        self.teacher = teacher
        self.embeddings = embeddings

    def __call__(self, coords, labels, has_box: bool, token: slice, student_masks) -> tuple[torch.Tensor, torch.Tensor]:
        logits, iou = self.teacher.decode(self.embeddings, coords, labels, has_box=has_box)
        logits, iou = logits[:, token], iou[:, token]
        return logits > 0, iou.argmax(dim=1)


class GroundTruthTargets:
    """Targets from ground-truth masks ``N x L x L`` (bool); with several outputs the refinement
    mask is the student's output with the highest IoU against the ground truth."""

    def __init__(self, masks: torch.Tensor) -> None:
        self.masks = masks.bool()

    def __call__(self, coords, labels, has_box: bool, token: slice, student_masks) -> tuple[torch.Tensor, torch.Tensor]:
        m = student_masks.shape[1]
        target = self.masks[:, None].expand(-1, m, -1, -1)
        pick = mask_iou(student_masks, target).argmax(dim=1)
        return target, pick


# ---------------------------------------------------------------------------------------------
# The prompt-in-the-loop step
# ---------------------------------------------------------------------------------------------


def scaled_min_error_pixels(min_error_pixels: int, low_res_size: int) -> int:
    """The -2 threshold on a ``low_res_size`` grid: ``min_error_pixels`` is counted on EdgeSAM's
    256 x 256 grid (1024 input) and scaled with the grid's area (at least 1)."""
    return max(1, round(min_error_pixels * (low_res_size / 256) ** 2))


def initial_prompts(
    mode: str, boxes: torch.Tensor, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coords N x P x 2, labels N x P)`` for ``mode`` "box" (P = 2 corners, labels 2/3) or
    "point" (P = 1, label 1); inputs ``boxes`` ``N x 4`` and ``points`` ``N x 2`` (input frame)."""
    n = boxes.shape[0]
    if mode == "box":
        coords = boxes.reshape(n, 2, 2)
        labels = torch.tensor([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], device=boxes.device).expand(n, 2)
    elif mode == "point":
        coords = points.reshape(n, 1, 2)
        labels = torch.full((n, 1), LABEL_POSITIVE, device=points.device, dtype=torch.int64)
    else:
        raise ValueError(f"prompt mode must be 'box' or 'point', got {mode!r}")
    return coords.float(), labels.long()


def prompt_loop(
    student: nn.Module,
    embeddings: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    targets,
    mode: str,
    cfg: LoopConfig,
    img_size: int,
    generator: torch.Generator | None = None,
    point_supervision: str = "all",
) -> LoopResult:
    """Decode, compare with the targets, add a refinement point, decode again.

    Args:
        student: an EdgeSam (its prompt encoder and mask decoder are used).
        embeddings: student embeddings ``N x 256 x g x g`` (one per instance).
        coords / labels: initial prompts from :func:`initial_prompts`.
        valid: ``N x L x L`` bool valid region of each instance's image (``L = 4 g``).
        targets: :class:`TeacherTargets` or :class:`GroundTruthTargets`.
        mode: "box" (token 0 supervised) or "point" (all 4 tokens supervised).
        img_size: side of the model input (to map low-res points to the input frame).
        generator: random source for the refinement points (on the embeddings' device).
        point_supervision: "all", or "min" (only the lowest-loss token of a point iteration).
    """
    has_box = mode == "box"
    num_outputs = 1 if has_box else 4
    token = slice(0, 1) if has_box else slice(0, 4)
    n_iters = cfg.num_refinements + 1
    min_error = scaled_min_error_pixels(cfg.min_error_pixels, valid.shape[-1])
    valid4 = valid[:, None]
    total = embeddings.new_zeros(())
    metrics: dict[str, torch.Tensor] = {}
    ignored = []
    logits = target = pick = None
    mask_input = None
    for it in range(n_iters):
        if it > 0:
            with torch.no_grad():
                rows = torch.arange(logits.shape[0], device=logits.device)
                if cfg.mask_input_in_refinement:
                    mask_input = logits.detach()[rows, pick][:, None]
                pred = ((logits.detach() > 0) & valid4)[rows, pick]
                tgt = (target & valid4)[rows, pick]
                pts, lab = sample_refinement_points(pred, tgt, generator, min_error)
                pts = low_res_to_input(pts, img_size / pred.shape[-1])
                ignored.append((lab < 0).float().mean())
            coords = torch.cat([coords, pts[:, None].to(coords.dtype)], dim=1)
            labels = torch.cat([labels, lab[:, None].to(labels.dtype)], dim=1)
        logits, _ = decode_prompts(student, embeddings, coords, labels, mask_input, num_outputs, has_box=has_box)
        logits = logits.float()
        with torch.no_grad():
            target, pick = targets(coords, labels, has_box, token, (logits.detach() > 0) & valid4)
        per_mask = mask_loss(logits, target, valid4, cfg.bce_weight, cfg.dice_weight)  # N x M
        if point_supervision == "min" and not has_box:
            per_instance = per_mask.min(dim=1).values
        else:
            per_instance = per_mask.mean(dim=1)
        total = total + per_instance.mean()
        if it == 0 or it == n_iters - 1:
            with torch.no_grad():
                rows = torch.arange(logits.shape[0], device=logits.device)
                iou = mask_iou(((logits > 0) & valid4)[rows, pick], (target & valid4)[rows, pick])
                metrics["iou_first" if it == 0 else "iou_last"] = iou.mean()
    loss = total / n_iters
    metrics["mask_loss"] = loss.detach()
    if ignored:
        metrics["refine_ignored"] = torch.stack(ignored).mean()
    return LoopResult(loss, metrics)


# ---------------------------------------------------------------------------------------------
# The objective of a whole step (wrapped by DDP)
# ---------------------------------------------------------------------------------------------


def step_seed(seed: int, step: int, rank: int | None = None) -> int:
    """A 63-bit seed for the randomness of one optimizer step (shared by all ranks if rank is None)."""
    mix = (seed * 0x9E3779B1 + step * 0x85EBCA77 + (0 if rank is None else (rank + 1) * 0xC2B2AE3D))
    return mix % (2**63 - 1)


class Objective(nn.Module):
    """Computes the loss of one batch for the configured phase.

    The student is the only registered sub-module (so DDP wraps exactly it); the teacher is a
    plain attribute. ``forward(batch, step, rank)`` returns ``(loss, metrics)``.
    """

    def __init__(self, student: nn.Module, cfg: TrainConfig, teacher: Teacher | None = None) -> None:
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.__dict__["teacher"] = teacher  # not a sub-module: frozen, never saved, never synced

    def choose_mode(self, step: int) -> str:
        """"box" or "point" for ``step`` (the same on every rank)."""
        types = self.cfg.loop.prompt_types
        if len(types) == 1:
            return types[0]
        g = torch.Generator().manual_seed(step_seed(self.cfg.run.seed, step))
        return "box" if torch.rand((), generator=g).item() < self.cfg.loop.box_probability else "point"

    def _student_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        if self.cfg.model.train_encoder:
            return self.student.image_encoder(images)
        with torch.no_grad():
            return self.student.image_encoder(images)

    def _teacher_embeddings(self, batch: dict) -> torch.Tensor:
        if "teacher_embedding" in batch:
            return batch["teacher_embedding"].float()
        if self.teacher is None:
            raise RuntimeError("this phase needs a teacher: build the Objective with one")
        return self.teacher.embed(batch["image"])

    def forward(self, batch: dict, step: int, rank: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        images = batch["image"]
        s = cfg.model.img_size
        emb_s = self._student_embeddings(images)
        metrics: dict[str, torch.Tensor] = {}
        loss = emb_s.new_zeros(()).float()
        emb_t = None
        if cfg.phase == "phase1" or (cfg.phase == "phase2" and cfg.loop.embedding_loss_weight > 0):
            emb_t = self._teacher_embeddings(batch)
            valid_e = valid_grid(batch["input_size"], s, emb_s.shape[-1])
            mse = masked_mse(emb_s.float(), emb_t, valid_e)
            metrics["embed_mse"] = mse.detach()
            loss = loss + (mse if cfg.phase == "phase1" else cfg.loop.embedding_loss_weight * mse)
        if cfg.phase == "phase1":
            return loss, metrics

        inst = batch["instance_image"]
        if inst.numel() == 0:
            zero = sum(p.sum() for p in self.student.parameters() if p.requires_grad) * 0.0
            return loss + zero, metrics
        mode = self.choose_mode(step)
        coords, labels = initial_prompts(mode, batch["boxes"], batch["points"])
        valid = valid_grid(batch["input_size"], s, 4 * emb_s.shape[-1])[inst]
        if cfg.phase == "phase2":
            if emb_t is None:
                emb_t = self._teacher_embeddings(batch)
            targets = TeacherTargets(self.teacher, emb_t[inst])
        else:
            targets = GroundTruthTargets(batch["masks"])
        gen = torch.Generator(device=images.device).manual_seed(step_seed(cfg.run.seed, step, rank))
        result = prompt_loop(
            self.student, emb_s[inst], coords, labels, valid, targets, mode, cfg.loop, s, gen,
            point_supervision=cfg.loop.point_supervision,
        )
        metrics.update(result.metrics)
        metrics["box_mode"] = torch.tensor(float(mode == "box"))
        return loss + result.loss, metrics
