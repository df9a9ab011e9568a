"""An exporter beside Triton: per-model latency histograms derived from Triton's counters.

Triton 2.51 exports latency only as cumulative counters (``nv_inference_*_duration_us``) and
per-pod summaries, neither of which gives aggregatable quantiles. :class:`TritonExporter` polls
the metrics endpoint every ``interval_s``; for each model it takes the requests finished since the
last poll (``n``) and the time they spent (``d``), and adds ``n`` observations of the interval mean
``d / n`` to a histogram ``polyhead_server_latency_seconds{task,model,stage}``. The histogram is
therefore one of interval means: exact in count and sum, smoothed in its tails (shorten
``interval_s`` to sharpen it). It needs nothing in the request path, so the NGC deployment
(onnxruntime backend) gets the same series as the embedded server.

Task labels: ``detect_<task>`` -> ``<task>``; the fan-out ``detect`` -> every served task (one
observation each, like the client SDK counts a fan-out call); leaves (``trunk``, ``head_*``) -> ``""``.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from serving.monitoring.metrics import LATENCY_BUCKETS, PolyheadMetrics
from serving.triton.model_names import FANOUT_MODEL, TRUNK_MODEL, task_of_model
from shared.errors import ServingError

log = logging.getLogger(__name__)

#: Histogram stage label -> Triton counter it is derived from.
STAGES = {
    "request": "nv_inference_request_duration_us",
    "queue": "nv_inference_queue_duration_us",
    "compute_infer": "nv_inference_compute_infer_duration_us",
}
_COUNT = "nv_inference_request_success"


@dataclass
class _Series:
    """Cumulative bucket counts (one per ``LATENCY_BUCKETS`` bound, then +Inf) and the sum."""

    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def add(self, count: float, mean_s: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if mean_s <= bound:
                self.buckets[i] += count
        self.buckets[-1] += count
        self.total += count * mean_s


def parse_triton_counters(text: str) -> dict[str, dict[str, float]]:
    """Triton metrics text -> ``{model: {counter: value}}`` (versions summed) for the counters used.

    Args:
        text: Body of Triton's ``/metrics``.
    """
    wanted = {_COUNT, *STAGES.values()}
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:  # (the parser renames counter samples to <family>_total)
            continue
        for sample in family.samples:
            if "model" in sample.labels:
                per = out.setdefault(sample.labels["model"], {})
                per[family.name] = per.get(family.name, 0.0) + sample.value
    return out


def model_tasks(model: str, served: list[str]) -> list[str]:
    """Task labels of ``model``'s observations (see the module docstring)."""
    if model == FANOUT_MODEL:
        return served
    task = task_of_model(model)
    return [task] if task is not None else [""]


class TritonExporter:
    """Polls a Triton metrics endpoint (and optionally its gRPC API) and exports derived series.

    Args:
        metrics_url: Triton's metrics URL, e.g. ``http://127.0.0.1:8002/metrics``.
        metrics: Where to register (its registry is what :meth:`PolyheadMetrics.serve` serves).
        server: Optional gRPC ``host:port``: the live trunk variant is read from it each poll.
        timeout_s: HTTP/gRPC timeout per poll.
    """

    def __init__(
        self, metrics_url: str, metrics: PolyheadMetrics, server: str | None = None, timeout_s: float = 5.0
    ) -> None:
        self.metrics_url = metrics_url
        self.metrics = metrics
        self.server = server
        self.timeout_s = timeout_s
        self._last: dict[str, dict[str, float]] | None = None
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._lock = threading.Lock()
        self._client = None
        self.up = Gauge(
            "polyhead_exporter_triton_up", "1 if the last poll of Triton succeeded.", registry=metrics.registry
        )
        metrics.registry.register(self)

    def describe(self) -> list:
        """No description up front (the label sets appear with traffic)."""
        return []

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """Yield ``polyhead_server_latency_seconds`` (called by prometheus-client on each scrape)."""
        fam = HistogramMetricFamily(
            "polyhead_server_latency_seconds",
            "Server-side latency per model and stage, from Triton's counters (interval means).",
            labels=["task", "model", "stage"],
        )
        with self._lock:
            for (task, model, stage), s in sorted(self._series.items()):
                bounds = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
                fam.add_metric([task, model, stage], list(zip(bounds, s.buckets)), s.total)
        yield fam

    def poll(self) -> None:
        """Read Triton once and update every derived series; sets the ``up`` gauge."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=self.timeout_s) as resp:
                counters = parse_triton_counters(resp.read().decode())
        except OSError as err:
            self.up.set(0)
            log.warning("cannot read Triton metrics at %s: %s", self.metrics_url, err)
            return
        self.up.set(1)
        self.update(counters)
        if self.server is not None:
            try:
                self._poll_variant()
            except ServingError as err:
                log.warning("%s", err)

    def update(self, counters: dict[str, dict[str, float]]) -> None:
        """Fold one reading of Triton's counters into the histograms (the first reading is a baseline)."""
        last, self._last = self._last, counters
        if last is None:
            return
        served = sorted(task for m in counters if (task := task_of_model(m)) is not None)
        with self._lock:
            for model, now in counters.items():
                before = last.get(model, {})
                n = now.get(_COUNT, 0.0) - before.get(_COUNT, 0.0)
                if n < 0:  # counters reset (model reloaded or server restarted): start over from zero
                    before, n = {}, now.get(_COUNT, 0.0)
                if n <= 0:
                    continue
                for stage, name in STAGES.items():
                    mean_s = max(0.0, now.get(name, 0.0) - before.get(name, 0.0)) / n / 1e6
                    for task in model_tasks(model, served):
                        self._series.setdefault((task, model, stage), _Series()).add(n, mean_s)

    def _poll_variant(self) -> None:
        """Export the live trunk version and variant (highest ready version of ``trunk``)."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.server)
        try:
            meta = self._client.get_model_metadata(TRUNK_MODEL, client_timeout=self.timeout_s)
            cfg = self._client.get_model_config(TRUNK_MODEL, client_timeout=self.timeout_s).config
        except InferenceServerException as err:
            raise ServingError(f"cannot read the trunk's live version from {self.server}: {err.message()}") from err
        names = json.loads(cfg.parameters["versions"].string_value) if "versions" in cfg.parameters else {}
        version = max(int(v) for v in meta.versions)
        self.metrics.set_live_variant(version, str(names.get(str(version), version)))

    def run(self, interval_s: float, stop: threading.Event) -> None:
        """Poll every ``interval_s`` seconds until ``stop`` is set."""
        while True:
            self.poll()
            if stop.wait(interval_s):
                return

    def start(self, interval_s: float = 1.0) -> threading.Event:
        """Poll in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        threading.Thread(target=self.run, args=(interval_s, stop), daemon=True, name="triton-exporter").start()
        return stop
