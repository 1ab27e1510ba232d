"""Training configuration: dataclasses with per-field docs, validation, files and overrides.

A config file is JSON (``.json``), TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs PyYAML)
with the sections of :class:`TrainConfig`::

    {"phase": "finetune", "model": {"img_size": 512}, "data": {"images": "imgs", ...}, ...}

Keys starting with ``_`` are comments and ignored. Overrides are ``section.field=value`` strings; values are parsed as JSON when possible
(``optim.lr=1e-4``, ``data.augment=["hflip"]``, ``model.checkpoint=null``), else kept as text.
Reading files, overrides and typed construction from plain data: :mod:`.config_files`.
Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .config_files import ConfigError, apply_override, build_dataclass, read_config_file

PHASES = ("phase1", "phase2", "finetune")
TEACHER_KINDS = ("none", "sam", "edgesam")
SAM_VARIANTS = ("vit_b", "vit_l", "vit_h")
DATA_KINDS = ("folder", "sa1b")
AUGMENTATIONS = ("hflip", "vflip", "rot90", "scale", "intensity")
#: Augmentations that need the label-map pipeline (data.kind "folder").
PIPELINE_AUGMENTATIONS = ("rot90", "scale", "intensity")
#: Size regimes of the rich synthetic generator (:data:`.synthetic.REGIMES`).
SYNTHETIC_REGIMES = ("tiny", "small", "medium", "large", "huge", "mixture")
PROMPT_TYPES = ("box", "point")
AMP_MODES = ("auto", "off", "bf16", "fp16")
POINT_SUPERVISION = ("all", "min")


@dataclass
class ModelConfig:
    """The student (always the EdgeSAM architecture)."""

    #: Side of the square model input; a multiple of 32. 1024 is EdgeSAM's; smaller sizes train
    #: faster (embeddings ``img_size/16``, low-res masks ``img_size/4``) for tests and CPU recipes.
    img_size: int = 1024
    #: Neck upsampling of the stride-32 features: "bicubic" (PyTorch reference) or "bilinear".
    upsample_mode: str = "bicubic"
    #: Initial weights: an official/exported EdgeSAM ``.pth`` or one of our training checkpoints.
    checkpoint: str | None = None
    #: Copy the teacher's prompt encoder and mask decoder into the student (phase 2 recipe).
    init_decoder_from_teacher: bool = False
    #: Train the image encoder (False: frozen, embeddings computed without gradients).
    train_encoder: bool = True
    #: Train the mask decoder (the prompt encoder's point/box embeddings are always frozen).
    train_decoder: bool = True
    #: Train the prompt encoder's mask path (``mask_downscaling``: the low-res logits of an
    #: earlier decode, given back as ``mask_input`` when refining). Use with
    #: ``loop.mask_input_in_refinement``; a student whose mask path was never trained gets
    #: worse, not better, when a mask input is passed.
    train_mask_input: bool = False
    #: Keep BatchNorm layers in eval mode (running statistics frozen; use with small batches
    #: when starting from trained weights).
    freeze_bn: bool = False


@dataclass
class TeacherConfig:
    """The teacher: SAM ViT-B/L/H (official or micro-sam checkpoint) or EdgeSAM itself."""

    #: "sam", "edgesam" or "none" (ground-truth fine-tuning needs no teacher).
    kind: str = "none"
    #: SAM variant for kind "sam": "vit_b", "vit_l" or "vit_h".
    variant: str = "vit_h"
    #: Teacher weights (official SAM, micro-sam or EdgeSAM ``.pth``); None = random (tests only).
    checkpoint: str | None = None
    #: Permit full unpickling of a trusted teacher file (some micro-sam checkpoints need it).
    allow_unsafe: bool = False
    #: Folder of precomputed float16 teacher embeddings (``precompute`` writes it); None =
    #: compute the teacher's embeddings on the fly.
    cache_dir: str | None = None
    #: Images per teacher forward pass while precomputing.
    batch_size: int = 4


@dataclass
class DataConfig:
    """Training images and (optional) instance labels."""

    #: "folder" (images + optional label images) or "sa1b" (``*.jpg`` + ``*.json`` with RLE masks).
    kind: str = "folder"
    #: Folder of images (searched recursively for tif/tiff/png/jpg/jpeg/bmp/npy; jpg for sa1b).
    images: str = ""
    #: Folder of instance label images matched by file stem (folder), or of the SA-1B ``.json``
    #: files (sa1b; default: beside the images). None: no labels.
    labels: str | None = None
    #: Label file stems tried for image ``x``: ``x`` + each suffix.
    label_suffixes: list[str] = field(default_factory=lambda: ["", "_labels", "_label", "_masks", "_mask"])
    #: Instances sampled per image and iteration (the paper: 16).
    max_instances: int = 16
    #: Instances smaller than this (pixels in the model-input frame) are skipped.
    min_instance_area: int = 16
    #: Channel axis of multi-channel images (None: guessed).
    channel_axis: int | None = None
    #: Intensity percentiles stretched to 0..255 for non-uint8 images.
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    #: Augmentations (not allowed with precomputed teacher embeddings): "hflip", "vflip"
    #: (random flips), "rot90" (random quarter turns), "scale" (rescale so that objects span
    #: ``object_size_px`` of the frame, crop around an object, pad bottom/right like the
    #: predictor), "intensity" (gamma, contrast, offset, uneven background, dim objects, blur,
    #: Poisson/Gaussian noise). See :mod:`napari_edgesam.training.augment`. "rot90", "scale" and
    #: "intensity" need ``kind`` "folder".
    augment: list[str] = field(default_factory=list)
    #: "scale": object diameters (px of a 1024 frame; scaled with ``model.img_size``) drawn
    #: log-uniformly as ``[low, high]``; the image's median object diameter is mapped to the draw.
    object_size_px: list[float] = field(default_factory=lambda: [6.0, 400.0])
    #: "scale": fraction of samples rescaled; the others are whole images filling the frame.
    scale_probability: float = 0.8
    #: "scale": probability of keeping a draw that shrinks the whole image below the frame (a
    #: small padded canvas); otherwise such a draw is raised to fill the frame.
    canvas_probability: float = 0.25
    #: Rich synthetic nuclei images (:func:`napari_edgesam.training.synthetic.rich_synthetic_nuclei`)
    #: generated per epoch beside the folder's images: new ones every epoch (seeded by the run
    #: seed, the epoch and the index), at the frame size, radii scaled with ``model.img_size``.
    synthetic_images: int = 0
    #: Size regimes the synthetic images draw from, uniformly (empty: all of
    #: ``tiny small medium large huge mixture``, radius 3-200 px of a 1024 frame).
    synthetic_regimes: list[str] = field(default_factory=list)
    #: DataLoader worker processes.
    num_workers: int = 0
    #: Use only the first ``limit`` images (sorted by path); None = all.
    limit: int | None = None


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up and a cosine decay, per step."""

    epochs: int = 10
    #: Images per optimizer step over all processes (the paper's "batch"); each of the
    #: ``world_size`` processes takes ``batch_size / world_size`` (must divide evenly).
    batch_size: int = 1
    #: Peak learning rate (after warm-up).
    lr: float = 1e-4
    #: Final learning rate of the cosine decay.
    min_lr: float = 1e-5
    #: Warm-up length in epochs (fractions allowed).
    warmup_epochs: float = 0.0
    #: Learning rate at step 0 of the warm-up.
    warmup_start_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: Max global gradient norm (0: no clipping).
    clip_grad: float = 0.0


