"""Command-line interface: ``napari-edgesam <command> ...``.

Each sub-command lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported when the parser is built, so they must not import torch or napari at
module level.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("napari_edgesam.cli.segment", "segment one image from point or box prompts"),
    "info": ("napari_edgesam.cli.info", "show models, cache, backends and devices"),
    "demo": ("napari_edgesam.cli.demo", "open napari with a sample image and a segmented object"),
    "batch": ("napari_edgesam.cli.batch", "segment many images (automatic or from prompt files)"),
    "export": ("napari_edgesam.cli.export", "export a model to ONNX"),
    "train": ("napari_edgesam.cli.train", "distil, fine-tune, evaluate and export models"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-edgesam", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"napari-edgesam {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
