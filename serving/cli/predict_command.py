"""`polyhead predict [--server HOST:PORT] SOURCE`: detect objects in an image, a folder or a glob of images.

Exit codes: 0 when every file was read and detected; 1 when some file could not be read (each one
is reported, the others are still done and written); 2 on a usage or server error
(:mod:`serving.cli.main`). ``polyhead infer --image F`` (one image, every detection printed) forwards
here through :func:`infer_one`.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from serving.cli.options import Subparsers

EPILOG = """\
SOURCE: an image file; a folder (its .jpg .jpeg .png .bmp .webp .tif .tiff files, not sub-folders);
or a glob, quoted ('photos/**/*.jpg'). Files are read as displayed (EXIF orientation applied).
--json writes COCO results: one record per detection with image_id (the file's 1-based position in
sorted order, skipped files included), category_id (the task's COCO id), bbox [x, y, w, h] in
pixels, score, task, category_name and file_name (relative to the folder holding every input).
Exit code: 0 all files done, 1 some file unreadable (reported and skipped), 2 usage or server error.
"""


def _tasks(text: str | None) -> tuple[str, ...] | None:
    return tuple(t for t in text.split(",") if t) if text else None


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from serving.client import Detector
    from serving.client.coco_results import served_category_ids, write_coco_results
    from serving.client.image_sources import list_images
    from serving.client.predict import PredictOptions, SkippedFile, predict

    options = PredictOptions(tasks=_tasks(args.tasks), conf=args.conf, concurrency=args.concurrency,
                             save_dir=Path(args.save) if args.save else None, variant=args.variant)
    paths = list_images(args.source)

    def skipped(s: SkippedFile) -> None:
        tqdm.write(f"polyhead: skipped {s.path}: {s.reason}", file=sys.stderr)

    report = predict(paths, partial(Detector, args.server, timeout_s=args.timeout), options, progress=True,
                     on_skip=skipped)
    per_task = ", ".join(f"{task} {n}" for task, n in report.detections_per_task().items())
    print(f"{len(report.predictions)} image(s), detections (score >= {options.conf:g}): {per_task}; "
          f"{len(report.skipped)} skipped (unreadable); {report.seconds:.1f} s, {report.images_per_s:.1f} images/s")
    if options.save_dir is not None:
        print(f"drawings: {len(report.predictions)} image(s) in {options.save_dir}")
    if args.json:
        n = write_coco_results(Path(args.json), report, served_category_ids(args.server, report.tasks, args.timeout))
        print(f"COCO results: {n} detection(s) in {args.json}")
    return 1 if report.skipped else 0


def infer_one(args: argparse.Namespace) -> int:
    """``polyhead infer``: one image, every detection the heads return (no ``--conf``), printed as text.

    Its ``--json`` keeps its own layout: ``{"image": F, "detections": {task: [{class, class_id, score, box}]}}``.
    An unreadable image is an error (exit 2), as it always was.
    """
    from serving.client import Detector
    from serving.client.predict import PredictOptions, predict
    from shared.errors import DataError

    report = predict([Path(args.image)], partial(Detector, args.server, timeout_s=args.timeout),
                     PredictOptions(tasks=_tasks(args.tasks), conf=0.0, concurrency=1))
    if report.skipped:
        raise DataError(f"{args.image}: {report.skipped[0].reason}; re-export or remove it")
    [result] = report.predictions
    out = {}
    for task, dets in sorted(result.detections.items()):
        print(f"{task}: {len(dets)} detection(s)")
        for d in dets:
            x1, y1, x2, y2 = d.box
            print(f"  {d.class_name:16s} {d.score:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
        out[task] = [{"class": d.class_name, "class_id": d.class_id, "score": d.score, "box": list(d.box)}
                     for d in dets]
    if args.json:
        Path(args.json).write_text(json.dumps({"image": str(args.image), "detections": out}, indent=2) + "\n")
    return 0


def register(sub: Subparsers) -> None:
    """Add ``predict`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    p = sub.add_parser("predict", help="detect objects in an image, a folder or a glob through a running server",
                       description="Detect objects in every image of SOURCE through a running `polyhead serve`; "
                                   "optionally draw them (--save) and write COCO results (--json).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="an image file, a folder of images or a quoted glob")
    p.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of Triton's gRPC endpoint "
                                                              "(default: %(default)s)")
    p.add_argument("--tasks", help="comma-separated tasks (default: every task the server serves)")
    p.add_argument("--conf", type=float, default=0.25, help="smallest score kept, in [0, 1] (default: %(default)s)")
    p.add_argument("--save", metavar="DIR", help="write each image with its boxes, classes and scores drawn here "
                                                 "(one colour per task; same file names)")
    p.add_argument("--json", metavar="FILE", help="write the detections here in COCO results format")
    p.add_argument("--concurrency", type=int, default=4, help="images in flight at once (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-call deadline in seconds (default: %(default)s)")
    p.add_argument("--variant", help="trunk variant to run (a server exported with --variants per-request): a held "
                                     "variant, or auto (the server picks per request); default: the server's default")
    p.set_defaults(func=_cmd_predict)
