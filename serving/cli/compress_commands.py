"""``polyhead compress``: parse, call :func:`transfer.compress.run_compress`, print the variant catalogue."""

from __future__ import annotations

import argparse

from serving.cli.options import Subparsers, add_device, add_workdir


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_catalogue(catalogue: dict) -> list[str]:
    """Table lines: variant, params, FLOPs, size, latency b1/b8, mAP per task, drop, admitted, Pareto.

    Latency and the Pareto column are the catalogue's device's; one line per other device gives its Pareto set.
    """
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
    for device, front in catalogue.get("pareto_by_device", {}).items():
        if device != catalogue["device"]:
            lines.append(f"Pareto set on {device}: {', '.join(front) or 'none'}")
    for task, why in catalogue.get("skipped_tasks", {}).items():
        lines.append(f"skipped head {task}: {why}")
    return lines


def _cmd_compress(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from transfer.compress import CompressSettings, run_compress

    settings = CompressSettings(rounds=args.rounds)
    settings = replace(settings, prune=replace(settings.prune, ratio=args.prune_ratio, steps=args.finetune_steps,
                                               response_weight=args.response_weight))
    report = run_compress(args.workdir, tolerance=args.tolerance, settings=settings, log=print, device=args.device,
                          robustness_tolerance=args.robustness_tolerance)
    for line in format_catalogue(report.catalogue):
        print(line)
    for name, row in report.catalogue["variants"].items() if args.robustness_tolerance is not None else ():
        if row["rpc"] is not None:
            print(f"{name}: rPC {row['rpc']:.3f}, {_fmt(row['rpc_drop'], '+.2f')} points under the reference's"
                  + ("" if row["admitted"] or "rPC" not in row["reason"] else " - not admitted"))
    print(f"built {', '.join(report.built) or 'nothing (all up to date)'} in {report.seconds:.0f} s; "
          f"catalogue: {report.path}")
    return 0


def register(sub: Subparsers) -> None:
    """Add ``compress`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    c = sub.add_parser("compress", help="prune, quantize, evaluate every head; write the variant catalogue")
    add_workdir(c)
    c.add_argument("--tolerance", type=float, default=1.0,
                   help="max mAP@[.5:.95] loss in points on any task for a variant to be admitted (default 1.0)")
    c.add_argument("--robustness-tolerance", type=float, default=None, metavar="P",
                   help="also measure robustness under common corruptions and admit only variants whose rPC "
                        "(mPC / clean mAP) is at most P points (100 x rPC) under the reference's (default: off)")
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
    add_device(c, "the pruned variants' distillation fine-tune and the latency measurement (add another "
                  "device's figures with `polyhead measure` on it)")
    c.set_defaults(func=_cmd_compress)