@dataclass
class LoopConfig:
    """Prompt-in-the-loop distillation / fine-tuning (phase 2 and finetune)."""

    #: Prompt kinds drawn per iteration ("box": all instance boxes, token 0 supervised;
    #: "point": one point per instance, all 4 masks supervised).
    prompt_types: list[str] = field(default_factory=lambda: ["box", "point"])
    #: Probability of a box iteration when both kinds are enabled.
    box_probability: float = 0.5
    #: Refinement rounds; each adds one FP/FN point (1 refinement = 2 decode iterations).
    num_refinements: int = 1
    #: Fewer disagreeing pixels than this: the refinement point is labelled -2 (ignored).
    #: Counted on the 256 x 256 low-res grid of a 1024 input; scaled with the grid area at
    #: other input sizes (e.g. 10 -> 2.5, rounded to 2, at 512).
    min_error_pixels: int = 10
    bce_weight: float = 5.0
    dice_weight: float = 5.0
    #: Weight of the encoder MSE (student vs teacher embedding) added in phase 2 (paper: 0).
    embedding_loss_weight: float = 0.0
    #: Point iterations: "all" supervises every mask token, "min" only the best one (SAM's rule;
    #: fine-tuning on ground truth only).
    point_supervision: str = "all"
    #: Refinement decodes also get the previous decode's low-res logits (of the mask the
    #: refinement point was sampled from) as ``mask_input``, as SAM's interactive training and
    #: every interactive tool (the widget, 3D propagation) use the model.
    mask_input_in_refinement: bool = False


