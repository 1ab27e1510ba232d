"""Adapt a predictor's decoder to the objects a user committed, one short step at a time.

Which parameters move (``params``), decided by measurement (``benchmarks/bench_adapt.py``,
K = 20 objects, 100 steps each, held-out objects of other planes, mean of box and click mIoU):

- ``"head"`` (the default): the decoder's output side only: the upscaling, the hypernetwork
  MLPs and the IoU head (0.77 M parameters). The two-way transformer, the output tokens and
  the prompt encoder stay the base's. Better on every scenario measured and about half the
  step time (no backward pass through the transformer): own 3D sample 0.746 -> 0.779 (decoder:
  -> 0.726, a loss), inverted contrast 0.083 -> 0.750 (decoder 0.647), cells with a boundary
  0.151 -> 0.522 (0.462), dim textured nuclei 0.517 -> 0.772 (0.737); 100 steps took 16-31 s
  against 25-64 s on 2 shared, busy cores.
- ``"decoder"``: the whole mask decoder (transformer, tokens, upscaling, hypernetworks, IoU
  head) and the prompt encoder's mask path (``mask_downscaling``, used when a refinement passes
  the previous logits): 4.1 M parameters, overfits a few objects (the only scenario where the
  base was already good lost 0.02-0.05 on other planes).

Both keep the image encoder frozen, so the planes are embedded once (and the embeddings the
GUI cached stay valid for the adapted model: the new predictor shares the base's encoder), and
a step is only decoder passes: one object, its prompt and one refinement, forward and backward
through the fast decoder's rewrite (:class:`_FastTrainDecoder`) and a fused AdamW update.
Moving the encoder (even its last stage) was not kept: one 1024 x 1024 encoder forward and
backward pass costs seconds on a CPU (a step must stay short enough for a GUI to answer clicks
between steps), every plane would need re-embedding for the loss and once more at the end, and
the GUI's cached embeddings would all go stale.

The step is the prompt-in-the-loop objective of ``train finetune``
(:func:`napari_edgesam.training.loop.prompt_loop`): per step all sampled objects get their box
(token 0 supervised) or one point drawn inside the mask (all 4 tokens supervised), then one
refinement point from the student's errors (with the previous logits as mask input), with
the same BCE + Dice losses (:mod:`napari_edgesam.training.losses`) against the committed
masks on the low-res grid. AdamW, a short warm-up and a cosine decay over the time budget.

The guard: a seeded part of the objects (``holdout_fraction``, at least one) is never trained
on; :meth:`Adapter.finish` measures box and click mIoU on them before and after, and keeps the
adapted model only if their mean does not drop.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import torch
from torch import nn

from ...constants import IMG_SIZE, LOW_RES_SIZE, token_slice
from ...inference.core.predictor import EdgeSamPredictor
from ...inference.core.prompts import scale_coords
from ...inference.volume.prompts import mask_to_low_res_logits
from ...model.fast_decoder import predict_masks_fast
from ..config import LoopConfig
from ..loop import GroundTruthTargets, initial_prompts, prompt_loop
from ..losses import valid_grid
from ..prompts import mask_to_box, sample_point_in_mask
from .data import AdaptData
from .heldout import measure
from .result import AdaptResult, build_card

logger = logging.getLogger(__name__)

PARAMS = ("decoder", "head")
#: Peak learning rate per ``params`` choice.
DEFAULT_LR = {"decoder": 3e-4, "head": 1e-3}


class _FastTrainDecoder(nn.Module):
    """A :class:`~napari_edgesam.model.mask_decoder.MaskDecoder` (``.decoder``) called like one,
    computed with :func:`~napari_edgesam.model.fast_decoder.predict_masks_fast`: the same maths
    (and gradients) with ~2.5x fewer operations forward and backward (measured on one core: 60-80
    ms + 90-125 ms per object and decode against 130-250 + 190-270 ms). Only the key-projection
    biases' gradients differ, which are 0 in exact arithmetic (a softmax ignores them) and
    rounding noise either way."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                num_multimask_outputs: int = 1):
        masks, iou = predict_masks_fast(self.decoder, image_embeddings, image_pe, sparse_prompt_embeddings,
                                        dense_prompt_embeddings)
        sl = token_slice(num_multimask_outputs)
        return masks[:, sl], iou[:, sl]


