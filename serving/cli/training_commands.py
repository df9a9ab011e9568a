"""``polyhead train`` and ``polyhead eval``: parse, call :mod:`transfer.train` / :mod:`transfer.evaluate`, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serving.cli.options import Subparsers, add_workdir


def _cmd_train(args: argparse.Namespace) -> int:
    from transfer.train import run_train

    report = run_train(args.workdir, args.config, args.teacher, resume=not args.restart,
                       teacher_weights=args.teacher_weights)
    print(f"trained in {report.seconds:.0f} s; trunk {report.trunk_params / 1e6:.2f} M params")
    print(f"{'task':12s} {'mAP':>6s} {'mAP50':>6s} {'head params':>12s}")
    for task, m in report.maps.items():
        print(f"{task:12s} {m['map']:6.3f} {m['map50']:6.3f} {report.head_params[task]:12,d}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from transfer.data.coco import load_coco
    from transfer.evaluate import evaluate_task

    val = load_coco(args.val_json, args.images, name=args.task)
    if args.server:
        from serving.client import Detector

        with Detector(args.server) as detector:
            result = evaluate_task(args.workdir, args.task, val, detector=detector)
    else:
        result = evaluate_task(args.workdir, args.task, val, args.variant)
    print(f"{args.task}: mAP@[.5:.95]={result['map']:.4f} mAP50={result['map50']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result) + "\n")
    return 0


def register(sub: Subparsers) -> None:
    """Add ``train`` and ``eval`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    t = sub.add_parser("train", help="train trunk + heads, export ONNX, record mAP")
    add_workdir(t)
    t.add_argument("--config", help="polyhead.yaml to use (copied into the workspace)")
    t.add_argument("--teacher", help="teacher checkpoint to distil from (sets train.distill_weight > 0)")
    t.add_argument("--teacher-weights", metavar="FILE",
                   help="ImageNet MobileNetV2 state_dict (torchvision format) to distil the backbone from")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="COCO mAP of a task (offline or through a server)")
    add_workdir(e)
    e.add_argument("--task", required=True)
    e.add_argument("--val-json", required=True)
    e.add_argument("--images", required=True)
    e.add_argument("--variant", default="reference", help="trunk variant (offline only)")
    e.add_argument("--server", help="HOST:PORT of a Triton gRPC endpoint")
    e.add_argument("--json", help="write {\"map\": ..., \"map50\": ...} here")
    e.set_defaults(func=_cmd_eval)
