"""Load generation over the client SDK: one closed-loop generator, and one-at-a-time latencies.

:class:`ClosedLoopLoad` is the only request loop of the benchmarks: ``clients`` threads, each with
its own client (built in the thread by a per-client factory), of which the first
:attr:`~ClosedLoopLoad.active` send one request after the other (closed loop: the next request
leaves when the previous one came back). Every request is kept as a :class:`Sample` (send time,
latency, outcome, error text), and the summaries (ok / failed counts, requests per second,
percentiles) are computed from them. It is used directly (``bench.soak``, ``_throughput`` in
:mod:`serving.bench.serving_bench`) and through :class:`BackgroundTraffic` (here) and
:class:`serving.bench.load_step.StepLoad`.

:func:`measure` is not a generator: a fixed number of requests, one at a time, on the caller's
detector (the demo's per-task latencies).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from serving.client import Detector

#: Sends one request (raises on failure); what it returns is ignored.
Send = Callable[[], object]
#: Builds client ``index``'s sender, called in that client's thread; the context closes the client.
ClientFactory = Callable[[int], AbstractContextManager[Send]]

_Load = TypeVar("_Load", bound="ClosedLoopLoad")


@dataclass(frozen=True, slots=True)
class Sample:
    """One request as its client saw it.

    Attributes:
        t: Send time, seconds since the load started.
        latency_s: End-to-end latency (successful calls; failed ones: time until the error).
        ok: Whether the call succeeded.
        error: The failure as the load's ``describe`` wrote it (``None`` when ``ok``).
    """

    t: float
    latency_s: float
    ok: bool
    error: str | None = None


def describe_error(err: Exception) -> str:
    """``"TypeName: message"``, the message cut to 200 characters (:class:`ClosedLoopLoad`'s default)."""
    return f"{type(err).__name__}: {str(err)[:200]}"


def percentiles_ms(latencies_s: Sequence[float], qs: Sequence[float] = (50, 95)) -> dict[str, float]:
    """``{"p50_ms": ..., "p95_ms": ...}`` (one key ``p<q>_ms`` per ``q``) of latencies in seconds.

    Every value is ``nan`` when ``latencies_s`` is empty.
    """
    ms = np.asarray(list(latencies_s) or [float("nan")], dtype=float) * 1000
    return {f"p{q:g}_ms": float(np.percentile(ms, q)) for q in qs}


class ClosedLoopLoad:
    """``clients`` threads sending requests back to back until stopped; every request kept as a :class:`Sample`.

    Each thread calls ``client(index)`` (``index`` in ``[0, clients)``) once, enters the returned
    context to get its sender, and while the load runs calls it in a loop when ``index < active``
    (others poll every ``idle_poll_s``). A sender that raises ``Exception`` is a failed request:
    recorded (``describe(err)`` in :attr:`Sample.error`), never raised; the thread goes on.

    Args:
        client: Per-client factory (see :data:`ClientFactory`); e.g. :func:`detector_client`.
        clients: Threads (each with its own client).
        active: Clients sending from the start (``None``: all); change it with :meth:`set_clients`.
        describe: Error text kept for a failed request (default :func:`describe_error`).
        join_timeout_s: How long :meth:`stop` waits for each thread (``None``: until it ends); an
            in-flight call finishes first, so leave it room for one call's deadline.
        idle_poll_s: How often an inactive client checks whether it may send.

    Attributes:
        samples: Every finished request, in the order they finished (appended from the threads).
        t0: Start time (``time.perf_counter()``); :attr:`Sample.t` counts from it.
        active: Clients allowed to send (the first ``active`` indices).
    """

    def __init__(
        self,
        client: ClientFactory,
        clients: int,
        active: int | None = None,
        describe: Callable[[Exception], str] = describe_error,
        join_timeout_s: float | None = None,
        idle_poll_s: float = 0.02,
    ) -> None:
        self._client, self._describe = client, describe
        self.join_timeout_s, self.idle_poll_s = join_timeout_s, idle_poll_s
        self.samples: list[Sample] = []
        self.t0 = time.perf_counter()
        self._t_end: float | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        self.active = 0
        self.set_clients(clients if active is None else active)

    @property
    def clients(self) -> int:
        """Client threads (active or not)."""
        return len(self._threads)

    def now(self) -> float:
        """Seconds since the load started."""
        return time.perf_counter() - self.t0

    def set_clients(self, n: int) -> None:
        """Let the first ``n`` clients send (clamped to ``[0, clients]``; the others idle)."""
        self.active = max(0, min(n, len(self._threads)))

    def _run(self, index: int) -> None:
        with self._client(index) as send:
            while not self._stop.is_set():
                if index >= self.active:
                    self._stop.wait(self.idle_poll_s)
                    continue
                t = time.perf_counter()
                try:
                    send()
                    error = None
                except Exception as err:  # kept: failures are a result of the load
                    error = self._describe(err)
                self.samples.append(Sample(t - self.t0, time.perf_counter() - t, error is None, error))

    def start(self: _Load) -> _Load:
        """Reset the clock and start the threads (only the first :attr:`active` send)."""
        self.t0 = time.perf_counter()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop every thread (in-flight calls finish) and fix :attr:`elapsed_s`."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.join_timeout_s)
        self._t_end = time.perf_counter()

    def __enter__(self: _Load) -> _Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def elapsed_s(self) -> float:
        """Seconds from :meth:`start` to the end of :meth:`stop` (so far, while running)."""
        return (self._t_end if self._t_end is not None else time.perf_counter()) - self.t0

    @property
    def ok(self) -> int:
        """Successful requests so far."""
        return sum(1 for s in list(self.samples) if s.ok)

    @property
    def failed(self) -> int:
        """Failed requests so far."""
        return sum(1 for s in list(self.samples) if not s.ok)

    @property
    def errors(self) -> list[str]:
        """The failed requests' error texts, in the order they finished."""
        return [s.error or "" for s in list(self.samples) if not s.ok]

    def latencies_s(self) -> list[float]:
        """Latencies (s) of the successful requests, in the order they finished."""
        return [s.latency_s for s in list(self.samples) if s.ok]

    def percentiles_ms(self, qs: Sequence[float] = (50, 95)) -> dict[str, float]:
        """:func:`percentiles_ms` of the successful requests (``nan`` without any)."""
        return percentiles_ms(self.latencies_s(), qs)

    def ok_per_s(self) -> float:
        """Successful requests per second of :attr:`elapsed_s` (images/s when a request is one image)."""
        return self.ok / max(self.elapsed_s, 1e-9)


def detector_client(
    url: str,
    images: Sequence[np.ndarray],
    tasks: str | Sequence[str] | None,
    timeout_s: float = 30.0,
    wrap: Callable[[Detector], AbstractContextManager] | None = None,
    stagger: bool = True,
) -> ClientFactory:
    """A :data:`ClientFactory` of ``Detector`` s: each request one ``detect(image, tasks)`` call.

    Args:
        url: Triton gRPC ``host:port``.
        images: Images sent round-robin, one per request (each ``(H, W, 3)`` uint8, or whatever
            ``Detector.detect`` takes as one image).
        tasks: ``detect``'s ``tasks`` (``None``: fan-out to every task).
        timeout_s: Per-call deadline.
        wrap: Wraps each client's detector (e.g. ``InstrumentedDetector``); the wrapper's context
            closes it.
        stagger: Client ``i`` starts at image ``i`` (else every client starts at image 0).
    """
    images = list(images)

    @contextlib.contextmanager
    def client(index: int) -> Iterator[Send]:
        det = Detector(url, timeout_s=timeout_s)
        with (wrap(det) if wrap is not None else det) as sender:
            n = itertools.count(index if stagger else 0)
            yield lambda: sender.detect(images[next(n) % len(images)], tasks=tasks)

    return client


class BackgroundTraffic(ClosedLoopLoad):
    """``threads`` detectors sending requests until stopped; :attr:`ok`, :attr:`failed` and :attr:`errors` count them.

    Use as a context manager around an operation that must not disturb serving (hot-add, switch).
    Error texts are the exception's message, cut to 200 characters.

    Args:
        url: Triton gRPC ``host:port``.
        images: Images sent round-robin (every thread starts at the first).
        tasks: ``detect``'s ``tasks`` (``None``: fan-out to every task).
        threads: Client threads.
        timeout_s: Per-call deadline.
    """

    def __init__(
        self, url: str, images: Sequence[np.ndarray], tasks: str | Sequence[str] | None, threads: int = 2,
        timeout_s: float = 30.0,
    ) -> None:  # fmt: skip
        self.url, self.images, self.tasks, self.timeout_s = url, list(images), tasks, timeout_s
        super().__init__(detector_client(url, self.images, tasks, timeout_s, stagger=False), threads,
                         describe=lambda err: str(err)[:200], join_timeout_s=timeout_s + 5)  # fmt: skip


def interleaved(fns: dict[str, Callable[[], object]], seconds: float, block: int = 20) -> dict[str, dict]:
    """p50/p95 of each of ``fns``, run one call at a time in alternating blocks of ``block`` calls.

    Alternating (after 3 warm-up calls each) spreads the machine's noise over every side alike;
    ``seconds`` is the time of all sides together. The benchmarks' way to compare sides in one run.

    Returns:
        Name -> ``{"p50_ms", "p95_ms", "runs"}``.
    """
    for fn in fns.values():
        for _ in range(3):
            fn()
    lat: dict[str, list[float]] = {name: [] for name in fns}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for name, fn in fns.items():
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                lat[name].append(time.perf_counter() - t0)
    return {name: {**percentiles_ms(values, (50, 95)), "runs": len(values)} for name, values in lat.items()}


@dataclass
class LatencyStats:
    """Latencies of repeated requests (milliseconds) and failures."""

    samples_ms: list[float] = field(default_factory=list)
    failures: int = 0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in ms (nan without samples)."""
        return float(np.percentile(self.samples_ms, q)) if self.samples_ms else float("nan")


def measure(detector: Detector, images: Sequence[np.ndarray], tasks, repeats: int = 30) -> LatencyStats:
    """Send ``repeats`` single-image requests for ``tasks`` one after another and time each.

    One warm-up call first (it fetches configs; it raises if the server is down); failures after it
    are counted, not raised (this measures availability too).
    """
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
