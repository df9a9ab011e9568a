"""The `polyhead` command line: parses arguments, calls library functions, prints results."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from shared.errors import PolyheadError
from shared.workspace import DEFAULT_WORKDIR


def _cmd_synth(args: argparse.Namespace) -> int:
    from transfer.data.synth import generate

    s = generate(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                 num_unlabeled=args.num_unlabeled, image_size=args.image_size)
    print(f"wrote {s.num_train} train / {s.num_val} val / {s.num_unlabeled} unlabelled images to {s.out_dir} "
          f"in {s.seconds:.1f} s")
    for task in s.tasks:
        print(f"  {task:10s} classes={','.join(s.classes[task])}  objects={s.num_objects[task]}  {s.train_json[task]}")
    return 0


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


def _cmd_demo(args: argparse.Namespace) -> int:
    from serving.demo import run_demo

    return run_demo(args.workdir, fast=args.fast)


def _cmd_bench_serving(args: argparse.Namespace) -> int:
    from serving.bench.serving_bench import format_table, run_serving_bench, write_json

    tasks = [int(x) for x in args.tasks.split(",")]

    def progress(row: dict) -> None:
        print(f"  N={row['tasks']}: {row['shared_images_per_s']:.1f} vs {row['independent_images_per_s']:.1f} img/s "
              f"({row['speedup']:.2f}x), RSS {row['shared_rss_mb']:.0f} vs {row['independent_rss_mb']:.0f} MiB",
              flush=True)

    concurrency = [int(x) for x in args.concurrency.split(",")]
    result = run_serving_bench(args.workdir, tasks, args.variant, concurrency, args.seconds,
                               progress=progress, batching_concurrency=args.batching_concurrency,
                               heads_layout=args.heads_layout)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="polyhead", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def workdir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--workdir", default=DEFAULT_WORKDIR, help="workspace directory (default: %(default)s)")

    d = sub.add_parser("demo", help="the whole story on synthetic data, on this machine")
    workdir(d)
    d.add_argument("--fast", action="store_true", help="tiny budgets (a smoke run, ~3 min)")
    d.set_defaults(func=_cmd_demo)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="write a synthetic multi-task COCO data set")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-train", type=int, default=600)
    s.add_argument("--num-val", type=int, default=150)
    s.add_argument("--num-unlabeled", type=int, default=0)
    s.add_argument("--image-size", type=int, default=256)
    s.set_defaults(func=_cmd_synth)

    t = sub.add_parser("train", help="train trunk + heads, export ONNX, record mAP")
    workdir(t)
    t.add_argument("--config", help="polyhead.yaml to use (copied into the workspace)")
    t.add_argument("--teacher", help="teacher checkpoint to distil from (sets train.distill_weight > 0)")
    t.add_argument("--teacher-weights", metavar="FILE",
                   help="ImageNet MobileNetV2 state_dict (torchvision format) to distil the backbone from")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="COCO mAP of a task (offline or through a server)")
    workdir(e)
    e.add_argument("--task", required=True)
    e.add_argument("--val-json", required=True)
    e.add_argument("--images", required=True)
    e.add_argument("--variant", default="reference", help="trunk variant (offline only)")
    e.add_argument("--server", help="HOST:PORT of a Triton gRPC endpoint")
    e.add_argument("--json", help="write {\"map\": ..., \"map50\": ...} here")
    e.set_defaults(func=_cmd_eval)
    bench = sub.add_parser("bench", help="benchmarks (tables; --json for scripts)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bs = bench_sub.add_parser("serving", help="shared trunk vs independent detectors on the embedded Triton")
    workdir(bs)
    bs.add_argument("--tasks", default="1,2,4,8", help="comma-separated task counts (default: %(default)s)")
    bs.add_argument("--variant", default="reference")
    bs.add_argument("--concurrency", default="2,4,8",
                    help="comma-separated client counts; each side keeps its peak images/s (default: %(default)s)")
    bs.add_argument("--seconds", type=float, default=10.0, help="measurement time per side and N")
    bs.add_argument("--batching-concurrency", type=int, default=8,
                    help="clients for the dynamic batching on/off comparison; 0 skips it (default: %(default)s)")
    from serving.cli.serving_commands import add_heads_layout

    add_heads_layout(bs, "in_trunk", "heads layout of the shared side; the others are measured beside it "
                                     "(default: in-trunk)")
    bs.add_argument("--json", help="write the results here")
    bs.set_defaults(func=_cmd_bench_serving)
    p.set_defaults(bench_subparsers=bench_sub)
    for register in _extensions():
        register(sub, workdir)
    return p


def _extensions():
    """Subcommands defined next to their feature: each module has ``register(subparsers, add_workdir)``."""
    import importlib

    names = ["serving.cli.serving_commands", "serving.cli.compress_commands", "serving.cli.monitor_commands"]
    found = []
    for name in names:
        try:
            found.append(importlib.import_module(name).register)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return found


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `polyhead` console script."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # SIGTERM unwinds like Ctrl-C: servers stop, writes roll back
    try:
        return args.func(args)
    except PolyheadError as exc:
        print(f"polyhead: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polyhead: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
