"""``python -m napari_edgesam.training.prior {train,evaluate} ...``."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import evaluate_prior, train_prior

    parser = argparse.ArgumentParser(prog="python -m napari_edgesam.training.prior",
                                     description="train or evaluate the granularity prior (box head)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, text in (("train", train_prior, "train a box head on the frozen encoder"),
                               ("evaluate", evaluate_prior, "box recall/AP50 (and click mIoU) of a head")):
        p = sub.add_parser(name, help=text, description=text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"prior {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
