"""``napari-edgesam batch INPUT... -o OUTDIR (--auto | --mode boxes [--prior PATH|auto] | --prompts FILE)``.

Segments many images with the same engine as the napari batch widget: labels as TIFF plus a
JSON record per image, ``report.json``/``report.csv`` for the run, images already done are
skipped (``--overwrite`` redoes them). ``--scheduler tcp://host:8786`` runs one task per image on
an existing Dask cluster instead of this process.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

EPILOG = """modes:
  --auto (= --mode auto)  automatic segmentation from a grid of point prompts (any model)
  --mode boxes            automatic segmentation from the boxes of the model's granularity
                          prior (box head): few decoder calls instead of ~1000 points; needs a
                          prior (--prior auto finds <model>.prior.pth beside the model file,
                          e.g. the shipped edgesam-nuclei; train one with
                          napari-edgesam train prior ...)
  --prompts FILE|FOLDER   the objects given in prompt CSV files
  stacks are segmented per slice and merged in 3D; images larger than --tile-size are tiled

prompt CSV formats (--prompts FILE or FOLDER):
  napari-edgesam: image,object,kind,x,y,label,x0,y0,x1,y1[,z]  (x, y in pixels;
                  kind point|box; rows sharing image+object form one object)
  napari Points export: index,axis-0,axis-1   (one object per point)
  napari Shapes export: index,shape-type,vertex-index,axis-0,axis-1  (one box per shape)
  in a FILE, rows without an image column (and napari exports) apply to every input;
  a FOLDER holds per-image files <stem>.csv, <stem>_points.csv or <stem>_shapes.csv

resume: a rerun skips an image only if its record says ok, the parameters that change the result
  are the same, and the image, its prompt rows and the written labels are unchanged (sizes and
  SHA-256 in the record); anything changed or damaged is done again. --threads, --backend and
  --device do not count. Temporary files left by a killed run are removed at the start.

exit status: 0 all images ok or skipped, 1 some images failed (see report.csv), 130 cancelled"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files (.tif .tiff .png .jpg .jpeg .npy), .zarr/OME-Zarr stores, or folders "
                             "(other entries of a folder are listed in the report as ignored)")
    parser.add_argument("-o", "--out-dir", required=True, metavar="OUTDIR", help="output folder")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--auto", action="store_true", help="automatic segmentation of every object (point grid)")
    mode.add_argument("--mode", choices=("auto", "boxes"), default=None,
                      help="automatic segmentation from a point grid (auto, like --auto) or from the "
                           "granularity prior's boxes (boxes)")
    mode.add_argument("--prompts", metavar="FILE", help="prompt CSV file or folder of per-image CSVs")
    parser.add_argument("--pattern", default="*", help="file pattern inside input folders (default: *)")
    parser.add_argument("--model", default="auto", help="model name or .pth/.onnx path (default: the best available)")
    parser.add_argument("--prior", default=None, metavar="PATH|auto",
                        help="--mode boxes: the granularity prior, a .prior.pth/.prior.onnx file, or "
                             "'auto' (default) for the one stored beside the model file")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "openvino"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--channel", type=int, default=None, help="segment this channel of multi-channel images")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    parser.add_argument("--scheduler", metavar="ADDRESS", default=None,
                        help="Dask scheduler address (e.g. tcp://host:8786): one task per image")
    parser.add_argument("--threads", type=int, default=None, help="inference threads per worker (torch, onnxruntime or OpenVINO)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--keep-holes", action="store_true", help="keep interior holes of the masks (default: filled)")
    parser.add_argument("--keep-pieces", action="store_true",
                        help="prompt mode: keep every piece of an object's mask (default: only the piece its "
                             "prompt points at)")
    parser.add_argument("--keep-outside-box", action="store_true",
                        help="prompt mode: keep the parts of a box's mask outside the box (default: the mask "
                             "ends at the box, widened by a pixel and 2%%)")
    parser.add_argument("--box-alone", action="store_true",
                        help="prompt mode: decode a box alone (default: a box without positive points is "
                             "decoded again with its centre as a positive point when its first mask holds it)")
    parser.add_argument("--autozoom", action="store_true",
                        help="--prompts: segment each object in a crop rescaled so it has the size the model "
                             "handles best (instead of tiles)")
    shared = parser.add_argument_group("both automatic modes")
    shared.add_argument("--stability-thresh", type=float, default=None,
                        help="minimum mask stability score (default: 0.9 point grid, 0.85 boxes)")
    shared.add_argument("--nms-thresh", type=float, default=0.7, help="box IoU above which duplicate masks are dropped")
    shared.add_argument("--min-area", type=int, default=25, help="smallest object/island in pixels")
    shared.add_argument("--tile-size", type=int, default=1024, help="tile larger images (0: never)")
    shared.add_argument("--tile-overlap", type=int, default=128)
    auto = parser.add_argument_group("point-grid mode (--auto)")
    auto.add_argument("--points-per-side", type=int, default=32)
    auto.add_argument("--points-per-batch", type=int, default=None,
                      help="prompts per decoder call (default: 64 on a GPU; on a CPU the fastest of "
                           "64/16/4, timed on the first chunks)")
    auto.add_argument("--iou-thresh", type=float, default=0.0, help="IoU-head threshold (0: off)")
    auto.add_argument("--max-area-fraction", type=float, default=0.3,
                      help="masks larger than this fraction of the image are background")
    auto.add_argument("--no-skip-covered", action="store_true",
                      help="decode every grid point (and, in --mode boxes, every box), even those "
                           "inside found objects")
    boxes = parser.add_argument_group("prior-box mode (--mode boxes)")
    boxes.add_argument("--score-thresh", type=float, default=0.3, help="minimum proposal score of a box to decode")
    boxes.add_argument("--max-proposals", type=int, default=500, help="decode at most this many boxes per image (or tile)")
    boxes.add_argument("--min-box-iou", type=float, default=0.5,
                       help="minimum IoU of a mask's bounding box with its prompt box (0: off)")
    boxes.add_argument("--box-margin", type=float, default=0.02,
                       help="masks end at their box widened by this fraction of its side plus a pixel "
                            "(negative: no cut, as far as --min-box-iou allows)")
    boxes.add_argument("--no-zoom", action="store_true",
                       help="do not segment images of small objects again in zoomed tiles (one encoder pass "
                            "per image; faster, less accurate on small objects)")
    boxes.add_argument("--box-centre", action="store_true",
                       help="decode a box again with its centre as a positive point when its mask falls short "
                            "of the box (~1.4x the time; better masks on development images, not on the held-out one)")


