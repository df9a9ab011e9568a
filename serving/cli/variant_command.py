"""``polyhead variant show | set``: the default trunk variant of a per-request repository (no reload).

``set NAME`` makes a held variant the default of requests without a ``variant`` parameter;
``set auto --objective-ms MS`` lets the server pick, per request, the most accurate variant its
queue allows within the objective (:mod:`serving.triton.per_request_variants`). The running server
takes it on its next request.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.options import Subparsers, add_workdir


def _repository(args: argparse.Namespace) -> Path:
    return Path(args.repository) if args.repository else Path(args.workdir) / "model_repository"


def _cmd_show(args: argparse.Namespace) -> int:
    from serving.triton.per_request_variants import held_variants, read_live_variant

    repo = _repository(args)
    held, live = held_variants(repo), read_live_variant(repo)
    default = "the loaded trunk version's variant" if live is None else live["variant"]
    if live is not None and live.get("objective_ms"):
        default += f" (objective {live['objective_ms']:g} ms, headroom {live.get('headroom', 0.8):g})"
    print(f"{repo}: holds {', '.join(held)}; default: {default}")
    return 0


def _cmd_set(args: argparse.Namespace) -> int:
    from serving.triton.per_request_variants import DEFAULT_HEADROOM, write_live_variant

    path = write_live_variant(_repository(args), args.name, args.objective_ms,
                              DEFAULT_HEADROOM if args.headroom is None else args.headroom)
    print(f"default variant: {args.name}" + (f" within {args.objective_ms:g} ms" if args.objective_ms else "")
          + f" ({path}; the server takes it on its next request)")
    return 0


def register(sub: Subparsers) -> None:
    """Add ``variant show`` and ``variant set`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    v = sub.add_parser("variant", help="default trunk variant of a repository exported with --variants per-request")
    verbs = v.add_subparsers(dest="verb", required=True)
    for verb in ("show", "set"):
        p = verbs.add_parser(verb, help="print the held variants and the default" if verb == "show"
                             else "set the default variant (a held one, or auto) without reloading")
        add_workdir(p)
        p.add_argument("--repository", help="repository directory (default: WORKDIR/model_repository)")
        if verb == "set":
            p.add_argument("name", metavar="NAME|auto", help="a held variant, or auto")
            p.add_argument("--objective-ms", type=float, help="auto: the latency objective of a request")
            p.add_argument("--headroom", type=float, help="auto: share of the objective a prediction may use (0.8)")
        p.set_defaults(func=_cmd_set if verb == "set" else _cmd_show)
