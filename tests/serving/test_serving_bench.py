import pytest

from serving.bench_serving import format_table, run_serving_bench


@pytest.mark.triton
def test_bench_compares_shared_and_independent_with_real_triton(workspace):
    result = run_serving_bench(workspace, [1, 2], variant="ref", concurrency=2, seconds=1.0)
    assert [r["tasks"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        for side in ("shared", "independent"):
            assert row[side]["errors"] == 0
            assert row[side]["img_per_s"] > 0 and row[side]["pss_mib"] > 0
    # Two independent detectors cost more processes than one trunk + two heads... per image they also run two trunks.
    two = result["rows"][1]
    assert two["independent"]["pss_mib"] > 0 and two["memory_ratio"] > 0
    assert "| 2 |" in format_table(result)