def config_from_args(args: argparse.Namespace):
    """The :class:`BatchConfig` described by parsed arguments."""
    from ..inference.automatic.boxes import BoxAutomaticConfig
    from ..inference.automatic.grid import AutomaticConfig
    from ..inference.batch.engine import BatchConfig

    mode = "prompts" if args.prompts else (args.mode or "auto")
    shared = {"nms_thresh": args.nms_thresh, "min_area": args.min_area, "hole_area": args.min_area,
              "tile_size": args.tile_size, "tile_overlap": args.tile_overlap, "fill_holes": not args.keep_holes}
    if args.stability_thresh is not None:
        shared["stability_thresh"] = args.stability_thresh
    automatic = AutomaticConfig(
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        iou_thresh=args.iou_thresh, max_area_fraction=args.max_area_fraction,
        skip_covered=not args.no_skip_covered, **shared,
    )
    boxes = BoxAutomaticConfig(score_thresh=args.score_thresh, max_proposals=args.max_proposals,
                               min_box_iou=args.min_box_iou, skip_covered=not args.no_skip_covered,
                               zoom=not args.no_zoom, box_margin=None if args.box_margin < 0 else args.box_margin,
                               box_centre=args.box_centre, **shared)
    if args.autozoom and mode != "prompts":
        raise ValueError("--autozoom is used with --prompts only")
    if args.box_alone and mode != "prompts":
        raise ValueError("--box-alone is used with --prompts only (prompted boxes); in --mode boxes the prior's "
                         "boxes are decoded alone unless --box-centre")
    if args.box_centre and mode != "boxes":
        raise ValueError(f"--box-centre is used with --mode boxes only (mode is {mode!r}); prompted boxes get "
                         "their centre by default (--box-alone turns it off)")
    if args.prior is not None and mode != "boxes":
        raise ValueError(f"--prior is used with --mode boxes only (mode is {mode!r})")
    return BatchConfig(
        mode=mode, prompts=args.prompts, model=args.model, backend=args.backend, device=args.device,
        automatic=automatic, boxes=boxes, prior=args.prior, channel=args.channel,
        overwrite=args.overwrite, num_threads=args.threads, fill_holes=not args.keep_holes,
        one_piece=not args.keep_pieces, autozoom=args.autozoom, clip_box=not args.keep_outside_box,
        box_centre=not args.box_alone,
    )


def _not_an_image_error(record: logging.LogRecord) -> bool:
    return not getattr(record, "batch_image_error", False)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..inference.batch.engine import run_batch
    from ._choice import resolve_model

    args.model = resolve_model(args.model, args.backend)
    config = config_from_args(args)
    cancel = threading.Event()
    engine_log = logging.getLogger("napari_edgesam.inference.batch.engine")
    if _not_an_image_error not in engine_log.filters:  # failing images are printed below, once
        engine_log.addFilter(_not_an_image_error)
    bar = None if args.no_progress else tqdm(total=0, unit="image", file=sys.stderr, dynamic_ncols=True)

    def error_text(record: dict) -> str:
        err = str(record["error"])
        return err if record["input"] in err else f"{record['input']}: {err}"

    def progress(done: int, total: int, record: dict) -> None:
        if bar is None:
            if record["status"] == "error":
                print(error_text(record), file=sys.stderr)
            return
        bar.total = total
        bar.set_postfix_str(f"{record['key']}: {record['status']}", refresh=False)
        bar.update(done - bar.n)
        if record["status"] == "error":
            bar.write(error_text(record))

    try:
        report = run_batch(args.inputs, args.out_dir, config, pattern=args.pattern,
                           progress=progress, cancel=cancel, scheduler=args.scheduler)
    except KeyboardInterrupt:
        cancel.set()
        print("napari-edgesam batch: cancelled", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    s = report.summary
    ignored = f", {s['ignored']} other entries ignored" if s["ignored"] else ""
    print(f"{s['total']} images: {s['ok']} ok, {s['skipped']} skipped, {s['error']} failed, "
          f"{s['cancelled']} cancelled in {s['seconds']:.1f} s{ignored}; report: {report.out_dir / 'report.csv'}")
    if report.cancelled:
        return 130
    return 1 if s["error"] else 0