@dataclass
class RunConfig:
    """Where and how the run executes."""

    out_dir: str = "runs/edgesam"
    seed: int = 0
    #: "auto" (cuda if available), "cpu" or "cuda".
    device: str = "auto"
    #: Mixed precision on GPU: "auto" (bf16 where supported), "off", "bf16", "fp16".
    amp: str = "auto"
    #: Stop after this many optimizer steps in total (the LR schedule is unchanged); None = all.
    max_steps: int | None = None
    #: Write ``last.pt`` every N steps (0: at the end of each epoch only).
    checkpoint_every: int = 0
    #: Also keep ``epoch_XXX.pt`` after each epoch.
    keep_epoch_checkpoints: bool = False
    #: Log every N steps (to ``log.jsonl`` and, if installed, TensorBoard).
    log_every: int = 10
    #: tqdm progress bars on rank 0.
    progress: bool = True
    #: Write TensorBoard events when ``torch.utils.tensorboard`` is importable.
    tensorboard: bool = True
    #: Continue from ``out_dir/last.pt`` if it exists.
    resume: bool = True
    #: torch intra-op threads (None: torch's default).
    num_threads: int | None = None
    #: Write the official-layout ``model.pth`` (+ ``model.json``) when training finishes.
    export_at_end: bool = True


