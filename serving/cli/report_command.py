"""``polyhead report``: one self-contained HTML page of figures about a workspace (:mod:`transfer.report`)."""

from __future__ import annotations

import argparse

from serving.cli.options import Subparsers, add_workdir


def _cmd_report(args: argparse.Namespace) -> int:
    from transfer.report import build_report

    result = build_report(args.workdir, args.out or f"{args.workdir}/report")
    print(f"report: {result.path} ({len(result.figures)} figures: {', '.join(result.figures)}) "
          f"in {result.seconds:.1f} s")
    for missing in result.missing:
        print(f"  missing: {missing.line()}")
    return 0


def register(sub: Subparsers) -> None:
    """Add ``report`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    r = sub.add_parser("report", help="one HTML page of figures: Pareto front, mAP heat map, AP per class and size, "
                                      "kept channels, feature similarity, robustness, losses, detections")
    add_workdir(r)
    r.add_argument("--out", metavar="DIR", help="directory of index.html (default: <workdir>/report)")
    r.set_defaults(func=_cmd_report)
