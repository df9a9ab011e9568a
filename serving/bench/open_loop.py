"""Open-loop load: requests leave at scheduled arrival times, however fast the server answers.

A closed loop (:class:`serving.bench.load_generator.ClosedLoopLoad`) sends the next request only
when the previous one came back, so an overloaded server slows its own load down and the queue
it would have built never shows in the latencies ("coordinated omission"). Real users arrive on
their own clock. Here a dispatcher hands each request to a pool of sender threads at its
arrival time (a Poisson process whose rate changes by phase), and a request's latency counts from
its *scheduled* arrival: time spent waiting for a free sender is part of it. Each send is handed
that arrival too (Unix ns), so a server that judges a request by how long it already waited (the
per-request variants' ``auto``, through ``Detector.detect(arrived_unix_ns=...)``) sees the whole wait,
not only the part after a sender picked it up: a pool of ``senders`` threads bounds the server's
queue at ``senders`` requests and would otherwise hide the rest of it.

A trace is ``(seconds, rate)`` phases, rate in requests per second.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np

from serving.bench.load_generator import Sample, describe_error

#: An open-loop send: called with the request's scheduled arrival (Unix ns, as ``time.time_ns()``).
ArrivalSend = Callable[[int], object]
#: Per-sender factory: the sender's index -> a context manager yielding its :data:`ArrivalSend`.
ArrivalClientFactory = Callable[[int], AbstractContextManager[ArrivalSend]]


def arrival_times(trace: Sequence[tuple[float, float]], seed: int = 0) -> list[float]:
    """Poisson arrival times (seconds from the start) for ``(seconds, rate)`` phases, sorted.

    The gaps are exponential with mean ``1 / rate`` inside each phase (memoryless, so a phase
    change simply restarts the draw at its boundary); a phase of rate 0 sends nothing.

    Raises:
        ValueError: A phase with seconds <= 0 or rate < 0.
    """
    rng, times, start = np.random.default_rng(seed), [], 0.0
    for seconds, rate in trace:
        if seconds <= 0 or rate < 0:
            raise ValueError(f"open-loop phase ({seconds}, {rate}): seconds must be > 0 and rate >= 0")
        t, end = start, start + seconds
        while rate > 0:
            t += float(rng.exponential(1.0 / rate))
            if t >= end:
                break
            times.append(t)
        start = end
    return times


class OpenLoopLoad:
    """``senders`` threads with a client each, sending the requests a dispatcher hands them at their arrival times.

    Args:
        client: Per-sender factory (see :data:`ArrivalClientFactory`): its send is called with each
            request's scheduled arrival in Unix ns.
        senders: Sender threads; more than the server's queue ever holds, so that waiting for a
            sender is rare (it still counts when it happens).
        drain_s: After the last arrival, how long the in-flight and waiting requests may take.

    Attributes:
        samples: Every answered (or failed) request so far, in the order they finished; ``t`` is
            the scheduled arrival, ``latency_s`` from it to the answer.
        t0: Start of the schedule (``time.perf_counter()``).
        unix0_ns: The same instant as ``time.time_ns()``.
    """

    def __init__(self, client: ArrivalClientFactory, senders: int = 32, drain_s: float = 30.0) -> None:
        self._client, self.senders, self.drain_s = client, senders, drain_s
        self.samples: list[Sample] = []
        self.t0, self.unix0_ns = time.perf_counter(), time.time_ns()

    def now(self) -> float:
        """Seconds since the schedule started."""
        return time.perf_counter() - self.t0

    def run(self, times: Sequence[float]) -> list[Sample]:
        """Send one request at each of ``times`` (seconds from the start, sorted); block until answered or drained.

        Returns:
            One :class:`Sample` per scheduled request, in order of arrival; a request not answered
            before the drain ended is failed (``"not answered within the drain"``).
        """
        pending: queue.Queue[int | None] = queue.Queue()
        done: dict[int, Sample] = {}
        ready = threading.Barrier(self.senders + 1)

        def sender(index: int) -> None:
            with contextlib.ExitStack() as stack:
                try:
                    send = stack.enter_context(self._client(index))
                finally:
                    ready.wait()
                while (i := pending.get()) is not None:
                    try:
                        send(self.unix0_ns + round(times[i] * 1e9))
                        error = None
                    except Exception as err:  # kept: failures are a result of the load
                        error = describe_error(err)
                    done[i] = sample = Sample(times[i], self.now() - times[i], error is None, error)
                    self.samples.append(sample)

        threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(self.senders)]
        for thread in threads:
            thread.start()
        ready.wait()
        self.t0, self.unix0_ns = time.perf_counter(), time.time_ns()
        for i, t in enumerate(times):
            time.sleep(max(0.0, self.t0 + t - time.perf_counter()))
            pending.put(i)
        for _ in threads:
            pending.put(None)
        deadline = time.perf_counter() + self.drain_s
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.perf_counter()))
        late = "not answered within the drain"
        return [done.get(i) or Sample(t, float("inf"), False, late) for i, t in enumerate(times)]

