"""``napari-edgesam train``: distil, fine-tune, precompute teacher embeddings, export.

    napari-edgesam train phase1     --config FILE [section.field=value ...]
    napari-edgesam train phase2     --config FILE [...]
    napari-edgesam train finetune   --config FILE [...]
    napari-edgesam train precompute --config FILE [...]
    napari-edgesam train export     --checkpoint last.pt --output model.pth [--onnx DIR]
    napari-edgesam train evaluate   --model M --images DIR --labels DIR [--out-json F]
    napari-edgesam train prior      --images DIR --labels DIR --model M --output X.prior.pth [...]
    napari-edgesam train prior-evaluate --images DIR --labels DIR --model M --prior X.prior.pth [--clicks]
    napari-edgesam train adapt      --images DIR --labels DIR --model M -o OUT.pth [--max-seconds S] [--max-objects N]
    napari-edgesam train recipe nuclei {prepare,evaluate,package} ...

``FILE`` is a JSON/TOML/YAML file or the name of a shipped config (``napari-edgesam train
configs`` lists them). Multi-process: ``torchrun --nproc_per_node N -m napari_edgesam train
phase2 --config FILE``. ``prior`` and ``prior-evaluate`` train and evaluate the granularity
prior (box head; :mod:`napari_edgesam.training.prior`); ``recipe nuclei`` prepares the data,
evaluates and packages the shipped ``edgesam-nuclei`` model
(:mod:`napari_edgesam.training.recipes.nuclei`). The training modules define each step's
options (``add_arguments(parser)``) and work (``run(args)``); only this module builds the parser,
and only :func:`napari_edgesam.cli.main` parses it and configures logging. This module imports
torch only when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

PHASE_COMMANDS = ("phase1", "phase2", "finetune", "precompute")
#: step -> module with ``add_arguments(parser)`` and ``run(args)`` (imported when the step is used)
MODULE_COMMANDS = {
    "evaluate": "napari_edgesam.training.evaluate",
    "prior": "napari_edgesam.training.prior.train_prior",
    "prior-evaluate": "napari_edgesam.training.prior.evaluate_prior",
    "adapt": "napari_edgesam.training.adapt.cli",
}
#: recipe name -> its module (``add_arguments(parser)`` adds its sub-steps, ``run(args)``)
RECIPES = {
    "nuclei": "napari_edgesam.training.recipes.nuclei",
}
STEPS = (*PHASE_COMMANDS, "export", "configs", *MODULE_COMMANDS, "recipe")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "training" / "configs"


def shipped_configs() -> dict[str, Path]:
    """Name -> path of the configs shipped in ``napari_edgesam/training/configs``."""
    if not CONFIG_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(CONFIG_DIR.iterdir()) if p.suffix in (".json", ".toml", ".yaml", ".yml")}


def resolve_config(name: str) -> Path:
    """A config path, or the shipped config called ``name``."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if name in shipped:
        return shipped[name]
    raise FileNotFoundError(f"config {name!r} is neither a file nor a shipped config ({sorted(shipped)})")


def default_log_level() -> int:
    """Training steps log their progress: INFO on the main process, WARNING on the others."""
    return logging.INFO if _is_main() else logging.WARNING


