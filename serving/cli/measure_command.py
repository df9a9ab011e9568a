"""``polyhead measure``: parse, call :func:`transfer.compression.measure.run_measure`, print each variant's figures."""

from __future__ import annotations

import argparse

from serving.cli.options import DEVICES, Subparsers, add_workdir


def format_measure(report) -> list[str]:  # noqa: ANN001 (a MeasureReport; importing it would import torch)
    """Table lines: variant, b1/b8 ms, runtime, on the device's Pareto set."""
    lines = [f"{'variant':18s} {'b1 ms':>8s} {'b8 ms':>8s} {'runtime':26s} pareto", "-" * 70]
    for name, lat in report.latency.items():
        lines.append(f"{name:18s} {lat['b1']:8.2f} {lat['b8']:8.2f} {report.runtime[name]:26s} "
                     f"{'*' if name in report.pareto else ''}")
    lines.append(f"latency on {report.device}; Pareto set there (admitted variants, fastest first): "
                 f"{', '.join(report.pareto) or 'none'}; written in {report.seconds:.0f} s. "
                 f"Serve with `polyhead optimize --serving-device {report.device}`")
    return lines


def _cmd_measure(args: argparse.Namespace) -> int:
    from transfer.compression.measure import run_measure

    report = run_measure(args.workdir, device=args.device, repeats=args.repeats, log=print)
    for line in format_measure(report):
        print(line)
    return 0


def register(sub: Subparsers) -> None:
    """Add ``measure`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    m = sub.add_parser("measure", help="time every trunk variant on this machine's device and add its figures "
                       "(and its Pareto set) to the catalogue; run it on the serving machine")
    add_workdir(m)
    m.add_argument("--device", choices=DEVICES, default="auto",
                   help="cpu (onnxruntime), cuda (onnxruntime's CUDA provider, else the torch trunk in the "
                        "variant's precision), auto = cuda when available (default)")
    m.add_argument("--repeats", type=int, default=30, help="timed runs per variant and batch size (default 30)")
    m.set_defaults(func=_cmd_measure)