class _Student(nn.Module):
    """The trainable copies: what :func:`~napari_edgesam.training.teacher.decode_prompts` needs
    (``mask_decoder`` may be the fast wrapper; :attr:`decoder` is the MaskDecoder itself)."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, fast: bool = True) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = _FastTrainDecoder(mask_decoder) if fast else mask_decoder

    @property
    def decoder(self) -> nn.Module:
        md = self.mask_decoder
        return md.decoder if isinstance(md, _FastTrainDecoder) else md


def _torch_model(predictor):
    model = getattr(getattr(predictor, "backend", None), "model", None)
    if model is None or not hasattr(model, "mask_decoder") or not hasattr(predictor.backend, "with_decoder"):
        name = getattr(getattr(predictor, "backend", None), "name", type(predictor).__name__)
        raise ValueError(f"adaptation needs a model on the torch backend, not {name!r}: "
                         "load it with load_model(name, backend='torch')")
    return model


def split_heldout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, heldout)`` of ``n`` objects: ``round(fraction * n)`` held out (at least
    one, and at least one left to train on), drawn with ``seed``."""
    if n < 2:
        raise ValueError(f"adaptation needs at least 2 committed objects (one to learn from, one to check "
                         f"on), got {n}: commit more objects")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_fraction must be between 0 and 1, got {fraction}")
    k = min(max(1, int(round(fraction * n))), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])