class _StepParser(argparse.ArgumentParser):
    """A step's parser whose arguments are added only when the step is parsed, so that building
    the CLI imports no torch: ``arguments_from`` names a module with ``add_arguments(parser)``."""

    def __init__(self, *args, arguments_from: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._arguments_from = arguments_from

    def parse_known_args(self, args=None, namespace=None):
        if self._arguments_from is not None:
            name, self._arguments_from = self._arguments_from, None
            try:
                module = importlib.import_module(name)
            except ImportError as err:
                self.error(f"this step is not available in this installation: {err}")
            module.add_arguments(self)
            self.set_defaults(_step_module=name)
        return super().parse_known_args(args, namespace)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="train_command", metavar="STEP", parser_class=_StepParser)
    helps = {
        "phase1": "encoder distillation (MSE to the teacher's embeddings)",
        "phase2": "prompt-in-the-loop distillation (boxes/points + refinement)",
        "finetune": "prompt-in-the-loop fine-tuning on ground-truth instance masks",
        "precompute": "precompute the teacher's float16 embeddings (resumable)",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", required=True, help="config file, or the name of a shipped config")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-4 run.out_dir=runs/x")
        p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p = sub.add_parser("export", help="export a checkpoint to the official EdgeSAM .pth (and ONNX)")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (last.pt) or EdgeSAM .pth")
    p.add_argument("--output", required=True, help="output .pth (official layout; a .json is written beside it)")
    p.add_argument("--onnx", metavar="DIR", default=None, help="also write encoder/decoder ONNX files into DIR")
    sub.add_parser("configs", help="list the shipped configs")
    sub.add_parser("evaluate", arguments_from=MODULE_COMMANDS["evaluate"],
                   help="evaluate a model (mIoU with boxes / points)",
                   description="mIoU of a model with box and point prompts (and corrective points) on labelled images")
    sub.add_parser("prior", arguments_from=MODULE_COMMANDS["prior"],
                   help="train the granularity prior (box head on the frozen encoder)",
                   description="train the granularity prior (box head on the frozen encoder); writes X.prior.pth")
    sub.add_parser("prior-evaluate", arguments_from=MODULE_COMMANDS["prior-evaluate"],
                   help="box recall/AP50 (and single-click mIoU) of a granularity prior",
                   description="box recall@0.5 and AP50 (and, with --clicks, single-click mIoU) of a prior")
    sub.add_parser("adapt", arguments_from=MODULE_COMMANDS["adapt"],
                   help="adapt a model to labelled images (decoder fine-tuning with a held-out guard)",
                   description="adapt a model to labelled images within a time budget; writes OUT.pth + card")
    p = sub.add_parser("recipe", help="the steps of a shipped model's recipe (data, evaluation, packaging)",
                       description="the steps of a shipped model's recipe: RECIPE STEP ...")
    recipes = p.add_subparsers(dest="recipe", metavar="RECIPE", parser_class=_StepParser, required=True)
    recipes.add_parser("nuclei", arguments_from=RECIPES["nuclei"],
                       help="edgesam-nuclei: prepare the data, evaluate on the held-out half, package",
                       description="the edgesam-nuclei recipe: prepare the data, evaluate on the held-out half, package")


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "train_command", None)
    if cmd is None:
        print(f"usage: napari-edgesam train {{{','.join(STEPS)}}} ...", file=sys.stderr)
        return 2
    if cmd in MODULE_COMMANDS or cmd == "recipe":
        return int(importlib.import_module(args._step_module).run(args) or 0)
    if cmd == "configs":
        for name, path in shipped_configs().items():
            print(f"{name:28s} {path}")
        return 0
    if cmd == "export":
        from ..training.export import export_checkpoint

        paths = export_checkpoint(args.checkpoint, args.output, onnx_dir=args.onnx)
        for kind, path in paths.items():
            print(f"{kind}: {path}")
        return 0
    return _run_phase(cmd, args)


def _run_phase(cmd: str, args: argparse.Namespace) -> int:
    import json

    from ..training.config import TrainConfig

    overrides = list(args.overrides)
    if cmd != "precompute":
        overrides.append(f"phase={cmd}")
    cfg = TrainConfig.from_file(resolve_config(args.config), overrides)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if cmd == "precompute":
        return _precompute(cfg)
    from ..training.distributed import shutdown_distributed
    from ..training.trainer import train

    try:
        result = train(cfg)
    finally:
        shutdown_distributed()
    if _is_main():
        state = "finished" if result.finished else "stopped"
        print(f"{state} at step {result.step} (epoch {result.epoch}); checkpoint: {result.checkpoint}")
        if result.exported:
            print(f"exported: {result.exported}")
    return 0


def _precompute(cfg) -> int:
    from ..training.data import TrainingDataset
    from ..training.distributed import barrier, init_distributed, shutdown_distributed
    from ..training.records import find_records
    from ..training.teacher import build_teacher
    from ..training.teacher_cache import TeacherEmbeddingCache, precompute_embeddings

    if cfg.teacher.kind == "none" or not cfg.teacher.cache_dir:
        raise ValueError("precompute needs teacher.kind ('sam' or 'edgesam') and teacher.cache_dir")
    info, device = init_distributed(cfg.run.device)
    try:
        teacher = build_teacher(cfg.teacher, cfg.model.img_size, seed=cfg.run.seed + 1)
        if info.is_main:  # rank 0 writes the manifest, the others wait for it
            TeacherEmbeddingCache(cfg.teacher.cache_dir, teacher.name, cfg.model.img_size, create=True)
        barrier()
        cache = TeacherEmbeddingCache(cfg.teacher.cache_dir, teacher.name, cfg.model.img_size)
        data = TrainingDataset(find_records(cfg.data), cfg.data, cfg.model.img_size, cfg.run.seed, with_instances=False)
        n = precompute_embeddings(
            data, teacher, cache, batch_size=cfg.teacher.batch_size, info=info, device=device,
            progress=cfg.run.progress, num_workers=cfg.data.num_workers,
        )
    finally:
        shutdown_distributed()
    print(f"rank {info.rank}: wrote {n} embeddings to {cache.root}")
    return 0


def _is_main() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")

