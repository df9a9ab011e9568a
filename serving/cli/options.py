"""Options that several command groups share: ``--workdir`` and ``--heads-layout``."""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from shared.workspace import DEFAULT_WORKDIR

#: ``serving.triton.model_configs.HEADS_LAYOUTS``, spelled here so that parsing the command line imports no protobuf.
LAYOUTS = ("per_task", "shared", "in_trunk")


class Subparsers(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as the command groups use it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """Add the subcommand ``name``; returns its parser."""


def add_workdir(parser: argparse.ArgumentParser) -> None:
    """Add ``--workdir`` (the workspace directory, default :data:`shared.workspace.DEFAULT_WORKDIR`)."""
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="workspace directory (default: %(default)s)")


def default_layout(backend: str) -> str:
    """The heads layout for ``backend``: in-trunk for python (one backend process), per-task for onnxruntime."""
    return "in_trunk" if backend == "python" else "per_task"


def add_heads_layout(parser: argparse.ArgumentParser, default: str | None, help_text: str) -> None:
    """Add ``--heads-layout per-task|shared|in-trunk``; ``args.heads_layout`` is the library's spelling.

    Args:
        parser: The subcommand's parser.
        default: The layout when the flag is absent; ``None``: the backend's default
            (:func:`default_layout`), resolved by the command.
        help_text: The option's help.
    """
    parser.add_argument("--heads-layout", type=lambda text: text.replace("-", "_"), choices=LAYOUTS,
                        default=default, metavar="{per-task,shared,in-trunk}", help=help_text)
