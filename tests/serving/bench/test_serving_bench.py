import json

import pytest

from serving.bench.serving_bench import run_serving_bench, write_json
from serving.bench.serving_table import format_table

ROW_KEYS = ("shared_images_per_s", "independent_images_per_s", "shared_rss_mb", "independent_rss_mb",
            "shared_p50_ms", "shared_p95_ms", "triton_p50_ms", "ort_p50_ms", "speedup", "rss_fraction",
            "inprocess_images_per_s", "inprocess_rss_mb", "ceiling_speedup", "fraction_of_ceiling")


@pytest.mark.triton
def test_bench_compares_shared_and_independent_with_real_triton(workspace, tmp_path, monkeypatch):
    import serving.bench.serving_bench as bench

    def breaking_at_three(ws, out, names, variant):  # N = 3: one of the N models is a corrupt file
        models = bench_independent(ws, out, names, variant)
        if len(names) == 3:
            (out / models[0] / "1" / "model.onnx").write_bytes(b"not onnx")
        return models

    bench_independent = bench.independent_repository
    monkeypatch.setattr(bench, "independent_repository", breaking_at_three)
    seen = []
    result = run_serving_bench(workspace, [1, 3, 2], variant="ref", concurrency=[1, 2], seconds=1.0, blocks=2,
                               progress=seen.append)
    # N = 3's servers failed to start: said, and the run went on with N = 2
    assert [f["tasks"] for f in result["failed"]] == [3] and "full_t0" in result["failed"][0]["error"]
    assert [r["tasks"] for r in seen] == [1, 3, 2] and "error" in seen[1]
    result["rows"].sort(key=lambda r: r["tasks"])
    assert [r["tasks"] for r in result["rows"]] == [1, 2]
    cost = result["cost"]
    assert cost["trunk_ms"] > 0 and cost["head_ms"] > 0
    for row in result["rows"]:
        assert set(row["layouts"]) == {"in_trunk", "shared", "per_task"}
        for side in (row["independent"], row["inprocess"], *row["layouts"].values()):
            assert side["errors"] == 0
            # the sides' loads alternated: every concurrency's figures come from both blocks
            assert all(r["blocks"] == 2 for r in side["by_concurrency"].values())
            assert side["img_per_s"] > 0 and side["pss_mib"] > 0
            # each side keeps its peak over the client counts
            assert set(side["by_concurrency"]) == {"1", "2"}
            assert side["img_per_s"] == max(r["img_per_s"] for r in side["by_concurrency"].values())
            assert side["by_concurrency"][str(side["concurrency"])]["img_per_s"] == side["img_per_s"]
        assert all(row[k] > 0 for k in ROW_KEYS), {k: row.get(k) for k in ROW_KEYS}
        assert row["shared_p95_ms"] >= row["shared_p50_ms"]
        assert row["shared_rss_mb"] >= row["shared_pss_mb"]  # RSS counts shared pages in every process
        # the chosen layout (in_trunk) is the `shared` side: tritonserver + one backend process for any N
        assert row["shared"]["processes"] == 2 and row["shared_images_per_s"] == row["layouts"]["in_trunk"]["img_per_s"]
        # shared: trunk + one `heads` process; per-task: one process per head
        assert row["layouts"]["shared"]["processes"] == 3
        assert row["layouts"]["per_task"]["processes"] == 2 + row["tasks"]
        assert row["independent"]["processes"] == 1 + row["tasks"]
        assert row["inprocess"]["processes"] == 2  # N detectors, one backend process
        # CPU per image: the server's processes and the clients did work for every image
        assert row["shared_cpu_ms_per_image"] > 0 and row["inprocess_cpu_ms_per_image"] > 0
        n, t, h = row["tasks"], cost["trunk_ms"], cost["head_ms"]
        assert row["inprocess_compute_ms_per_image"] == pytest.approx(n * (t + h))
        assert row["cpu_fraction_of_ceiling"] == pytest.approx(
            row["inprocess_cpu_ms_per_image"] / row["shared_cpu_ms_per_image"] / row["ceiling_speedup"])
        assert row["ceiling_speedup"] == pytest.approx(n * (t + h) / (t + n * h))
        assert row["fraction_of_ceiling"] == pytest.approx(
            row["shared_images_per_s"] / row["inprocess_images_per_s"] / row["ceiling_speedup"])
        ratio = row["layouts"]["shared"]["img_per_s"] / row["independent_images_per_s"]
        assert row["layouts"]["shared"]["speedup"] == pytest.approx(ratio)
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
    ceiling_targets = [t for t in result["targets"] if "ceiling_target" in t]
    assert [t["tasks"] for t in ceiling_targets] == [1, 2]
    assert all(t["baseline"] == "inprocess" for t in ceiling_targets)
    table = format_table(result)
    assert "| 2 |" in table and "Dynamic batching" in table and "onnxruntime" in table
    assert "in one python-backend process" in table.replace("ONE", "one") and "of the ceiling" in table
    assert "N=3: FAILED" in table
    assert result["heads_layout"] == "in_trunk" and "heads layout `in_trunk`" in table
    write_json(result, tmp_path / "bench.json")
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["tasks"] == 1


def test_targets_judge_the_chosen_layout_and_report_every_layout():
    from serving.bench.serving_bench import _targets

    def side(speedup, rss):
        return {"speedup": speedup, "rss_fraction": rss}

    row = {"tasks": 4, "speedup": 3.2, "rss_fraction": 0.33, "pss_fraction": 0.4, "fraction_of_ceiling": 0.93,
           "layouts": {"in_trunk": side(3.2, 0.33), "shared": side(2.9, 0.52), "per_task": side(3.1, 0.41)}}
    ceiling4, n4, ceiling2, latency = _targets([row, {**row, "tasks": 2, "fraction_of_ceiling": 0.85}], {"ratio": 1.6})
    assert n4["met"] and n4["layouts_met"] == {"in_trunk": True, "shared": False, "per_task": False}
    assert n4["baseline"] == "independent" and ceiling4["baseline"] == "inprocess"
    assert ceiling4["met"] and not ceiling2["met"] and ceiling2["ceiling_target"] == 0.9
    assert not latency["met"] and latency["latency_target"] == 1.5


def test_sharing_ceiling_is_one_for_one_task_and_bounded_by_trunk_plus_head_over_head():
    from serving.bench.baselines import sharing_ceiling

    assert sharing_ceiling(1, 10.0, 2.0) == pytest.approx(1.0)
    assert sharing_ceiling(8, 10.0, 2.0) == pytest.approx(8 * 12 / 26)
    assert sharing_ceiling(10_000, 10.0, 2.0) < 12 / 2 < sharing_ceiling(10_000, 10.0, 2.0) + 0.01
