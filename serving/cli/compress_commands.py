"""`polyhead compress` and `polyhead bench compress`: parse, call :mod:`transfer.compress`, print."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_catalogue(catalogue: dict) -> list[str]:
    """Table lines: variant, params, FLOPs, size, latency b1/b8, mAP per task, drop, admitted, Pareto."""
    tasks = catalogue["tasks"]
    head = (f"{'variant':18s} {'prec':5s} {'params':>8s} {'GFLOPs':>7s} {'MB':>6s} {'b1 ms':>7s} {'b8 ms':>7s} "
            + " ".join(f"{t[:9]:>9s}" for t in tasks) + f" {'drop':>6s} {'admit':>5s} {'pareto':>6s}")
    lines = [head, "-" * len(head)]
    for name, r in catalogue["variants"].items():
        maps = " ".join(f"{_fmt(r['map'].get(t), '9.4f'):>9s}" for t in tasks)
        params = _fmt(r["params"] / 1e6 if r["params"] else None, ".2f") + "M"
        flops = _fmt(r["flops"] / 1e9 if r["flops"] else None, "7.3f")
        lines.append(
            f"{name:18s} {r['precision']:5s} {params:>8s} {flops:>7s} {r['size_bytes'] / 1e6:6.2f} "
            f"{_fmt(r['latency_b1_ms'], '7.2f')} {_fmt(r['latency_b8_ms'], '7.2f')} {maps} "
            f"{_fmt(r['max_map_drop'], '6.2f')} {'yes' if r['admitted'] else 'no':>5s} "
            f"{'*' if r['pareto'] else '':>6s}"
        )
    lines.append(f"mAP@[.5:.95] per task; drop = worst-task loss in points vs {catalogue['reference']} "
                 f"(tolerance {catalogue['tolerance_points']:g}); latency on {catalogue['device']}")
    for task, why in catalogue.get("skipped_tasks", {}).items():
        lines.append(f"skipped head {task}: {why}")
    return lines


def _cmd_compress(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from transfer.compress import CompressSettings, run_compress

    settings = CompressSettings(rounds=args.rounds)
    settings = replace(settings, prune=replace(settings.prune, ratio=args.prune_ratio, steps=args.finetune_steps,
                                               response_weight=args.response_weight))
    report = run_compress(args.workdir, tolerance=args.tolerance, settings=settings, log=print)
    for line in format_catalogue(report.catalogue):
        print(line)
    print(f"built {', '.join(report.built) or 'nothing (all up to date)'} in {report.seconds:.0f} s; "
          f"catalogue: {report.path}")
    return 0


def _cmd_bench_compress(args: argparse.Namespace) -> int:
    from transfer.compress import run_compress_bench

    reports = {"distillation": args.distill_report, "add_task": args.add_task_report}
    result = run_compress_bench(args.workdir, reports={k: v for k, v in reports.items() if v}, variant=args.variant)
    what = "best admitted variant" if args.variant is None else f"variant (admitted: {result['admitted']})"
    print(f"{what}: {result['best_variant']} vs {result['baseline']}")
    for key in ("size_ratio", "latency_ratio_b1", "latency_ratio_b8", "max_map_drop"):
        print(f"  {key:18s} {result[key]:.3f}")
    if "distillation" in result:
        print(f"  distillation gain (mAP points per task): {result['distillation']['map_gain_points']}")
    if "add_task" in result:
        a = result["add_task"]
        print(f"  add-task head-only {a['head_only']['seconds']:.0f} s vs full fine-tuning "
              f"{a['full_finetune']['seconds']:.0f} s ({a['speedup']:.1f}x), mAP gap {a['map_gap_points']:+.2f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def bench_commands(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-subparsers of `polyhead bench`, creating `bench` if no other module has yet."""
    if "bench" not in sub.choices:
        sub.add_parser("bench", help="benchmarks on this machine").add_subparsers(dest="bench_command", required=True)
    parser = sub.choices["bench"]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def register(sub: argparse._SubParsersAction, add_workdir: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `compress` and `bench compress` to the `polyhead` parser."""
    c = sub.add_parser("compress", help="prune, quantize, evaluate every head; write the variant catalogue")
    add_workdir(c)
    c.add_argument("--tolerance", type=float, default=1.0,
                   help="max mAP@[.5:.95] loss in points on any task for a variant to be admitted (default 1.0)")
    from transfer.compression.prune import PruneSettings

    defaults = PruneSettings()
    c.add_argument("--rounds", type=int, default=2, help="prune -> fine-tune rounds (default %(default)s)")
    c.add_argument("--prune-ratio", type=float, default=defaults.ratio,
                   help="share of hidden channels removed per round (default %(default)s)")
    c.add_argument("--finetune-steps", type=int, default=defaults.steps,
                   help="feature-distillation steps after each round (default %(default)s)")
    c.add_argument("--response-weight", type=float, default=defaults.response_weight,
                   help="also distil the frozen heads' outputs during the fine-tune (0 = features only; "
                        "default %(default)s)")
    c.set_defaults(func=_cmd_compress)
    b = bench_commands(sub).add_parser("compress", help="best admitted variant vs the teacher: size, latency, mAP")
    add_workdir(b)
    b.add_argument("--json", help="write the result here")
    b.add_argument("--variant", help="compare this catalogue variant instead of the best admitted one")
    b.add_argument("--distill-report", metavar="F", help="report.json of bench/distill.py to include")
    b.add_argument("--add-task-report", metavar="F", help="report.json of bench/add_task.py to include")
    b.set_defaults(func=_cmd_bench_compress)
