"""``napari-edgesam segment IMAGE (--box ... | --point ...) -o labels.tif``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    from ..inference.core.prompts import parse_number

    try:
        values = [parse_number(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if len(values) not in n:
        raise argparse.ArgumentTypeError(f"{what} needs {' or '.join(map(str, n))} numbers, got {text!r}")
    return values


def _point(text: str) -> list[float]:
    values = _floats(text, (2, 3), "--point")
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(
            f"--point label must be 1 (positive) or 0 (negative), got {values[2]:g} in {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="2D image (TIFF, PNG, JPEG or .npy); grey, RGB or multi-channel")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                   type=lambda s: _floats(s, (4,), "--box"),
                   help="box in pixels; repeat for several objects (one object per box)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   type=_point,
                   help="point in pixels, label 1 (positive, default) or 0 (negative); all points "
                        "(with at most one box) describe one object")
    p.add_argument("-o", "--output", required=True, help="output label TIFF, .tif or .tiff (written atomically)")
    p.add_argument("--model", default="auto", help="model name or .pth/.onnx path (default: best available)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"])
    p.add_argument("--device", default="auto")
    p.add_argument("--prior", default=None, metavar="PATH|auto",
                   help="granularity prior (box head) so that one click takes the whole object; "
                        "'auto' uses the prior stored beside the model file")
    p.add_argument("--channel", type=int, default=None, help="channel to segment (multi-channel images)")
    p.add_argument("--keep-holes", action="store_true", help="keep interior holes of the masks (default: filled)")
    p.add_argument("--keep-pieces", action="store_true",
                   help="keep every piece of a mask (default: only the piece the prompt points at)")
    p.add_argument("--keep-outside-box", action="store_true",
                   help="keep the parts of a box's mask outside the box (default: the mask ends at the box, "
                        "widened by a pixel and 2%%; also the box the prior joins to a click)")
    p.add_argument("--box-alone", action="store_true",
                   help="decode a box alone (default: a box without positive points is decoded again with its "
                        "centre as a positive point when its first mask holds it)")
    p.add_argument("--autozoom", action="store_true",
                   help="segment each object in a crop rescaled so it has the size the model handles best "
                        "(boxes far from that size, clicks on large objects)")
    p.add_argument("--contrast-limits", default=None, metavar="LOW,HIGH",
                   type=lambda s: _floats(s, (2,), "--contrast-limits"),
                   help="intensity range mapped to 0..255 (default: 0.5-99.5 percentiles)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .._atomic import OutputWriteError, check_output_file, describe_write_error
    from ..inference.batch.io import read_image, write_labels
    from ..inference.loading.api import load_model

    if not args.box and not args.point:
        raise ValueError("give at least one --box or --point")
    if args.point and len(args.box) > 1:
        raise ValueError("points describe one object and go with at most one --box")
    check_output_file(args.output)  # before any work: an empty name, a folder, a path below a file
    if Path(args.output).suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"the output {args.output} must end in .tif or .tiff (labels are written as TIFF)")
    if not Path(args.image).exists():
        raise FileNotFoundError(f"image not found: {args.image}")
    if Path(args.output).exists() and Path(args.output).resolve() == Path(args.image).resolve():
        raise ValueError(f"the output {args.output} is the input image: choose another file name (e.g. labels.tif)")
    img = read_image(args.image)
    if img.is_stack:
        raise ValueError(
            f"{args.image} is a stack of shape {img.data.shape}; segment handles 2D images "
            "(use napari-edgesam batch, or the napari plugin for stacks)"
        )
    image = img.data
    from ._choice import resolve_model

    model = resolve_model(args.model, args.backend)
    predictor = load_model(model, backend=args.backend, device=args.device, prior=args.prior)
    t0 = time.perf_counter()
    predictor.set_image(image, channel=args.channel, contrast_limits=args.contrast_limits)
    t1 = time.perf_counter()
    h, w = predictor.embedding.original_size
    labels = np.zeros((h, w), np.uint16)
    fill, one, cut = not args.keep_holes, not args.keep_pieces, not args.keep_outside_box
    zoom = None
    if args.autozoom:
        from ..inference.core.autozoom import AutoZoom

        zoom = AutoZoom(predictor, image, embedding=predictor.embedding, proposals=predictor.proposals,
                        box_centre=not args.box_alone,
                        channel=args.channel, contrast_limits=args.contrast_limits)
    objects = []
    if args.point:
        coords = np.array([p[:2] for p in args.point], np.float32)
        point_labels = np.array([p[2] if len(p) == 3 else 1.0 for p in args.point])  # checked: 0 or 1
        box = np.array(args.box[0], np.float32) if args.box else None
        objects.append((coords, point_labels, box))
    else:
        objects += [(None, None, np.array(b, np.float32)) for b in args.box]
    for k, (coords, point_labels, box) in enumerate(objects, start=1):
        single_click = coords is not None and box is None and len(coords) == 1 and point_labels[0] == 1
        if zoom is not None:
            mask = zoom.segment(coords, point_labels, box, fill_holes=fill, one_piece=one, clip_box=cut).mask
        elif single_click and predictor.prior is not None:
            mask, score, _ = predictor.segment_click(coords[0], fill_holes=fill, one_piece=one, clip_box=cut)
        else:
            mask, score, _ = predictor.segment(coords, point_labels, box, fill_holes=fill, one_piece=one,
                                               clip_box=cut, box_centre=not args.box_alone)
        labels[mask & (labels == 0)] = k
    t2 = time.perf_counter()
    present = np.zeros(len(objects) + 1, bool)
    present[np.unique(labels)] = True
    empty = [k for k in range(1, len(objects) + 1) if not present[k]]
    if empty:  # said, not silent (as batch records them): a tiny box, or covered by an earlier object
        import sys

        which = ", ".join(f"#{k} ({'--box ' + ','.join(f'{v:g}' for v in args.box[k - 1]) if not args.point else 'the points'})"
                          for k in empty[:10])
        print(f"napari-edgesam segment: warning: {len(empty)} of {len(objects)} object(s) came out empty "
              f"(no pixels, or all covered by earlier objects): {which}", file=sys.stderr)
    try:
        write_labels(args.output, labels)
    except OSError as err:
        raise OutputWriteError(describe_write_error(args.output, err)) from None
    print(
        f"{args.output}: {len(objects) - len(empty)} object(s), {int((labels > 0).sum())} pixels "
        f"[model {predictor.model_name}, {predictor.backend.name}; embed {t1 - t0:.2f} s, "
        f"decode {1000 * (t2 - t1):.0f} ms]"
    )
    return 0
