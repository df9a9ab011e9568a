"""A load step against a live server, with or without the latency controller, and its analysis.

:class:`StepLoad` (a :class:`~serving.bench.load_generator.ClosedLoopLoad`) runs client threads
(instrumented ``Detector`` s: the controller reads their histograms through Prometheus) of which
the first ``n`` send requests back to back; :func:`run_load_step` holds ``base`` clients, steps
to ``step`` clients, and back, while a :class:`ControllerThread` (optional) evaluates and
switches. Every request is kept as a :class:`Sample` (send time, latency, outcome), so what
clients saw is measured directly and not through the histograms the controller reads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.bench.load_generator import ClosedLoopLoad, Sample, detector_client
from serving.controller import Controller, Decision
from serving.monitoring.metrics import InstrumentedDetector, PolyheadMetrics


@dataclass(frozen=True)
class Switch:
    """A decision the controller applied, with the time it finished (seconds since the load started)."""

    t: float
    decision: Decision


class StepLoad(ClosedLoopLoad):
    """``max_clients`` instrumented client threads; the first :attr:`active` of them send requests back to back.

    A :class:`~serving.bench.load_generator.ClosedLoopLoad` of :func:`detector_client` s wrapped in
    ``InstrumentedDetector`` (their histograms go to ``metrics``), none active until
    :meth:`set_clients`; client ``i`` starts at image ``i``. Error texts: ``"TypeName: message"``.

    Args:
        url: Triton gRPC ``host:port``.
        images: Images sent round-robin (one per request).
        tasks: ``detect`` tasks argument (``None``: fan-out to every task).
        metrics: Where the clients' histograms go (served for Prometheus by the caller).
        max_clients: Threads (each with its own gRPC channel).
        timeout_s: Per-call deadline.
    """

    def __init__(
        self,
        url: str,
        images: Sequence[np.ndarray],
        tasks: str | Sequence[str] | None,
        metrics: PolyheadMetrics,
        max_clients: int,
        timeout_s: float = 30.0,
    ) -> None:
        self.url, self.images, self.tasks, self.metrics = url, list(images), tasks, metrics
        self.timeout_s = timeout_s
        client = detector_client(
            url, self.images, tasks, timeout_s, wrap=lambda det: InstrumentedDetector(det, metrics)
        )
        super().__init__(client, max_clients, active=0, join_timeout_s=timeout_s + 5)


class ControllerThread:
    """Runs ``controller.step()`` every ``config.interval_s`` and keeps each applied switch with its time.

    Args:
        controller: The controller (with a switcher: decisions are applied).
        clock: Time source for :class:`Switch` times (e.g. :meth:`StepLoad.now`).
    """

    def __init__(self, controller: Controller, clock: Callable[[], float]) -> None:
        self.controller, self.clock = controller, clock
        self.switches: list[Switch] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        interval = self.controller.policy.config.interval_s
        while not self._stop.wait(interval):
            decision = self.controller.step()
            if decision is not None:
                self.switches.append(Switch(self.clock(), decision))

    def __enter__(self) -> ControllerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=300)


@dataclass(frozen=True)
class StepPlan:
    """Phases of a load step (seconds and client counts)."""

    base_clients: int = 1
    step_clients: int = 4
    warmup_s: float = 10.0
    step_s: float = 60.0
    after_s: float = 60.0


@dataclass
class StepRun:
    """What one load step produced (times in seconds since the load started)."""

    samples: list[Sample]
    step_start: float
    step_end: float
    end: float
    switches: list[Switch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_load_step(load: StepLoad, plan: StepPlan, controller: Controller | None = None) -> StepRun:
    """Warm-up with ``base_clients``, ``step_clients`` for ``step_s``, ``base_clients`` again for ``after_s``.

    Args:
        load: A started :class:`StepLoad` with at least ``step_clients`` threads.
        plan: The phases.
        controller: Evaluates and switches during the whole run (``None``: variant stays as it is).
    """
    ctl = ControllerThread(controller, load.now) if controller is not None else None
    with ctl if ctl is not None else contextlib.nullcontext():
        load.set_clients(plan.base_clients)
        time.sleep(plan.warmup_s)
        step_start = load.now()
        load.set_clients(plan.step_clients)
        time.sleep(plan.step_s)
        step_end = load.now()
        load.set_clients(plan.base_clients)
        time.sleep(plan.after_s)
    end = load.now()
    load.set_clients(0)
    return StepRun(list(load.samples), step_start, step_end, end, list(ctl.switches) if ctl else [], list(load.errors))


def p95_between(samples: Sequence[Sample], start: float, end: float) -> float | None:
    """p95 latency (s) of successful requests sent in ``[start, end)`` (``None``: none)."""
    lat = [s.latency_s for s in samples if start <= s.t < end and s.ok]
    return float(np.percentile(lat, 95)) if lat else None


def share_over(samples: Sequence[Sample], start: float, end: float, objective_s: float) -> float | None:
    """Share of requests sent in ``[start, end)`` slower than ``objective_s`` or failed."""
    sel = [s for s in samples if start <= s.t < end]
    return sum(1 for s in sel if not s.ok or s.latency_s > objective_s) / len(sel) if sel else None


def time_back_under(
    samples: Sequence[Sample], start: float, end: float, objective_s: float, window_s: float = 5.0
) -> float | None:
    """Seconds from ``start`` until the rolling p95 is under the objective for good (until ``end``).

    The rolling p95 is taken over the requests sent in the last ``window_s`` seconds, every second;
    the result is the end of the first window from which every later window is under the
    objective. ``None``: the step ended over the objective.
    """
    ends = np.arange(start + window_s, end + 1e-9, 1.0)
    under = [(p := p95_between(samples, e - window_s, e)) is not None and p <= objective_s for e in ends]
    if not under or not under[-1]:
        return None
    first = len(under)
    while first > 0 and under[first - 1]:
        first -= 1
    return float(ends[first] - start)