@dataclass
class TrainConfig:
    """A whole training run."""

    #: "phase1" (encoder distillation), "phase2" (prompt-in-the-loop distillation) or
    #: "finetune" (prompt-in-the-loop on ground-truth masks).
    phase: str = "finetune"
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested plain data; unknown keys and wrong types raise :class:`ConfigError`."""
        return build_dataclass(cls, data, "")

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
        """Read a JSON/TOML/YAML file, apply ``section.field=value`` overrides, validate."""
        data = read_config_file(path)
        for item in overrides or []:
            apply_override(data, item)
        cfg = cls.from_dict(data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data (JSON-serialisable), the inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: list[str]) -> TrainConfig:
        """A validated copy with ``section.field=value`` overrides applied."""
        data = self.to_dict()
        for item in overrides:
            apply_override(data, item)
        cfg = TrainConfig.from_dict(data)
        cfg.validate()
        return cfg

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check ranges and cross-field consistency; raise :class:`ConfigError` naming the field."""
        m, t, d, o, lp, r = self.model, self.teacher, self.data, self.optim, self.loop, self.run
        _choice("phase", self.phase, PHASES)
        if not (64 <= m.img_size <= 2048 and m.img_size % 32 == 0):
            raise ConfigError(f"model.img_size must be a multiple of 32 in 64..2048, got {m.img_size}")
        _choice("model.upsample_mode", m.upsample_mode, ("bicubic", "bilinear"))
        _choice("teacher.kind", t.kind, TEACHER_KINDS)
        _choice("teacher.variant", t.variant, SAM_VARIANTS)
        _positive("teacher.batch_size", t.batch_size)
        _choice("data.kind", d.kind, DATA_KINDS)
        if not d.images:
            raise ConfigError("data.images is empty: set it to the folder of training images")
        for a in d.augment:
            _choice("data.augment entry", a, AUGMENTATIONS)
        if len(d.object_size_px) != 2 or not 0 < d.object_size_px[0] <= d.object_size_px[1]:
            raise ConfigError(f"data.object_size_px must be [low, high] with 0 < low <= high, got {d.object_size_px}")
        for name in ("scale_probability", "canvas_probability"):
            if not 0.0 <= getattr(d, name) <= 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1], got {getattr(d, name)}")
        _non_negative("data.synthetic_images", d.synthetic_images)
        for g in d.synthetic_regimes:
            _choice("data.synthetic_regimes entry", g, SYNTHETIC_REGIMES)
        if d.kind != "folder" and (d.synthetic_images or set(d.augment) & set(PIPELINE_AUGMENTATIONS)):
            raise ConfigError(
                f"data.augment {sorted(set(d.augment) & set(PIPELINE_AUGMENTATIONS))} and data.synthetic_images "
                f"need data.kind 'folder' (label images), not {d.kind!r}: remove them or convert the data"
            )
        _positive("data.max_instances", d.max_instances)
        _non_negative("data.min_instance_area", d.min_instance_area)
        _non_negative("data.num_workers", d.num_workers)
        if d.limit is not None:
            _positive("data.limit", d.limit)
        if len(d.percentiles) != 2 or not 0 <= d.percentiles[0] < d.percentiles[1] <= 100:
            raise ConfigError(f"data.percentiles must be [low, high] with 0 <= low < high <= 100, got {d.percentiles}")
        _positive("optim.epochs", o.epochs)
        _positive("optim.batch_size", o.batch_size)
        for name in ("lr", "min_lr", "warmup_epochs", "warmup_start_lr", "weight_decay", "clip_grad"):
            _non_negative(f"optim.{name}", getattr(o, name))
        if o.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        if o.min_lr > o.lr:
            raise ConfigError(f"optim.min_lr ({o.min_lr}) must not exceed optim.lr ({o.lr})")
        if o.warmup_epochs > o.epochs:
            raise ConfigError(f"optim.warmup_epochs ({o.warmup_epochs}) exceeds optim.epochs ({o.epochs})")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        if not lp.prompt_types:
            raise ConfigError("loop.prompt_types is empty: use ['box'], ['point'] or both")
        for p in lp.prompt_types:
            _choice("loop.prompt_types entry", p, PROMPT_TYPES)
        if not 0.0 <= lp.box_probability <= 1.0:
            raise ConfigError(f"loop.box_probability must be in [0, 1], got {lp.box_probability}")
        _non_negative("loop.num_refinements", lp.num_refinements)
        _non_negative("loop.min_error_pixels", lp.min_error_pixels)
        for name in ("bce_weight", "dice_weight", "embedding_loss_weight"):
            _non_negative(f"loop.{name}", getattr(lp, name))
        _choice("loop.point_supervision", lp.point_supervision, POINT_SUPERVISION)
        _choice("run.amp", r.amp, AMP_MODES)
        if r.device not in ("auto", "cpu", "cuda") and not r.device.startswith("cuda:"):
            raise ConfigError(f"run.device must be 'auto', 'cpu' or 'cuda', got {r.device!r}")
        if r.max_steps is not None:
            _positive("run.max_steps", r.max_steps)
        _non_negative("run.checkpoint_every", r.checkpoint_every)
        _positive("run.log_every", r.log_every)
        if not r.out_dir:
            raise ConfigError("run.out_dir is empty")
        self._validate_phase()
        return self

    def _validate_phase(self) -> None:
        t, d, m, lp = self.teacher, self.data, self.model, self.loop
        distill = self.phase in ("phase1", "phase2")
        if distill and t.kind == "none":
            raise ConfigError(
                f"phase {self.phase!r} distils a teacher: set teacher.kind to 'sam' or 'edgesam'"
            )
        if self.phase == "phase1" and not m.train_encoder:
            raise ConfigError("phase1 trains only the image encoder: model.train_encoder must be true")
        if self.phase == "finetune" and d.kind == "folder" and not d.labels:
            raise ConfigError("finetune needs ground truth: set data.labels to the folder of label images")
        if not (m.train_encoder or m.train_decoder or m.train_mask_input):
            raise ConfigError("nothing to train: model.train_encoder, model.train_decoder and "
                              "model.train_mask_input are all false")
        if m.train_mask_input and not self.loop.mask_input_in_refinement:
            raise ConfigError("model.train_mask_input needs loop.mask_input_in_refinement=true "
                              "(otherwise the mask path never sees a mask input)")
        if t.cache_dir and d.synthetic_images:
            raise ConfigError(
                "data.synthetic_images cannot be used with teacher.cache_dir (generated images have no "
                "precomputed embeddings): set data.synthetic_images=0 or remove teacher.cache_dir"
            )
        if t.cache_dir and d.augment:
            raise ConfigError(
                "data.augment cannot be used with teacher.cache_dir (precomputed embeddings "
                "are of the un-augmented images): remove one of them"
            )
        if m.init_decoder_from_teacher and t.kind == "none":
            raise ConfigError("model.init_decoder_from_teacher needs a teacher (teacher.kind)")
        if lp.point_supervision == "min" and self.phase != "finetune":
            raise ConfigError("loop.point_supervision='min' is only for phase 'finetune'")

    # -- derived -----------------------------------------------------------------------------
    @property
    def embed_size(self) -> int:
        """Side of the image embedding grid (``img_size / 16``)."""
        return self.model.img_size // 16

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (``img_size / 4``)."""
        return self.model.img_size // 4


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
