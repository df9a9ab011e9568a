"""polyhead's own Prometheus metrics (prometheus-client) and the client-side instrumentation.

Where each series is measured (see ``docs/monitoring.md``):

* ``polyhead_request_latency_seconds{task,model}`` (histogram), ``polyhead_requests_total{task,code}``,
  ``polyhead_request_errors_total{task,code}``, ``polyhead_slo_violations_total{task}``: in the client,
  by :class:`InstrumentedDetector` around every ``detect`` call (true end to end: preprocessing,
  network, server, decoding). A fan-out call counts once for every task it answers.
* ``polyhead_server_latency_seconds{task,model,stage}`` (histogram): beside the server, by
  :class:`serving.monitoring.latency_exporter.TritonExporter`, derived from Triton's cumulative counters.
* ``polyhead_trunk_variant_info{variant,version}``, ``polyhead_live_trunk_version``: exporter and
  controller (read from Triton's repository index + the trunk config).
* ``polyhead_slo_objective_seconds{task}``: whoever knows the objectives (client wrapper, exporter,
  controller). ``polyhead_controller_decisions_total{from,to,reason}``,
  ``polyhead_trunk_batch_delay_seconds``: the controller.

:class:`PrometheusReader` reads them back (recording rules) through Prometheus' HTTP API.

Example:
    >>> metrics = PolyheadMetrics()
    >>> metrics.serve(9100)                                   # /metrics on 127.0.0.1:9100
    >>> det = InstrumentedDetector(Detector(url), metrics, objectives_s={"cars": 0.05})
    >>> det.detect(image, tasks="cars")
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from threading import Thread

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from serving.client.protocol import UnknownTaskError
from serving.triton.model_names import FANOUT_MODEL, task_model
from shared.errors import ConfigError, InputError, ServingError

#: Latency buckets (seconds): dense between 1 ms and 100 ms where objectives live, up to 2 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
)  # fmt: skip

#: Recording rules (monitoring/prometheus/rules.yml) the controller reads, by ``source``.
P95_QUERIES = {
    "client": "polyhead:request_latency_seconds:p95",
    "server": "polyhead:server_latency_seconds:p95",
}

#: ``task`` label of a request naming a task the server does not serve (bounded cardinality).
UNKNOWN_TASK_LABEL = "_unknown"


def error_code(err: BaseException) -> str:
    """A gRPC-style status code for a failed ``detect`` call (the ``code`` label)."""
    if isinstance(err, UnknownTaskError):
        return "NOT_FOUND"
    if isinstance(err, InputError):
        return "INVALID_ARGUMENT"
    if isinstance(err, ServingError):
        msg = str(err)
        if "no answer within" in msg:
            return "DEADLINE_EXCEEDED"
        if "unavailable" in msg:
            return "UNAVAILABLE"
        return "INTERNAL"
    return "UNKNOWN"


class PolyheadMetrics:
    """Every ``polyhead_*`` metric, registered in one registry (a fresh one by default).

    Args:
        registry: Where to register; a fresh :class:`CollectorRegistry` keeps tests and several
            instances in one process apart. Pass ``prometheus_client.REGISTRY`` to add them to the
            default (process) metrics.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "polyhead_request_latency_seconds",
            "End-to-end latency of detect calls per task, measured by the client SDK.",
            ["task", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "polyhead_requests", "Detect calls per task (every outcome).", ["task", "code"], registry=r
        )
        self.errors = Counter(
            "polyhead_request_errors", "Failed detect calls per task.", ["task", "code"], registry=r
        )
        self.variant_info = Gauge(
            "polyhead_trunk_variant_info", "1 for the live trunk variant.", ["variant", "version"], registry=r
        )
        self.objective = Gauge(
            "polyhead_slo_objective_seconds", "Latency objective (p95) per task.", ["task"], registry=r
        )
        self.violations = Counter(
            "polyhead_slo_violations", "Detect calls slower than their task's objective.", ["task"], registry=r
        )
        self.decisions = Counter(
            "polyhead_controller_decisions",
            "Trunk variant switches decided by the controller.",
            ["from", "to", "reason"],
            registry=r,
        )
        self.live_version: Gauge | None = None  # created on first use: only processes that know it export it
        self.batch_delay: Gauge | None = None  # likewise (the controller)
        self._objectives: dict[str, float] = {}
        self._live: tuple[str, str] | None = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> tuple[object, Thread]:
        """Serve ``/metrics`` of this registry on ``addr:port`` (a daemon thread).

        Returns:
            The ``(server, thread)`` pair of ``prometheus_client.start_http_server``; call
            ``server.shutdown()`` to stop it.
        """
        return start_http_server(port, addr=addr, registry=self.registry)

    def set_objectives(self, objectives_s: Mapping[str, float]) -> None:
        """Set per-task latency objectives in seconds (exported and used to count violations).

        Raises:
            ConfigError: If an objective is not a positive number.
        """
        for task, value in objectives_s.items():
            if not value > 0:
                raise ConfigError(f"objective of task {task!r} must be > 0 seconds, got {value!r}")
            self._objectives[task] = float(value)
            self.objective.labels(task).set(value)
            self.violations.labels(task)  # exported as 0 before the first violation

    def observe(self, tasks: Sequence[str], model: str, seconds: float, code: str = "OK") -> None:
        """Record one detect call that answered ``tasks`` through ``model`` in ``seconds``."""
        for task in tasks:
            self.requests.labels(task, code).inc()
            if code != "OK":
                self.errors.labels(task, code).inc()
                continue
            self.latency.labels(task, model).observe(seconds)
            objective = self._objectives.get(task)
            if objective is not None and seconds > objective:
                self.violations.labels(task).inc()

    def set_live_variant(self, version: int, variant: str) -> None:
        """Mark trunk ``version`` (variant name ``variant``) live; the previous one disappears."""
        key = (variant, str(version))
        if self._live is not None and self._live != key:
            self.variant_info.remove(*self._live)
        self.variant_info.labels(*key).set(1)
        if self.live_version is None:
            self.live_version = Gauge(
                "polyhead_live_trunk_version", "Live trunk version number.", registry=self.registry
            )
        self.live_version.set(version)
        self._live = key

    def set_batch_delay(self, delay_us: int | None) -> None:
        """Export the trunk's live dynamic-batching delay (``None``: batching off, exported as -1)."""
        if self.batch_delay is None:
            self.batch_delay = Gauge(
                "polyhead_trunk_batch_delay_seconds",
                "Dynamic batching max queue delay of the live trunk; -1 when dynamic batching is off.",
                registry=self.registry,
            )
        self.batch_delay.set(-1 if delay_us is None else delay_us / 1e6)

    def record_decision(self, from_variant: str, to_variant: str, reason: str) -> None:
        """Count one controller decision (``reason``: e.g. ``over_objective``, ``load_fell``).

        Delay decisions are labelled ``delay:<us|off>`` (e.g. ``from="delay:off", to="delay:500us"``).
        """
        self.decisions.labels(from_variant, to_variant, reason).inc()


