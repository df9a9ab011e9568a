"""Sustained-load soak: N concurrent clients for D seconds on the embedded Triton, every task.

Reports failed requests (must be 0), latency percentiles, throughput, and the server's memory
(PSS of tritonserver + every python-backend stub, summed over its process group) sampled every
few seconds; memory must stay flat after warm-up.

Reproduce (from the repository root):
    .venv/bin/python -m bench.soak --clients 16 --duration 60            # the test suite's fake workspace
    .venv/bin/python -m bench.soak --workdir polyhead-work --duration 60  # a real workspace (polyhead demo)
    POLYHEAD_SOAK=1 .venv/bin/python -m pytest tests/reliability/test_soak.py -q
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from serving.bench.load_generator import ClosedLoopLoad, detector_client
from serving.client import Detector
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.processes import group_memory_mib
from serving.triton.repository import build_repository


@dataclass
class SoakReport:
    clients: int
    duration_s: float
    tasks: list[str]
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    throughput_rps: float = 0.0
    pss_mib: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    warmup_s: float = 10.0

    def memory_growth_mib(self) -> float:
        """Largest PSS after warm-up minus the first PSS after warm-up."""
        after = [m for t, m in self.pss_mib if t >= self.warmup_s]
        return max(after) - after[0] if len(after) > 1 else 0.0


def pss_mib(pgid: int) -> float:
    """Summed PSS (MiB) of every live process in group ``pgid``."""
    return group_memory_mib(pgid)["pss_mib"]


def fake_workspace(root: Path) -> Path:
    """The test suite's tiny real workspace (ONNX trunk variants + three heads)."""
    from tests.fake_workspace import make_workspace

    return make_workspace(root)


def soak(
    server: EmbeddedTriton, clients: int = 16, duration_s: float = 60.0, sample_s: float = 5.0, warmup_s: float = 10.0
) -> SoakReport:
    """Run ``clients`` threads, each a Detector sending one image for every task, for ``duration_s``.

    A :class:`ClosedLoopLoad` (client ``i`` starts at image ``i`` of three sizes; 30 s deadline;
    error texts: the message cut to 300 characters); the server's PSS is sampled every
    ``sample_s`` while it runs and once after the clients stopped.
    """
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((240, 320), (200, 200), (120, 300))]
    with Detector(server.url) as det:
        tasks = det.tasks()
    report = SoakReport(clients=clients, duration_s=duration_s, tasks=tasks, warmup_s=warmup_s)
    load = ClosedLoopLoad(detector_client(server.url, images, None, timeout_s=30), clients,
                          describe=lambda err: str(err)[:300], join_timeout_s=60)
    with load:
        while (elapsed := load.now()) < duration_s:
            report.pss_mib.append((round(elapsed, 1), round(pss_mib(server.pid), 1)))
            time.sleep(min(sample_s, max(0.0, duration_s - elapsed)))
    wall = load.elapsed_s
    report.pss_mib.append((round(wall, 1), round(pss_mib(server.pid), 1)))
    report.ok, report.failed, report.errors = load.ok, load.failed, load.errors
    report.p50_ms, report.p95_ms, report.p99_ms = load.percentiles_ms((50, 95, 99)).values()
    latencies = load.latencies_s()
    report.max_ms = max(latencies) * 1000 if latencies else float("nan")
    report.throughput_rps = report.ok / wall
    return report


def run(workdir: Path | None, clients: int, duration_s: float, sample_s: float, warmup_s: float) -> SoakReport:
    """Build the repository, start the embedded server, soak it, stop it."""
    with tempfile.TemporaryDirectory(prefix="polyhead-soak-") as tmp:
        work = workdir if workdir is not None else fake_workspace(Path(tmp) / "work")
        repo = build_repository(work).path
        server = EmbeddedTriton(
            repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), admin_key=""
        )
        with server:
            return soak(server, clients, duration_s, sample_s, warmup_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="workspace (default: the tests' fake one)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before memory must stay flat")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    report = run(args.workdir, args.clients, args.duration, args.sample, args.warmup)
    print(f"tasks {report.tasks}, {report.clients} clients, {report.duration_s:.0f} s")
    print(f"requests ok {report.ok}, failed {report.failed}, {report.throughput_rps:.1f} req/s")
    print(f"latency ms p50 {report.p50_ms:.1f} p95 {report.p95_ms:.1f} p99 {report.p99_ms:.1f} max {report.max_ms:.1f}")
    print("server PSS MiB " + ", ".join(f"{t:.0f}s:{m:.0f}" for t, m in report.pss_mib))
    print(f"PSS growth after {report.warmup_s:.0f} s warm-up: {report.memory_growth_mib():.1f} MiB")
    for err in report.errors[:5]:
        print("error:", err)
    if args.out is not None:
        args.out.write_text(json.dumps({**asdict(report), "memory_growth_mib": report.memory_growth_mib()}, indent=1))
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
