"""The ``polyhead`` command line: the parser of every command group, signals, errors and exit codes.

Each command group is one module with ``register(subparsers)``; :data:`COMMAND_GROUPS` lists them.
Exit codes: what the command returns (0 on success), 2 on a :class:`shared.errors.PolyheadError`
or a command line argparse rejects, 130 when interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings

from serving.cli import (
    bench_commands,
    compress_commands,
    data_commands,
    demo_command,
    measure_command,
    monitor_commands,
    predict_command,
    report_command,
    search_command,
    serving_commands,
    training_commands,
    variant_command,
)
from shared.errors import PolyheadError

#: ``polyhead --help``'s description.
DESCRIPTION = "The `polyhead` command line: parses arguments, calls library functions, prints results."
#: Every command group's ``register(subparsers)``, in the order ``polyhead --help`` lists the commands.
COMMAND_GROUPS = (
    demo_command.register,  # demo
    data_commands.register,  # data synth
    training_commands.register,  # train, eval
    bench_commands.register,  # bench serving | compress | controller
    serving_commands.register,  # add-task, export, serve, infer
    predict_command.register,  # predict
    compress_commands.register,  # compress
    search_command.register,  # search
    measure_command.register,  # measure
    monitor_commands.register,  # monitor, optimize
    report_command.register,  # report
    variant_command.register,  # variant show | set
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand; ``args.func(args)`` runs the one parsed."""
    parser = argparse.ArgumentParser(prog="polyhead", description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in COMMAND_GROUPS:
        register(subparsers)
    return parser


_PROJECT_PACKAGES = ("shared", "heads", "transfer", "serving")


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' signature)
    """The project's own warnings (counted fixes such as clipped boxes) as one ``polyhead: warning:`` line."""
    if category.__module__.split(".")[0] in _PROJECT_PACKAGES:
        return f"polyhead: warning: {message}\n"
    return _default_format_warning(message, category, filename, lineno, line)


_default_format_warning = warnings.formatwarning


class _Signals:
    """The command line's one handler of SIGTERM (and of Ctrl-C, for commands that run until stopped).

    SIGTERM unwinds like Ctrl-C: it raises :class:`KeyboardInterrupt`, so servers stop, workspace
    transactions (``add-task``, ``compress``) roll back and :func:`main` exits 130. A command that
    runs until stopped (``monitor``, ``optimize``) calls ``args.stop_event()`` instead: from then on
    SIGTERM and Ctrl-C set the returned event, its loop ends after the current step and the command
    returns normally.
    """

    def __init__(self) -> None:
        self._stop: threading.Event | None = None

    def handle(self, signum: int, frame: object) -> None:
        """The handler: raise :class:`KeyboardInterrupt`, or set the stop event once there is one."""
        if self._stop is None:
            raise KeyboardInterrupt
        self._stop.set()

    def stop_event(self) -> threading.Event:
        """An event SIGTERM and Ctrl-C set (instead of raising) from now on."""
        self._stop = threading.Event()
        signal.signal(signal.SIGINT, self.handle)
        return self._stop


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``polyhead`` console script.

    Args:
        argv: The arguments after ``polyhead``; default ``sys.argv[1:]``.

    Returns:
        The exit code (see the module docstring). The signal handlers are restored on the way out.
    """
    args = build_parser().parse_args(argv)
    signals = _Signals()
    args.stop_event = signals.stop_event
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, signals.handle)
    warnings.formatwarning = _format_warning
    try:
        return args.func(args)
    except PolyheadError as exc:
        print(f"polyhead: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polyhead: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = _default_format_warning
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