class InstrumentedDetector:
    """Wrap a :class:`serving.client.Detector` so each ``detect`` call is measured per task.

    Latency is observed only for successful calls; failures count in ``requests`` and ``errors``
    with their code and are re-raised unchanged.

    Args:
        detector: A connected ``Detector`` (anything with ``detect(images, tasks)`` and ``tasks()``).
        metrics: Where to record.
        objectives_s: Optional per-task objectives in seconds (exported; violations counted).
    """

    def __init__(
        self,
        detector: object,
        metrics: PolyheadMetrics,
        objectives_s: Mapping[str, float] | None = None,
    ) -> None:
        self.detector = detector
        self.metrics = metrics
        if objectives_s:
            metrics.set_objectives(objectives_s)

    def __getattr__(self, name: str) -> object:
        return getattr(self.detector, name)  # tasks(), close(), refresh(), ...

    def __enter__(self) -> InstrumentedDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detector.close()

    def detect(self, images: object, tasks: str | Sequence[str] | None = None) -> list:
        """``Detector.detect``, timed; same arguments, result and exceptions."""
        t0 = time.perf_counter()
        try:
            result = self.detector.detect(images, tasks=tasks)
        except Exception as err:
            self._record_failure(tasks, err)
            raise
        wanted = self._wanted(tasks)
        model = FANOUT_MODEL if len(wanted) > 1 else task_model(wanted[0])
        self.metrics.observe(wanted, model, time.perf_counter() - t0)
        return result

    def _wanted(self, tasks: str | Sequence[str] | None) -> list[str]:
        if tasks is None:
            return list(self.detector.tasks())
        return [tasks] if isinstance(tasks, str) else list(tasks)

    def _record_failure(self, tasks: str | Sequence[str] | None, err: Exception) -> None:
        wanted = [UNKNOWN_TASK_LABEL]
        if not isinstance(err, UnknownTaskError):
            try:
                wanted = self._wanted(tasks) or wanted
            except Exception:  # server down: the served task list is unreachable too
                pass
        self.metrics.observe(wanted, "", 0.0, code=error_code(err))


class PrometheusReader:
    """Instant queries against Prometheus' HTTP API.

    Args:
        url: Base URL, e.g. ``http://127.0.0.1:9090``.
        timeout_s: Per-request timeout.
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """Run an instant query; return ``(labels, value)`` per sample.

        Raises:
            ServingError: Prometheus unreachable or the query rejected.
        """
        qs = urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ServingError(f"Prometheus query {expr!r} at {self.url} failed: {err}") from err
        if body.get("status") != "success":
            raise ServingError(f"Prometheus rejected {expr!r}: {body.get('error')}")
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def p95(self, source: str = "client") -> dict[str, float | None]:
        """p95 seconds per task from the recording rule of ``source`` (NaN -> ``None``)."""
        if source not in P95_QUERIES:
            raise ConfigError(f"source must be one of {sorted(P95_QUERIES)}, got {source!r}")
        return {
            labels.get("task", ""): None if math.isnan(value) else value
            for labels, value in self.query(P95_QUERIES[source])
        }
