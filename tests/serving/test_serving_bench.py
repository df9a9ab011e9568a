import json

import pytest

from serving.bench_serving import format_table, run_serving_bench, write_json

ROW_KEYS = ("shared_images_per_s", "independent_images_per_s", "shared_rss_mb", "independent_rss_mb",
            "shared_p50_ms", "shared_p95_ms", "triton_p50_ms", "ort_p50_ms", "speedup", "rss_fraction")


@pytest.mark.triton
def test_bench_compares_shared_and_independent_with_real_triton(workspace, tmp_path):
    result = run_serving_bench(workspace, [1, 2], variant="ref", concurrency=2, seconds=1.0)
    assert [r["tasks"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        for side in ("shared", "independent", "fused", "other_layout"):
            assert row[side]["errors"] == 0
            assert row[side]["img_per_s"] > 0 and row[side]["pss_mib"] > 0
        assert all(row[k] > 0 for k in ROW_KEYS), {k: row.get(k) for k in ROW_KEYS}
        assert row["fused_images_per_s"] > 0 and row["fused_rss_mb"] > 0
        assert row["shared_p95_ms"] >= row["shared_p50_ms"]
        assert row["shared_rss_mb"] >= row["shared_pss_mb"]  # RSS counts shared pages in every process
        # tritonserver + trunk + one `heads` process for any N; the per-task layout adds one per head
        assert row["shared"]["processes"] == 3
        assert row["other_layout"]["processes"] == 2 + row["tasks"]
        assert row["independent"]["processes"] == 1 + row["tasks"] and row["fused"]["processes"] == 2
    # Two independent detectors cost more processes than one trunk + two heads... per image they also run two trunks.
    two = result["rows"][1]
    assert two["independent"]["pss_mib"] > 0 and two["memory_ratio"] > 0
    # top-level latency comparison: the row closest to the workspace's 3 tasks, i.e. N = 2
    assert result["latency"]["tasks"] == 2
    assert result["triton_p50_ms"] == two["triton_p50_ms"] and result["ort_p50_ms"] == two["ort_p50_ms"]
    batching = result["dynamic_batching"]
    assert batching["concurrency"] == 8 and batching["tasks"] == 3 and batching["errors"] == 0
    assert batching["on_images_per_s"] > 0 and batching["off_images_per_s"] > 0
    assert result["dynamic_batching_gain"] == pytest.approx(batching["on_images_per_s"] / batching["off_images_per_s"])
    assert result["targets"][-1]["latency_target"] == 1.5
    table = format_table(result)
    assert "| 2 |" in table and "Dynamic batching" in table and "onnxruntime" in table
    assert result["heads_layout"] == "shared" and "heads layout `shared`" in table
    write_json(result, tmp_path / "bench.json")
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["tasks"] == 1
