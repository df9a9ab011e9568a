"""Unit tests of the polyhead_* metrics, the client wrapper and the Triton-counter exporter."""

import pytest
from prometheus_client import generate_latest

from serving.client.protocol import UnknownTaskError
from serving.monitoring.latency_exporter import TritonExporter, model_tasks, parse_triton_counters
from serving.monitoring.metrics import LATENCY_BUCKETS, InstrumentedDetector, PolyheadMetrics, error_code
from shared.errors import ConfigError, InputError, ServingError


class FakeDetector:
    def __init__(self, delay_s: float = 0.0, fail: Exception | None = None):
        self.delay_s, self.fail, self.closed = delay_s, fail, False

    def tasks(self):
        return ["cars", "people"]

    def detect(self, images, tasks=None):
        if self.fail is not None:
            raise self.fail
        return ["result"]

    def close(self):
        self.closed = True


def value(metrics: PolyheadMetrics, name: str, labels: dict | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_buckets_cover_1ms_to_2s_in_increasing_order():
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 2.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))


def test_instrumented_detector_counts_fanout_once_per_task_with_the_fanout_model():
    m = PolyheadMetrics()
    det = InstrumentedDetector(FakeDetector(), m)
    assert det.detect("img") == ["result"]
    det.detect("img", tasks="cars")
    assert value(m, "polyhead_request_latency_seconds_count", {"task": "cars", "model": "detect"}) == 1
    assert value(m, "polyhead_request_latency_seconds_count", {"task": "people", "model": "detect"}) == 1
    assert value(m, "polyhead_request_latency_seconds_count", {"task": "cars", "model": "detect_cars"}) == 1
    assert value(m, "polyhead_requests_total", {"task": "cars", "code": "OK"}) == 2
    assert det.tasks() == ["cars", "people"]  # other attributes pass through


def test_failures_are_counted_with_their_code_and_reraised():
    m = PolyheadMetrics()
    with pytest.raises(ServingError):
        InstrumentedDetector(FakeDetector(fail=ServingError("server x unavailable after 4 attempts")), m).detect(
            "img", tasks=["cars"]
        )
    with pytest.raises(UnknownTaskError):
        InstrumentedDetector(FakeDetector(fail=UnknownTaskError("nope")), m).detect("img", tasks="boats")
    assert value(m, "polyhead_request_errors_total", {"task": "cars", "code": "UNAVAILABLE"}) == 1
    assert value(m, "polyhead_request_errors_total", {"task": "_unknown", "code": "NOT_FOUND"}) == 1
    assert value(m, "polyhead_request_latency_seconds_count", {"task": "cars", "model": ""}) is None


def test_error_codes_name_the_failure():
    assert error_code(InputError("bad")) == "INVALID_ARGUMENT"
    assert error_code(ServingError("model 'x' at h: no answer within 1 s")) == "DEADLINE_EXCEEDED"
    assert error_code(ServingError("model 'x' failed: boom")) == "INTERNAL"
    assert error_code(RuntimeError("?")) == "UNKNOWN"


def test_objectives_are_exported_and_violations_counted():
    m = PolyheadMetrics()
    m.set_objectives({"cars": 0.01})
    assert value(m, "polyhead_slo_objective_seconds", {"task": "cars"}) == 0.01
    assert value(m, "polyhead_slo_violations_total", {"task": "cars"}) == 0
    m.observe(["cars"], "detect_cars", 0.005)
    m.observe(["cars"], "detect_cars", 0.02)
    assert value(m, "polyhead_slo_violations_total", {"task": "cars"}) == 1
    with pytest.raises(ConfigError, match="cars"):
        m.set_objectives({"cars": 0})


def test_live_variant_info_keeps_only_the_live_one_and_decisions_count():
    m = PolyheadMetrics()
    assert b"polyhead_live_trunk_version" not in generate_latest(m.registry)  # only once known
    m.set_live_variant(1, "ref")
    m.set_live_variant(2, "small")
    assert value(m, "polyhead_trunk_variant_info", {"variant": "small", "version": "2"}) == 1
    assert value(m, "polyhead_trunk_variant_info", {"variant": "ref", "version": "1"}) is None
    assert value(m, "polyhead_live_trunk_version") == 2
    m.record_decision("ref", "small", "over_objective")
    labels = {"from": "ref", "to": "small", "reason": "over_objective"}
    assert value(m, "polyhead_controller_decisions_total", labels) == 1


TRITON_TEXT = """# HELP nv_inference_request_success x
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="detect_cars",version="1"} %d
nv_inference_request_success{model="trunk",version="1"} %d
nv_inference_request_success{model="trunk",version="2"} 0
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="detect_cars",version="1"} %d
nv_inference_request_duration_us{model="trunk",version="1"} %d
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="detect_cars",version="1"} %d
"""


def test_parse_sums_versions_and_keeps_the_used_counters():
    counters = parse_triton_counters(TRITON_TEXT % (4, 4, 40000, 20000, 400))
    assert counters["trunk"]["nv_inference_request_success"] == 4
    assert counters["detect_cars"]["nv_inference_request_duration_us"] == 40000


def test_exporter_turns_counter_deltas_into_histogram_observations_of_the_interval_mean():
    m = PolyheadMetrics()
    exp = TritonExporter("http://unused", m)
    exp.update(parse_triton_counters(TRITON_TEXT % (10, 10, 100000, 50000, 1000)))  # baseline
    exp.update(parse_triton_counters(TRITON_TEXT % (20, 20, 400000, 100000, 2000)))  # 10 requests, mean 30 ms
    labels = {"task": "cars", "model": "detect_cars", "stage": "request"}
    assert value(m, "polyhead_server_latency_seconds_count", labels) == 10
    assert value(m, "polyhead_server_latency_seconds_sum", labels) == pytest.approx(0.3)
    assert value(m, "polyhead_server_latency_seconds_bucket", {**labels, "le": "0.025"}) == 0
    assert value(m, "polyhead_server_latency_seconds_bucket", {**labels, "le": "0.03"}) == 10
    assert value(m, "polyhead_server_latency_seconds_count", {**labels, "stage": "queue"}) == 10
    trunk = {"task": "", "model": "trunk", "stage": "request"}
    assert value(m, "polyhead_server_latency_seconds_count", trunk) == 10
    exp.update(parse_triton_counters(TRITON_TEXT % (3, 3, 30000, 3000, 30)))  # counters reset: 3 new requests
    assert value(m, "polyhead_server_latency_seconds_count", labels) == 13


def test_fanout_model_counts_for_every_served_task_and_leaves_have_no_task():
    assert model_tasks("detect", ["cars", "people"]) == ["cars", "people"]
    assert model_tasks("detect_cars", ["cars"]) == ["cars"]
    assert model_tasks("head_cars", ["cars"]) == [""]


def test_exporter_marks_triton_down_when_unreachable():
    m = PolyheadMetrics()
    TritonExporter("http://127.0.0.1:9/metrics", m, timeout_s=0.5).poll()
    assert value(m, "polyhead_exporter_triton_up") == 0
