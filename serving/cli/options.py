"""Options that several command groups share: ``--workdir``, ``--heads-layout`` and ``--device``."""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from shared.workspace import DEFAULT_WORKDIR

#: ``serving.triton.model_configs.HEADS_LAYOUTS``, spelled here so that parsing the command line imports no protobuf.
LAYOUTS = ("per_task", "shared", "in_trunk")
#: ``transfer.training.devices.DEVICE_CHOICES``, spelled here so that parsing imports no torch.
DEVICES = ("auto", "cpu", "cuda")


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


def add_device(parser: argparse.ArgumentParser, work: str) -> None:
    """Add ``--device auto|cpu|cuda`` (default ``auto``: CUDA when torch sees a GPU).

    Args:
        parser: The subcommand's parser.
        work: What runs on the device, for the help text (e.g. ``"the head training"``).
    """
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help=f"where {work} runs: cuda (bf16, or fp16 with a loss scaler), cpu (fp32), "
                             "auto = cuda when available (default)")
