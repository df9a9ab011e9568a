"""Small load generators over the client SDK: latency percentiles and background traffic."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.client import Detector


@dataclass
class LatencyStats:
    """Latencies of repeated requests (milliseconds) and failures."""

    samples_ms: list[float] = field(default_factory=list)
    failures: int = 0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in ms (nan without samples)."""
        return float(np.percentile(self.samples_ms, q)) if self.samples_ms else float("nan")


def measure(detector: Detector, images: Sequence[np.ndarray], tasks, repeats: int = 30) -> LatencyStats:
    """Send ``repeats`` single-image requests for ``tasks`` one after another and time each."""
    stats = LatencyStats()
    detector.detect(images[0], tasks=tasks)  # warm-up (fetches configs, first-run allocations)
    for i in range(repeats):
        t0 = time.perf_counter()
        try:
            detector.detect(images[i % len(images)], tasks=tasks)
            stats.samples_ms.append((time.perf_counter() - t0) * 1000)
        except Exception:  # counted, not raised: this measures availability too
            stats.failures += 1
    return stats


class BackgroundTraffic:
    """Threads sending requests until stopped; counts successes and failures.

    Use as a context manager around an operation that must not disturb serving (hot-add, switch).
    """

    def __init__(self, url: str, images: Sequence[np.ndarray], tasks, threads: int = 2, timeout_s: float = 30.0):
        self.url, self.images, self.tasks, self.timeout_s = url, list(images), tasks, timeout_s
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with Detector(self.url, timeout_s=self.timeout_s) as det:
            i = 0
            while not self._stop.is_set():
                try:
                    det.detect(self.images[i % len(self.images)], tasks=self.tasks)
                    with self._lock:
                        self.ok += 1
                except Exception as exc:  # recorded for the caller's assertion
                    with self._lock:
                        self.failed += 1
                        self.errors.append(str(exc)[:200])
                i += 1

    def __enter__(self) -> BackgroundTraffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)
