"""``napari-edgesam train adapt``: adapt a model to labelled images and write the adapted
model (``OUT.pth``, loadable by ``load_model``) with its card (``OUT.json``) and prior beside it.

    napari-edgesam train adapt --images DIR --labels DIR --model BASE -o OUT.pth
                               [--max-seconds S] [--max-objects N] [--params head|decoder]

The held-out objects' box and click mIoU before and after are printed; when the guard rejects
the adaptation nothing is written (exit status 1) unless ``--force``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``napari-edgesam train adapt`` (parsed by :func:`napari_edgesam.cli.main`)."""
    ap.add_argument("--images", required=True, help="folder of images (planes, or Z x H x W stacks)")
    ap.add_argument("--labels", required=True, help="folder of instance label images (matched by file stem)")
    ap.add_argument("--model", required=True, help="the base model: a registered name or a .pth file")
    ap.add_argument("-o", "--output", required=True, type=Path, help="the adapted model's .pth (card and prior beside it)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time budget in seconds (default 60)")
    ap.add_argument("--max-objects", type=int, default=None, help="adapt on at most N objects (a seeded random choice)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps")
    ap.add_argument("--params", choices=("head", "decoder"), default="head",
                    help="which parameters move: the decoder's output head (default) or the whole decoder")
    ap.add_argument("--holdout", type=float, default=0.2, help="part of the objects held out for the guard (default 0.2)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per --params)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    ap.add_argument("--force", action="store_true", help="write the adapted model even if the guard rejects it")


def run(args: argparse.Namespace) -> int:
    """Run ``train adapt``; returns the exit status (1 when the guard rejected the result)."""
    from . import require_torch

    require_torch()
    from ...inference.loading.with_prior import load_predictor
    from .folder import data_from_folder
    from .run import adapt
    from .save import write_adapted

    out = Path(args.output)
    if out.suffix.lower() != ".pth":
        raise ValueError(f"--output must be a .pth file, got {out}")
    if args.max_objects is not None and args.max_objects < 2:
        raise ValueError(f"--max-objects must be at least 2 (one to learn from, one to check on), got {args.max_objects}")
    base_file = Path(args.model)
    if base_file.is_file() and out.resolve() in (base_file.resolve(),
                                                 base_file.with_name(f"{base_file.stem}.prior.pth").resolve()):
        raise ValueError(f"--output {out} would overwrite the base model {base_file} (or its prior): "
                         "write the adapted model to another file")
    if not args.max_seconds > 0:
        raise ValueError(f"--max-seconds must be a number of seconds > 0, got {args.max_seconds}")
    if not 0.0 < args.holdout < 1.0:
        raise ValueError(f"--holdout must be between 0 and 1 (the part of the objects held out), got {args.holdout}")
    data = data_from_folder(args.images, args.labels).limited(args.max_objects, seed=args.seed)
    predictor, _ = load_predictor(args.model, backend="torch", device=args.device)
    print(f"adapting {args.model} on {len(data.objects)} objects of {len(data.image_keys)} images "
          f"(at most {args.max_seconds:g} s, {args.params})", flush=True)
    result = adapt(predictor, data, max_seconds=args.max_seconds, holdout_fraction=args.holdout, seed=args.seed,
                   params=args.params, lr=args.lr, max_steps=args.max_steps)
    b, a = result.before, result.after
    print(f"held-out ({result.n_heldout} objects): box mIoU {b['box']:.3f} -> {a['box']:.3f}, "
          f"click mIoU {b['click']:.3f} -> {a['click']:.3f} ({result.steps} steps, {result.seconds:.1f} s)")
    print(result.message)
    if not result.accepted and not args.force:
        print(f"not written: the adapted model is not better on the held-out objects (--force writes it to {out})")
        return 1
    path = write_adapted(result, out, force=args.force)
    print(f"wrote {path} and {path.with_suffix('.json').name}"
          + (f" and {path.stem}.prior.pth" if path.with_name(f"{path.stem}.prior.pth").is_file() else ""))
    return 0
