"""Command-line interface: ``napari-edgesam <command> ...``.

Each sub-command lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported when the parser is built, so they must not import torch or napari at
module level.

This is the package's one command-line entry point (``napari-edgesam``, ``python -m
napari_edgesam``): training, the granularity prior and the recipes are steps of ``train``, and
logging is configured here only (:mod:`.logs`); a command module may define
``default_log_level() -> int`` (training: INFO on the main process).

Errors: every error a command raises is printed as one line, ``napari-edgesam <command>: error:
<what, naming the file> [hint]``, exit status 1; ``--debug`` shows the traceback instead.
Ctrl+C exits with status 130.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from .logs import configure_logging

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("napari_edgesam.cli.segment", "segment one image from point or box prompts"),
    "info": ("napari_edgesam.cli.info", "show models, cache, backends and devices"),
    "demo": ("napari_edgesam.cli.demo", "open napari with a sample image and a segmented object"),
    "batch": ("napari_edgesam.cli.batch", "segment many images (automatic or from prompt files)"),
    "export": ("napari_edgesam.cli.export", "export a model to ONNX"),
    "gate": ("napari_edgesam.cli.gate", "check an int8 encoder's masks against float32 on held-out data"),
    "train": ("napari_edgesam.cli.train", "distil, fine-tune, evaluate and export models; train priors; recipes"),
}


DESCRIPTION = ("Segment images with EdgeSAM from the command line. "
               "Run 'napari-edgesam COMMAND --help' for the options of a command.")

#: errno -> what to do about it
_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EROFS: "the file system is read-only: choose another path",
    errno.ENOENT: "check the path",
    errno.EISDIR: "a folder was given where a file is expected",
    errno.ENOTDIR: "a file was given where a folder is expected",
}


def error_line(err: BaseException) -> str:
    """One line describing ``err`` for a user: the file and the problem, with a hint."""
    if isinstance(err, OSError) and err.strerror and len(err.args) >= 2:
        where = err.filename if err.filename is not None else ""
        text = f"{where}: {err.strerror}" if where else err.strerror
        hint = _HINTS.get(err.errno)
        if err.filename2 is not None:
            text += f" (and {err.filename2})"
        text += f" ({hint})" if hint else ""
    elif isinstance(err, (ValueError, OSError, RuntimeError)) and str(err):
        text = str(err)  # ours say what is wrong and what to do
    else:
        text = f"{type(err).__name__}: {err} (unexpected; run with --debug for the traceback and report it)"
    return " ".join(text.split())  # one line


def _add_debug(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback of an error (for bug reports)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-edgesam", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    _add_debug(parser, False)
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
        _add_debug(p, argparse.SUPPRESS)  # also accepted after the command
        p.set_defaults(_run=module.run, _module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = getattr(args, "_module", None)
    default_level = getattr(module, "default_log_level", None)
    configure_logging(args.verbose, default_level() if default_level else logging.WARNING)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"napari-edgesam {args.command}: cancelled", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for the user, the traceback with --debug
        if args.debug:
            raise
        print(f"napari-edgesam {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
