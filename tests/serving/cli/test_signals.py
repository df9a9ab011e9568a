"""The command line's one signal handler: SIGTERM unwinds like Ctrl-C, or stops a loop between steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.cli import demo_command, main, monitor_commands
from serving.triton.embedded_server import free_port

ROOT = Path(__file__).resolve().parents[3]


def test_sigterm_interrupts_a_command_like_ctrl_c_and_main_restores_the_handlers(monkeypatch, capsys):
    def command(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises KeyboardInterrupt here
        return 0

    monkeypatch.setattr(demo_command, "_cmd_demo", command)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    assert main.main(["demo"]) == 130
    assert capsys.readouterr().err == "polyhead: interrupted\n"
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_command_that_asks_for_a_stop_event_gets_sigterm_and_ctrl_c_as_that_event(monkeypatch):
    seen = []

    def command(args):
        for sig in (signal.SIGTERM, signal.SIGINT):
            stop = args.stop_event()
            os.kill(os.getpid(), sig)  # no KeyboardInterrupt: the event is set
            seen.append(stop.wait(10))
        return 0

    monkeypatch.setattr(monitor_commands, "_cmd_monitor", command)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    assert main.main(["monitor"]) == 0
    assert seen == [True, True]
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_monitor_stops_cleanly_on_a_signal(sig):
    triton = f"http://127.0.0.1:{free_port()}/metrics"  # nobody there: each poll logs a warning and goes on
    cmd = [sys.executable, "-m", "serving.cli.main", "monitor", "--triton-metrics", triton, "--address", "127.0.0.1",
           "--metrics-port", str(free_port()), "--interval", "0.2"]  # fmt: skip
    # SIGINT back to default in the child (a non-interactive shell's `cmd &` hands it down ignored)
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        assert proc.stdout.readline().startswith("polyhead monitor: reading")
        time.sleep(0.5)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "interrupted" not in err and "Traceback" not in err
