"""``polyhead demo``: the whole story on this machine (:func:`serving.demo.run_demo`)."""

from __future__ import annotations

import argparse

from serving.cli.options import Subparsers, add_workdir


def _cmd_demo(args: argparse.Namespace) -> int:
    from serving.demo import run_demo

    return run_demo(args.workdir, fast=args.fast)


def register(sub: Subparsers) -> None:
    """Add ``demo`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    d = sub.add_parser("demo", help="the whole story on this machine (synthetic scenes, then a real-photo task)")
    add_workdir(d)
    d.add_argument("--fast", action="store_true", help="tiny budgets (a smoke run, ~3 min)")
    d.set_defaults(func=_cmd_demo)
