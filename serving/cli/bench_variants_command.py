"""``polyhead bench variants``: per-request trunk variants vs reloading vs one static variant (a table, --json).

Calls :func:`serving.bench.variants_bench.run_variants_bench`; registered by :mod:`serving.cli.bench_commands`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from serving.bench.variants_bench import DEFAULT_OPEN_TRACE, DEFAULT_TRACE, LOADS
from serving.cli.options import Subparsers, add_workdir


def _text(trace: tuple) -> str:
    return ",".join(f"{s:g}x{v:g}" for s, v in trace)


def _cmd_bench_variants(args: argparse.Namespace) -> int:
    from serving.bench.variants_bench import parse_trace, run_variants_bench
    from serving.bench.variants_figures import format_table

    result = run_variants_bench(
        args.workdir, [n for n in args.variants.split(",") if n] if args.variants else None,
        parse_trace(args.trace, args.load) if args.trace else None, args.objective_ms, switch_s=args.switch_seconds,
        tick_s=args.tick, progress=lambda line: print(line, flush=True), load=args.load, rounds=args.rounds,
    )  # fmt: skip
    result["command"] = shlex.join(["polyhead", *sys.argv[1:]])
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def register(bench: Subparsers) -> None:
    """Add ``variants`` to the ``polyhead bench`` subcommands.

    Args:
        bench: The ``bench`` subparsers.
    """
    b = bench.add_parser("variants", help="per-request trunk variants: switch time, memory, share within the "
                                          "objective under a bursty load vs reloading and vs one static variant")
    add_workdir(b)
    b.add_argument("--json", help="write the result here")
    b.add_argument("--variants", metavar="A,B", help="trunk variants to hold, admitted or not (reported); "
                                                     "default: the admitted, Pareto-optimal ones")
    b.add_argument("--load", choices=LOADS, default="closed",
                   help="closed: phases of closed-loop clients; open: Poisson arrivals at a multiple of the most "
                        "accurate variant's capacity, latency counted from the arrival (default %(default)s)")
    b.add_argument("--trace", metavar="SxN,SxN", help="bursty load: SECONDSxCLIENTS phases (closed, default "
                   f"{_text(DEFAULT_TRACE)}) or SECONDSxLOAD phases (open, default {_text(DEFAULT_OPEN_TRACE)})")
    b.add_argument("--objective-ms", type=float, help="latency objective per request (default: chosen so the "
                                                      "fastest variant alone keeps it and the most accurate does not)")
    b.add_argument("--switch-seconds", type=float, default=20.0, help="seconds of the switch measurement "
                                                                      "(default %(default)s)")
    b.add_argument("--rounds", type=int, default=2, help="times every mode runs the trace, in alternating order "
                                                         "(ABC, CBA), pooled (default %(default)s)")
    b.add_argument("--tick", type=float, default=0.5, help="reload controller period, s (default %(default)s)")
    b.set_defaults(func=_cmd_bench_variants)
