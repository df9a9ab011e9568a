"""``polyhead bench serving | compress | controller``: parse, call the benchmark, print its table.

* ``serving``: :func:`serving.bench.serving_bench.run_serving_bench`;
* ``compress``: :func:`transfer.compress.run_compress_bench`;
* ``controller``: :func:`serving.bench.controller_bench.run_controller_bench`;
* ``robustness``: :func:`transfer.robustness_bench.run_robustness_bench`;
* ``variants``: :mod:`serving.cli.bench_variants_command`;
* ``search``: :func:`transfer.elastic.search_bench.run_search_bench`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from serving.bench.variants_bench import LOADS
from serving.cli import bench_variants_command
from serving.cli.options import Subparsers, add_heads_layout, add_workdir


def _cmd_bench_serving(args: argparse.Namespace) -> int:
    from serving.bench.serving_bench import run_serving_bench, write_json
    from serving.bench.serving_table import format_table

    tasks = [int(x) for x in args.tasks.split(",")]

    def progress(row: dict) -> None:
        if "error" in row:
            print(f"  N={row['tasks']}: FAILED, going on: {row['error'][:300]}", flush=True)
            return
        print(f"  N={row['tasks']}: shared {row['shared_images_per_s']:.1f} img/s, in one process "
              f"{row['inprocess_images_per_s']:.1f} ({row['speedup_vs_inprocess']:.2f}x of a "
              f"{row['ceiling_speedup']:.2f}x ceiling: {row['fraction_of_ceiling']:.0%}), N models "
              f"{row['independent_images_per_s']:.1f} ({row['speedup']:.2f}x); RSS {row['shared_rss_mb']:.0f} / "
              f"{row['inprocess_rss_mb']:.0f} / {row['independent_rss_mb']:.0f} MiB", flush=True)

    concurrency = [int(x) for x in args.concurrency.split(",")]
    result = run_serving_bench(args.workdir, tasks, args.variant, concurrency, args.seconds,
                               progress=progress, batching_concurrency=args.batching_concurrency,
                               heads_layout=args.heads_layout, blocks=args.blocks)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
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


def _cmd_bench_controller(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from serving.bench.controller_bench import format_table, run_controller_bench, write_json
    from serving.controller.objectives import parse_slo

    # SIGTERM unwinds like Ctrl-C (serving.cli.main): the embedded Triton and Prometheus stop on the way out
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_controller_bench(
        args.workdir, parse_slo(args.slo) or None, step_s=args.duration, base_clients=args.base_clients,
        step_clients=args.clients, warmup_s=args.warmup, after_s=args.after, window=args.window,
        interval_s=args.interval, cooldown_s=args.cooldown, progress=lambda line: print(line, flush=True),
        variants=args.variants.split(",") if args.variants else None, tasks=args.task or None,
    )  # fmt: skip
    result["command"] = shlex.join(["polyhead", *sys.argv[1:]])
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def format_robustness(result: dict) -> list[str]:
    """Table lines: variant, admitted, clean mAP, mPC, rPC, rPC drop vs the reference, mAP per corruption."""
    names = result["corruptions"]
    head = (f"{'variant':16s} {'admit':>5s} {'clean':>6s} {'mPC':>6s} {'rPC':>6s} {'drop':>6s} "
            + " ".join(f"{c[:10]:>10s}" for c in names))
    lines = [head, "-" * len(head)]
    for name, r in result["variants"].items():
        rpc = "-" if r["rpc"] is None else f"{r['rpc']:.3f}"
        drop = "-" if r["rpc_drop_points"] is None else f"{r['rpc_drop_points']:+.2f}"
        per = " ".join(f"{sum(r['per_corruption'][c].values()) / len(r['per_corruption'][c]):10.4f}" for c in names)
        admitted = {True: "yes", False: "no"}.get(r["admitted"], "-")
        lines.append(f"{name:16s} {admitted:>5s} {r['clean_map']:6.4f} {r['mpc']:6.4f} {rpc:>6s} {drop:>6s} {per}")
    lines.append(f"mAP@[.5:.95], mean over tasks {', '.join(result['tasks'])} ({result['max_images']} images each at "
                 f"most, seed {result['seed']}); per corruption: mean of severities 1-3; rPC = mPC / clean; "
                 f"drop = 100 x (rPC of {result['reference']} - rPC)")
    return lines


def _cmd_bench_robustness(args: argparse.Namespace) -> int:
    from transfer.evaluation.robustness import RobustnessSettings
    from transfer.robustness_bench import run_robustness_bench

    def names(value: str | None) -> list[str] | None:
        return None if value is None else [n.strip() for n in value.split(",") if n.strip()]

    settings = RobustnessSettings(**({"corruptions": names(args.corruptions)} if args.corruptions else {}),
                                  max_images=args.max_images, seed=args.seed)
    result = run_robustness_bench(args.workdir, names(args.variants), names(args.tasks), settings)
    for line in format_robustness(result):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _cmd_bench_search(args: argparse.Namespace) -> int:
    from transfer.elastic.search_bench import run_search_bench

    result = run_search_bench(args.workdir, repeats=args.repeats, rounds=args.rounds)
    if args.serving:
        from serving.bench.variants_bench import add_serving_figures

        add_serving_figures(result, args.workdir, progress=lambda line: print(f"  {line}"), load=args.load)
    print(f"{'operating point':18s} {'b1 ms':>7s} {'b8 ms':>7s} {'mean mAP':>8s} {'drop':>6s}")
    for p in result["operating_points"]:
        print(f"{p['variant']:18s} {p['latency_b1_ms']:7.2f} {p['latency_b8_ms']:7.2f} {p['mean_map']:8.4f} "
              f"{p['max_map_drop']:6.2f}")
    gain, speed = result["front_gain_points"], result["front_speedup"]
    print(f"{result['operating_points_count']} admitted operating points on {result['device']} (tolerance "
          f"{result['tolerance_points']:g}); front gain over the pruned curve at equal b1 latency: "
          f"{'n/a' if gain is None else f'{gain:+.2f} mAP points'}; speed-up at equal mAP: "
          f"{'n/a' if speed is None else f'{speed:.2f}x'}; targets met: "
          + ", ".join(f"{k} {'yes' if v['met'] else 'no'}" for k, v in result["targets"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _add_search(bench: Subparsers) -> None:
    b = bench.add_parser("search", help="searched sub-networks vs the pruned variants: operating points, front gain")
    add_workdir(b)
    b.add_argument("--json", help="write the result here")
    b.add_argument("--repeats", type=int, default=60,
                   help="timed runs per variant and batch size when re-timing them side by side (default %(default)s)")
    b.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds (default %(default)s)")
    b.add_argument("--serving", action="store_true",
                   help="also serve the reference and the searched front per request and fill switch_ms, "
                        "memory_all_variants_ratio and slo_within (polyhead bench variants, a few minutes)")
    b.add_argument("--load", choices=LOADS, default="closed",
                   help="with --serving: the load of slo_within, as in bench variants --load (default %(default)s)")
    b.set_defaults(func=_cmd_bench_search)


def _add_serving(bench: Subparsers) -> None:
    bs = bench.add_parser("serving", help="shared trunk vs independent detectors on the embedded Triton")
    add_workdir(bs)
    bs.add_argument("--tasks", default="1,4,8,16,32", help="comma-separated task counts (default: %(default)s)")
    bs.add_argument("--variant", default="reference")
    bs.add_argument("--concurrency", default="2,4,8",
                    help="comma-separated client counts; each side keeps its peak images/s (default: %(default)s)")
    bs.add_argument("--seconds", type=float, default=10.0,
                    help="measurement time per side, concurrency and N (default %(default)s)")
    bs.add_argument("--blocks", type=int, default=3,
                    help="rounds the sides' loads alternate in, each seconds/blocks long (default %(default)s)")
    bs.add_argument("--batching-concurrency", type=int, default=8,
                    help="clients for the dynamic batching on/off comparison; 0 skips it (default: %(default)s)")
    add_heads_layout(bs, "in_trunk", "heads layout of the shared side; the others are measured beside it "
                                     "(default: in-trunk)")
    bs.add_argument("--json", help="write the results here")
    bs.set_defaults(func=_cmd_bench_serving)


def _add_compress(bench: Subparsers) -> None:
    b = bench.add_parser("compress", help="best admitted variant vs the teacher: size, latency, mAP")
    add_workdir(b)
    b.add_argument("--json", help="write the result here")
    b.add_argument("--variant", help="compare this catalogue variant instead of the best admitted one")
    b.add_argument("--distill-report", metavar="F", help="report.json of bench/distill.py to include")
    b.add_argument("--add-task-report", metavar="F", help="report.json of bench/add_task.py to include")
    b.set_defaults(func=_cmd_bench_compress)


def _add_controller(bench: Subparsers) -> None:
    b = bench.add_parser(
        "controller", help="a load step with and without the latency controller: time back under the objective"
    )
    add_workdir(b)
    b.add_argument("--json", help="write the result here")
    b.add_argument("--slo", action="append", default=[], metavar="TASK=MS",
                   help="p95 objective (repeat); default: chosen between the accurate and the light variant's p95")
    b.add_argument("--duration", type=float, default=60.0, help="seconds of the load step (default %(default)s)")
    b.add_argument("--clients", type=int, default=4, help="clients during the step (default %(default)s)")
    b.add_argument("--base-clients", type=int, default=1, help="clients before and after (default %(default)s)")
    b.add_argument("--warmup", type=float, default=15.0, help="seconds before the step (default %(default)s)")
    b.add_argument("--after", type=float, default=90.0,
                   help="seconds after the step, for the return to the accurate variant (default %(default)s)")
    b.add_argument("--window", default="1m", help="rate window of the recording rules (default %(default)s, shipped)")
    b.add_argument("--interval", type=float, default=2.0, help="controller interval, s (default %(default)s)")
    b.add_argument("--cooldown", type=float, default=60.0, help="controller cool-down, s (default %(default)s)")
    b.add_argument("--variants", metavar="A,B", help="compare these trunk variants even if compression did not admit "
                   "them (the mechanism, not a production ladder; reported); default: the admitted ones")
    b.add_argument("--task", action="append", default=[], help="task each request asks for (repeat; default: all, "
                   "one fan-out call)")
    b.set_defaults(func=_cmd_bench_controller)


def _add_robustness(bench: Subparsers) -> None:
    b = bench.add_parser("robustness", help="mAP of every variant under common corruptions (COCO-C mPC / rPC); "
                                            "recorded in variant.json")
    add_workdir(b)
    b.add_argument("--json", help="write the result here")
    b.add_argument("--variants", metavar="A,B", help="comma-separated trunk variants (default: all)")
    b.add_argument("--tasks", metavar="A,B", help="comma-separated heads (default: all with a validation split)")
    b.add_argument("--corruptions", metavar="A,B",
                   help="comma-separated corruptions (default: gaussian_noise, gaussian_blur, jpeg, brightness, "
                        "contrast), each at severities 1-3")
    b.add_argument("--max-images", type=int, default=100,
                   help="first validation images per task (default %(default)s)")
    b.add_argument("--seed", type=int, default=0, help="seed of the per-image noise (default %(default)s)")
    b.set_defaults(func=_cmd_bench_robustness)


def register(sub: Subparsers) -> None:
    """Add ``bench`` and its subcommands ``serving``, ``compress``, ``controller``, ``robustness``, ``search``.

    Args:
        sub: The top-level subparsers.
    """
    bench = sub.add_parser("bench", help="benchmarks (tables; --json for scripts)")
    subcommands = bench.add_subparsers(dest="bench_command", required=True)
    for add in (_add_serving, _add_compress, _add_controller, _add_robustness, bench_variants_command.register,
                _add_search):
        add(subcommands)
