"""The cpu overlay's containers, run on this machine with the manifests' own command lines.

The triton container (`polyhead serve ...`) and its exporter sidecar (`polyhead monitor ...`) are
taken from the rendered overlay, only paths and ports swapped for local ones, and started as the
image would start them (entrypoint `polyhead`); a `polyhead predict` request then goes through. This
is what docs/deploy.md "Run the cpu overlay's containers locally" shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.triton import deployment_facts as facts
from serving.triton.embedded_server import free_port
from tests.k8s.manifests import container, one

pytestmark = pytest.mark.triton

POLYHEAD = [sys.executable, "-m", "serving.cli.main"]  # the image's entrypoint


def localised(args: list[str], swaps: dict[str, str]) -> list[str]:
    """``args`` with every ``--flag=value`` whose flag is in ``swaps`` given the local value."""
    out = []
    for arg in args:
        flag = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        out.append(f"--{flag}={swaps[flag]}" if flag in swaps else arg)
    return out


def wait_for(url: str, timeout_s: float = 120.0, contains: str = "") -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = resp.read().decode()
                if resp.status == 200 and contains in body:
                    return body
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready (with {contains!r}) within {timeout_s} s")


def test_cpu_overlay_triton_and_exporter_command_lines_serve_locally(rendered, workspace, tmp_path):
    dep = one(rendered["cpu"], "Deployment", "polyhead-triton")
    triton, exporter = container(dep, "triton"), container(dep, "exporter")
    http, grpc, metrics, exporter_port = (free_port() for _ in range(4))
    serve_args = localised(triton["args"], {"workdir": str(workspace), "host": "127.0.0.1", "http-port": str(http),
                                            "grpc-port": str(grpc), "metrics-port": str(metrics)})
    assert serve_args[0] == "serve" and len(serve_args) == len(triton["args"])  # the same flags, no more
    # the container's environment: its mounts (/var/cache/polyhead, /tmp) become local folders, the
    # Secret's key a local one
    mounts = {"/var/cache/polyhead": str(tmp_path / "cache"), "/tmp": str(tmp_path / "home")}
    env = dict(os.environ)
    for item in triton["env"]:
        env[item["name"]] = mounts.get(item.get("value"), item.get("value")) if "value" in item else "local-key"
    assert env[facts.ADMIN_KEY_ENV] == "local-key" and env["POLYHEAD_CACHE"] == mounts["/var/cache/polyhead"]
    monitor_args = localised(exporter["args"], {
        "triton-metrics": f"http://127.0.0.1:{metrics}{facts.METRICS_PATH}", "server": f"127.0.0.1:{grpc}",
        "metrics-port": str(exporter_port), "address": "127.0.0.1"})
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("serve", "monitor")}  # noqa: SIM115
    procs = [subprocess.Popen([*POLYHEAD, *serve_args], env=env, stdout=logs["serve"], stderr=subprocess.STDOUT)]
    try:
        wait_for(f"http://127.0.0.1:{http}{facts.READY_PATH}")
        procs.append(subprocess.Popen([*POLYHEAD, *monitor_args], env=env, stdout=logs["monitor"],
                                      stderr=subprocess.STDOUT))
        wait_for(f"http://127.0.0.1:{exporter_port}/metrics")  # the sidecar is up: it counts from here
        time.sleep(2.5)  # two of its 1 s reads, so the request below is a change it sees
        photo = tmp_path / "photo.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(photo)
        predict = subprocess.run([*POLYHEAD, "predict", "--server", f"127.0.0.1:{grpc}", str(photo),
                                  "--json", str(tmp_path / "dets.json"), "--conf", "0"],
                                 env=env, capture_output=True, text=True, timeout=120)
        assert predict.returncode == 0, predict.stdout + predict.stderr
        assert (tmp_path / "dets.json").is_file()
        # the sidecar turns Triton's counters into the per-task histograms the dashboards read
        body = wait_for(f"http://127.0.0.1:{exporter_port}/metrics", contains="polyhead_server_latency_seconds_count")
        assert "polyhead_live_trunk_version" in body or "polyhead_trunk" in body
        assert any(Path(mounts["/var/cache/polyhead"]).iterdir())  # the backend cache went where the env says
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=60)
        for fh in logs.values():
            fh.close()
    assert all(p.returncode in (0, -15) for p in procs), [(tmp_path / f"{n}.log").read_text()[-2000:] for n in logs]