class Adapter:
    """Fine-tunes a copy of ``predictor``'s decoder on ``data``'s objects; the base predictor
    is never changed.

    Use: :meth:`prepare` once (embeds the planes, splits off the held-out objects, measures
    them), :meth:`step` until :attr:`done`, then :meth:`finish`. Every call is short (a step
    is one optimiser update), so a GUI can run them on its compute thread between clicks.

    Args:
        predictor: the base :class:`EdgeSamPredictor` on the torch backend.
        data: the planes and committed objects (:class:`AdaptData`).
        max_seconds: time budget of the whole adaptation (prepare, steps, finish): the time
            spent in these calls, not wall time, so clicks answered in between do not shorten it.
        holdout_fraction: part of the objects kept for the guard (at least one).
        seed: seeds the split, the prompts and the refinement points.
        params: ``"head"`` (default) or ``"decoder"`` (see the module docstring).
        lr: peak learning rate (AdamW, no weight decay); None: :data:`DEFAULT_LR` of ``params``
            (measured on inverted-contrast nuclei: 1e-3 for the head, 3e-4 for the whole
            decoder, where 1e-3 overshoots).
        batch_objects: objects per step.
        max_steps: stop after this many steps even if time is left (None: time only).
        box_probability: chance that a step prompts with boxes (else one point per object).
        min_area: objects with fewer pixels (in the 256 x 256 low-res frame, after the resize)
            are not trained on.
        fast_decoder: train through the fast decoder's rewrite (same gradients, ~2x faster steps)
            instead of the module-by-module decoder.
    """

    def __init__(self, predictor, data: AdaptData, *, max_seconds: float = 60.0, holdout_fraction: float = 0.2,
                 seed: int = 0, params: str = "head", lr: float | None = None, batch_objects: int = 1,
                 max_steps: int | None = None, box_probability: float = 0.5, min_area: int = 4,
                 fast_decoder: bool = True) -> None:
        if params not in PARAMS:
            raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
        if not (max_seconds > 0):
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        if batch_objects < 1:
            raise ValueError(f"batch_objects must be >= 1, got {batch_objects}")
        self.base = predictor
        self._model = _torch_model(predictor)
        data.check()
        self.data = data
        self.max_seconds = float(max_seconds)
        self.holdout_fraction = float(holdout_fraction)
        self.seed = int(seed)
        self.params = params
        self.lr = float(DEFAULT_LR[params] if lr is None else lr)
        self.batch_objects = int(batch_objects)
        self.max_steps = max_steps
        self.box_probability = float(box_probability)
        self.min_area = int(min_area)
        self.fast_decoder = bool(fast_decoder)
        self.loop_cfg = LoopConfig(num_refinements=1, mask_input_in_refinement=True)
        self.steps = 0
        self.losses: list[float] = []
        self.before: dict | None = None
        self._spent = 0.0
        self._step_cost = 0.0
        self._measure_cost = 0.0
        self._prepared = False
        self._finished: AdaptResult | None = None
        self._rng = np.random.default_rng(self.seed)

    # -- time ----------------------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        """Time spent in :meth:`prepare`, :meth:`step` and :meth:`finish` so far."""
        return self._spent

    @property
    def done(self) -> bool:
        """Whether the budget (time, or ``max_steps``) is used up: call :meth:`finish`."""
        if self._finished is not None:
            return True
        if not self._prepared:
            return False
        if self.max_steps is not None and self.steps >= self.max_steps:
            return True
        # keep the time the 'after' measurement will take (as long as 'before' took)
        return self._spent + self._measure_cost + self._step_cost >= self.max_seconds

    @property
    def progress(self) -> tuple[float, float]:
        """``(fraction done 0..1, seconds left)`` of the budget (an estimate)."""
        if self._finished is not None:
            return 1.0, 0.0
        if self.max_steps is not None and self._prepared and self.steps and self._step_cost:
            left_steps = max(self.max_steps - self.steps, 0)
            left = min(left_steps * self._step_cost + self._measure_cost, max(self.max_seconds - self._spent, 0.0))
        else:
            left = max(self.max_seconds - self._spent, 0.0)
        total = self._spent + left
        return (min(self._spent / total, 1.0) if total > 0 else 1.0), left

    # -- the three phases ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Embed the planes (those without an embedding), split off the held-out objects, put
        the trainable copies and the training targets in place, and measure 'before'."""
        if self._prepared:
            return
        t0 = time.perf_counter()
        self.data.embed_missing(self.base)
        n = len(self.data.objects)
        train_idx, held_idx = split_heldout(n, self.holdout_fraction, self.seed)
        self.heldout = [self.data.objects[i] for i in held_idx]
        self._setup_training([self.data.objects[i] for i in train_idx])
        t1 = time.perf_counter()
        self.before = measure(self.base, self.heldout, self.data.embeddings)
        self._measure_cost = time.perf_counter() - t1
        self._prepared = True
        self._spent += time.perf_counter() - t0
        logger.info("adapt: %d objects to learn from, %d held out; before %s", len(self.train), len(self.heldout),
                    self.before)

    def _setup_training(self, objects) -> None:
        dev = self._model.mask_decoder.iou_token.weight.device
        self.device = dev
        self.student = _Student(copy.deepcopy(self._model.prompt_encoder), copy.deepcopy(self._model.mask_decoder),
                                fast=self.fast_decoder)
        self.student.to(dev).float()
        self.student.requires_grad_(False)
        if self.params == "decoder":
            self.student.decoder.requires_grad_(True)
            self.student.prompt_encoder.mask_downscaling.requires_grad_(True)
        else:
            md = self.student.decoder
            for part in (md.output_upscaling, md.output_hypernetworks_mlps, md.iou_prediction_head):
                part.requires_grad_(True)
        self.student.train()
        self.student.prompt_encoder.eval()
        if self.params == "decoder":
            self.student.prompt_encoder.mask_downscaling.train()
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.n_parameters = int(sum(p.numel() for p in trainable))
        try:  # one fused kernel per step: ~40 ms less per step on one core than the loop over tensors
            self.optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=0.0, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=0.0, foreach=True)
        self._trainable = trainable
        # per plane: the embedding (float32 tensor) and the valid low-res region
        self._emb: dict[str, torch.Tensor] = {}
        self._valid: dict[str, torch.Tensor] = {}
        self.train = []
        self._targets, self._boxes, self._keys = [], [], []
        for obj in objects:
            emb = self.data.embeddings[obj.image_key]
            target = mask_to_low_res_logits(obj.mask, emb.input_size, emb.original_size) > 0
            if int(target.sum()) < self.min_area:
                continue
            if obj.image_key not in self._emb:
                self._emb[obj.image_key] = torch.from_numpy(np.asarray(emb.features, np.float32)).to(dev)
                size = torch.tensor([list(emb.input_size)])
                self._valid[obj.image_key] = valid_grid(size, IMG_SIZE, LOW_RES_SIZE)[0].to(dev)
            self.train.append(obj)
            self._targets.append(torch.from_numpy(target).to(dev))
            self._boxes.append(scale_coords(mask_to_box(obj.mask).reshape(2, 2), emb.original_size,
                                            emb.input_size).reshape(4))
        if not self.train:
            raise ValueError("none of the objects to learn from is large enough (at least "
                             f"{self.min_area} pixels of the 256 x 256 low-res frame): commit larger objects")
        self._order: list[int] = []

    def _batch(self) -> list[int]:
        out = []
        while len(out) < min(self.batch_objects, len(self.train)):
            if not self._order:
                self._order = self._rng.permutation(len(self.train)).tolist()
            i = self._order.pop()
            if i not in out:
                out.append(i)
        return out

    def _lr(self) -> float:
        """Warm-up over the first 5 steps, then a cosine decay to a tenth over the budget."""
        if self.max_steps is not None:
            frac = self.steps / max(self.max_steps, 1)
        else:
            frac = self._spent / self.max_seconds
        warm = min(1.0, (self.steps + 1) / 5)
        return self.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    def step(self) -> float:
        """One optimiser update on a few objects; returns its loss."""
        if self._finished is not None:
            raise RuntimeError("this adaptation is finished: start a new Adapter")
        if not self._prepared:
            self.prepare()
        t0 = time.perf_counter()
        idx = self._batch()
        objs = [self.train[i] for i in idx]
        mode = "box" if self._rng.random() < self.box_probability else "point"
        points = []
        for obj in objs:
            emb = self.data.embeddings[obj.image_key]
            p = sample_point_in_mask(obj.mask, self._rng)
            points.append(scale_coords(p, emb.original_size, emb.input_size))
        boxes = torch.from_numpy(np.stack([self._boxes[i] for i in idx])).to(self.device)
        pts = torch.from_numpy(np.stack(points)).to(self.device)
        coords, labels = initial_prompts(mode, boxes, pts)
        embeddings = torch.cat([self._emb[o.image_key] for o in objs])
        valid = torch.stack([self._valid[o.image_key] for o in objs])
        targets = GroundTruthTargets(torch.stack([self._targets[i] for i in idx]))
        gen = torch.Generator(device=self.device).manual_seed(int(self._rng.integers(2**62)))
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        with torch.enable_grad():
            result = prompt_loop(self.student, embeddings, coords, labels, valid, targets, mode, self.loop_cfg,
                                 IMG_SIZE, gen)
            self.optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
        torch.nn.utils.clip_grad_norm_(self._trainable, 1.0)
        self.optimizer.step()
        loss = float(result.loss.detach())
        self.steps += 1
        self.losses.append(loss)
        dt = time.perf_counter() - t0
        self._step_cost = dt if self.steps == 1 else 0.8 * self._step_cost + 0.2 * dt
        self._spent += dt
        return loss

    def adapted_predictor(self) -> EdgeSamPredictor:
        """A new predictor with the current adapted decoder (sharing the base's encoder and
        prior); the base predictor is not changed."""
        if not self._prepared:
            raise RuntimeError("nothing is adapted yet: call prepare() and step() first")
        pe = copy.deepcopy(self.student.prompt_encoder).eval().requires_grad_(False)
        md = copy.deepcopy(self.student.decoder).eval().requires_grad_(False)
        base = self.base
        new = EdgeSamPredictor(base.backend.with_decoder(pe, md), model_name=base.model_name)
        new.prior = base.prior
        new.refine_with_mask_input = base.refine_with_mask_input
        new.source_path = base.source_path
        new.checkpoint_path = getattr(base, "checkpoint_path", None)
        return new

    def finish(self) -> AdaptResult:
        """Measure the adapted decoder on the held-out objects and apply the guard: the result
        is ``accepted`` (its ``predictor`` is the adapted one) only if the held-out mean of box
        and click mIoU did not drop; otherwise ``predictor`` is the base."""
        if self._finished is not None:
            return self._finished
        if not self._prepared:
            self.prepare()
        t0 = time.perf_counter()
        adapted = self.adapted_predictor()
        after = measure(adapted, self.heldout, self.data.embeddings)
        self._spent += time.perf_counter() - t0
        accepted = bool(self.steps > 0 and after["mean"] >= self.before["mean"])
        n_obj, n_held = len(self.data.objects), len(self.heldout)
        change = f"held-out IoU {self.before['mean']:.2f} -> {after['mean']:.2f} on {n_held} of your {n_obj} objects"
        if accepted:
            message = f"{change}, {self._spent:.0f} s"
        elif self.steps == 0:
            message = f"no adaptation step ran ({self._spent:.0f} s): kept the base model"
        else:
            message = f"{change}: no better, kept the base model ({self._spent:.0f} s)"
        card = build_card(self, after, accepted)
        self._finished = AdaptResult(
            accepted=accepted, before=dict(self.before), after=after, n_train=len(self.train), n_heldout=n_held,
            seconds=round(self._spent, 2), message=message, predictor=adapted if accepted else self.base,
            card=card, steps=self.steps, adapted=adapted, base=self.base,
        )
        logger.info("adapt: %s", message)
        return self._finished
