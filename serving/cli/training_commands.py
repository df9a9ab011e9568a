"""``polyhead train`` and ``polyhead eval``: parse, call :mod:`transfer.train` / :mod:`transfer.evaluate`, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serving.cli.options import Subparsers, add_device, add_workdir


def _cmd_train(args: argparse.Namespace) -> int:
    from transfer.train import run_train

    report = run_train(args.workdir, args.config, args.teacher, resume=not args.restart,
                       teacher_weights=args.teacher_weights, device=args.device, nproc=args.nproc,
                       strict=args.strict)
    if not report.maps:  # a rank other than 0 of a torchrun job: rank 0 prints the report
        return 0
    print(f"trained in {report.seconds:.0f} s; trunk {report.trunk_params / 1e6:.2f} M params")
    print(f"{'task':12s} {'mAP':>6s} {'mAP50':>6s} {'head params':>12s}")
    for task, m in report.maps.items():
        print(f"{task:12s} {m['map']:6.3f} {m['map50']:6.3f} {report.head_params[task]:12,d}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from transfer.data.coco import load_coco
    from transfer.evaluate import evaluate_task

    val = load_coco(args.val_json, args.images, name=args.task, strict=args.strict)
    if args.server:
        from functools import partial

        from serving.client import Detector

        result = evaluate_task(args.workdir, args.task, val, connect=partial(Detector, args.server))
    else:
        result = evaluate_task(args.workdir, args.task, val, args.variant)
    print("\n".join(metrics_lines(args.task, result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result) + "\n")
    return 0


def metrics_lines(task: str, result: dict) -> list[str]:
    """The ``eval`` report: summary, one line per class, then AP by object area and AR@100.

    Args:
        task: Task name, for the first line.
        result: :func:`transfer.evaluation.coco_map.coco_metrics`'s dict; ``None`` values (no ground
            truth for that class or area) print as ``-``.

    Returns:
        The lines to print, first the ``<task>: mAP@[.5:.95]=... mAP50=...`` summary.
    """
    def num(v: float | None) -> str:
        return f"{v:6.3f}" if v is not None else f"{'-':>6s}"

    lines = [f"{task}: mAP@[.5:.95]={result['map']:.4f} mAP50={result['map50']:.4f}",
             f"  {'class':20s} {'mAP':>6s} {'mAP50':>6s}"]
    lines += [f"  {name:20s} {num(ap['map'])} {num(ap['map50'])}" for name, ap in result["per_class"].items()]
    lines.append(f"  mAP small {num(result['map_small'])}  medium {num(result['map_medium'])}  "
                 f"large {num(result['map_large'])}  AR@100 {num(result['ar100'])}")
    return lines


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
    t.add_argument("--strict", action="store_true",
                   help="refuse annotation files whose boxes stick out of their image or have no area, or whose "
                        "sizes are declared unrotated (default: clip/drop/correct them, one warning line per file)")
    add_device(t, "training (on the CPU with train.threads threads)")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine (torch.distributed: gloo on CPU, nccl on CUDA); "
                        "train.batch_size is split over them. Several machines: run torchrun, see docs/deploy.md")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="COCO mAP of a task (offline or through a server)")
    add_workdir(e)
    e.add_argument("--task", required=True)
    e.add_argument("--val-json", required=True)
    e.add_argument("--images", required=True)
    e.add_argument("--variant", default="reference", help="trunk variant (offline only)")
    e.add_argument("--server", help="HOST:PORT of a Triton gRPC endpoint")
    e.add_argument("--strict", action="store_true",
                   help="refuse annotation files whose boxes stick out of their image or have no area, or whose "
                        "sizes are declared unrotated (default: clip/drop/correct them, one warning line per file)")
    e.add_argument("--json", help="write {\"map\", \"map50\", \"per_class\", \"map_small\", \"map_medium\", "
                                  "\"map_large\", \"ar100\"} here (null: no ground truth)")
    e.set_defaults(func=_cmd_eval)
