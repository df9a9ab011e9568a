"""Triton's perf_analyzer against the embedded server, and its helper's errors without a server."""

import stat

import pytest

from serving.bench.perf_analyzer import PerfAnalyzerUnavailable, check_perf_analyzer, parse_csv, run_perf_analyzer
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.repository import build_repository
from shared.errors import ServingError

CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "1,427.079,5,0,2,123,2197,723,7,2194,2581,2708,3015\n"
    "2,592.385,7,0,2,136,2807,840,9,3274,3988,4263,5789\n"
)


@pytest.fixture(scope="module")
def perf_server(tmp_path_factory, fakes):
    try:
        check_perf_analyzer()
    except PerfAnalyzerUnavailable as err:
        pytest.skip(str(err))
    work = fakes.make_workspace(tmp_path_factory.mktemp("perf_work"))
    summary = build_repository(work, max_batch_size=4)
    srv = EmbeddedTriton(summary.path, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.triton
@pytest.mark.parametrize("model", ["detect", "detect_cars"])
def test_perf_analyzer_loads_fanout_and_single_task_models_without_errors(perf_server, model, fakes):
    # A noisy shared CPU: short windows, loose stability (max/min of the last 3 windows within 3x).
    result = run_perf_analyzer(perf_server.url, model, concurrency=(1, 2), measurement_ms=500, stability_pct=200,
                               max_trials=5, timeout_s=60)
    assert [r.concurrency for r in result.rows] == [1, 2]
    for row in result.rows:
        assert row.infer_per_s > 0
        assert 0 < row.p50_us <= row.p90_us <= row.p95_us <= row.p99_us
    assert result.failed == 0 and result.succeeded > 0
    assert ["--shape", f"images:3,{fakes.SIZE},{fakes.SIZE}"] == list(result.command[-4:-2])


def test_parse_csv_gives_typed_rows():
    rows = parse_csv(CSV)
    assert [(r.concurrency, r.infer_per_s, r.p50_us, r.p95_us, r.p99_us) for r in rows] == [
        (1, 427.079, 2194, 2708, 3015),
        (2, 592.385, 3274, 4263, 5789),
    ]


def test_parse_csv_without_percentile_columns_names_them():
    with pytest.raises(ServingError, match="p99 latency"):
        parse_csv("Concurrency,Inferences/Second\n1,10\n")


def _fake_binary(tmp_path, script: str):
    path = tmp_path / "perf_analyzer"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_missing_libb64_is_unavailable_naming_the_apt_package(tmp_path):
    binary = _fake_binary(tmp_path, "echo 'perf_analyzer: error while loading shared libraries: libb64.so.0d: "
                                    "cannot open shared object file: No such file or directory' >&2; exit 127")
    with pytest.raises(PerfAnalyzerUnavailable, match="apt-get install libb64-0d"):
        check_perf_analyzer(binary)


def test_missing_cuda_runtime_is_unavailable_naming_the_pip_package(tmp_path):
    binary = _fake_binary(tmp_path, "echo 'error while loading shared libraries: libcudart.so.12: x' >&2; exit 127")
    with pytest.raises(PerfAnalyzerUnavailable, match="pip install nvidia-cuda-runtime-cu12"):
        check_perf_analyzer(binary)


def test_missing_binary_is_unavailable_naming_the_wheel(tmp_path):
    with pytest.raises(PerfAnalyzerUnavailable, match="tritonclient"):
        check_perf_analyzer(tmp_path / "nope" / "perf_analyzer")


def test_failed_requests_are_an_error_with_perf_analyzers_reason(tmp_path, monkeypatch):
    binary = _fake_binary(tmp_path, "echo 'Thread [0] had error: inference request batch-size must be <= 4'; exit 99")
    monkeypatch.setattr("serving.bench.perf_analyzer._request_counts", lambda url, model: (0, 0))
    with pytest.raises(ServingError, match="exited with 99: Thread \\[0\\] had error: inference request batch-size"):
        run_perf_analyzer("127.0.0.1:1", "detect", shapes={"images": [3, 64, 64]}, binary=binary)
