import pytest

from serving.cli.compress_commands import format_catalogue
from shared.errors import ArtifactError
from transfer.compression.catalogue import (
    admit,
    best_admitted,
    build_catalogue,
    compress_benchmark,
    head_drops_over_tolerance,
    map_drop_points,
    pareto_set,
)

TASKS = ["signs", "vehicles"]


def _meta(b1, b8, size, maps, precision="fp32", role="variant"):
    return {"precision": precision, "params": 1000, "flops": 2_000_000, "size_bytes": size, "sha256": "x",
            "latency_ms": {"dev": {"b1": b1, "b8": b8}}, "role": role,
            "map": {t: {"map": m, "map50": m} for t, m in zip(TASKS, maps)}}


def _metas():
    return {
        "reference": _meta(10.0, 80.0, 4_000_000, [0.500, 0.400]),
        "pruned-r1": _meta(8.0, 60.0, 3_000_000, [0.497, 0.395]),   # -0.3 / -0.5 points: admitted
        "pruned-r2": _meta(6.0, 50.0, 2_000_000, [0.470, 0.399]),   # -3.0 points on signs: rejected
        "int8": _meta(9.0, 85.0, 1_000_000, [0.499, 0.400], "int8"),  # admitted, slower at b8 than r1
        "fp16": _meta(20.0, 150.0, 2_000_000, [0.500, 0.400], "fp16"),  # admitted, dominated by reference
        "half": {**_meta(5.0, 40.0, 1_000_000, [0.5]), "map": {"signs": {"map": 0.5}}},  # vehicles not evaluated
    }


def test_map_drop_is_worst_task_in_points():
    assert map_drop_points({"a": 0.49, "b": 0.41}, {"a": 0.5, "b": 0.4}, ["a", "b"]) == pytest.approx(1.0)
    assert map_drop_points({"a": 0.49}, {"a": 0.5, "b": 0.4}, ["a", "b"]) is None


def test_admission_rejects_a_variant_whose_drop_exceeds_the_tolerance():
    assert admit(1.0, 1.0)[0] and admit(-2.0, 1.0)[0]
    ok, why = admit(1.01, 1.0)
    assert not ok and "1.01" in why
    assert not admit(None, 1.0)[0]
    cat = build_catalogue(_metas(), "reference", 1.0, "dev", TASKS)
    rows = cat["variants"]
    assert rows["pruned-r2"]["max_map_drop"] == pytest.approx(3.0)
    assert not rows["pruned-r2"]["admitted"] and "3.00" in rows["pruned-r2"]["reason"]
    assert not rows["half"]["admitted"]  # a head was not evaluated on it
    assert rows["pruned-r1"]["admitted"] and rows["int8"]["admitted"] and rows["reference"]["admitted"]
    assert build_catalogue(_metas(), "reference", 3.0, "dev", TASKS)["variants"]["pruned-r2"]["admitted"]


def test_a_head_added_later_names_the_variants_it_loses_more_than_the_tolerance_on():
    maps = {"reference": 0.50, "a": 0.49, "b": 0.47, "c": 0.42, "d": 0.51}
    assert head_drops_over_tolerance(maps, "reference", 2.0) == {"c": pytest.approx(8.0), "b": pytest.approx(3.0)}
    assert list(head_drops_over_tolerance(maps, "reference", 2.0)) == ["c", "b"]  # worst first
    assert head_drops_over_tolerance(maps, "reference", 8.0) == {}  # at the tolerance is within it
    assert head_drops_over_tolerance({"a": 0.1}, "reference", 1.0) == {}  # nothing to compare with


def test_pareto_set_on_constructed_numbers():
    pts = {"a": (1.0, 8.0, 0.4), "b": (2.0, 9.0, 0.5), "c": (2.0, 9.0, 0.45), "d": (0.5, 20.0, 0.3)}
    assert pareto_set(pts) == {"a", "b", "d"}  # c is dominated by b; d wins on b1 latency only
    cat = build_catalogue(_metas(), "reference", 1.0, "dev", TASKS)
    # int8: faster b1 than reference, better mAP than pruned-r1 -> on the front despite slower b8;
    # fp16 is dominated by the reference; rejected variants never are on it.
    assert cat["pareto"] == ["pruned-r1", "int8", "reference"]
    assert {n for n, r in cat["variants"].items() if r["pareto"]} == {"pruned-r1", "int8", "reference"}


def test_benchmark_compares_best_admitted_variant_with_the_teacher():
    cat = build_catalogue(_metas(), "reference", 1.0, "dev", TASKS)
    assert best_admitted(cat) == "pruned-r1"
    teacher = {"size_bytes": 16_000_000, "latency_b1_ms": 24.0, "latency_b8_ms": 180.0}
    out = compress_benchmark(cat, teacher, {"signs": 0.52, "vehicles": 0.41})
    assert out["size_ratio"] == pytest.approx(16 / 3) and out["latency_ratio_b1"] == pytest.approx(3.0)
    assert out["latency_ratio_b8"] == pytest.approx(3.0)
    assert out["max_map_drop"] == pytest.approx(2.3) and out["map_drop_baseline"] == "teacher"
    assert out["vs_reference"]["max_map_drop"] == pytest.approx(0.5)
    assert out["map_drop_tasks"] == ["signs", "vehicles"]
    # A teacher without a head for a task added later (head-only) is compared on the tasks it has.
    partial = compress_benchmark(cat, teacher, {"signs": 0.52})
    assert partial["map_drop_baseline"] == "teacher" and partial["map_drop_tasks"] == ["signs"]
    assert set(partial["map_delta_per_task"]) == {"signs"}
    no_teacher = compress_benchmark(cat, None, None)
    assert no_teacher["baseline"] == "reference" and no_teacher["size_ratio"] == pytest.approx(4 / 3)


def test_no_admitted_variant_is_a_clear_error():
    metas = {k: v for k, v in _metas().items() if k in ("reference", "pruned-r2")}
    metas["reference"]["map"] = {}  # reference not evaluated: nothing is admitted
    with pytest.raises(ArtifactError, match="tolerance"):
        best_admitted(build_catalogue(metas, "reference", 1.0, "dev", TASKS))


def test_cli_table_lists_every_variant_with_admission_and_pareto():
    lines = format_catalogue(build_catalogue(_metas(), "reference", 1.0, "dev", TASKS))
    assert "signs" in lines[0] and "pareto" in lines[0]
    by_name = {line.split()[0]: line for line in lines[2:8]}
    assert set(by_name) == set(_metas())
    assert by_name["pruned-r2"].split()[-1] == "no" and by_name["pruned-r1"].rstrip().endswith("*")


def test_a_quantized_variant_outside_its_parity_tolerance_is_not_admitted():
    from transfer.compression.quantize import QuantSettings, parity_problem

    errors = {"max_abs": 0.1, "rel_max": 0.5, "rel_rmse": 0.6}
    problem = parity_problem(errors, "int8", QuantSettings(int8_rel_rmse=0.35))
    assert "0.600 > 0.35" in problem and parity_problem(errors, "int8", QuantSettings(int8_rel_rmse=0.7)) == ""
    metas = _metas()
    metas["int8"]["parity_problem"] = problem
    row = build_catalogue(metas, "reference", 1.0, "dev", TASKS)["variants"]["int8"]
    assert not row["admitted"] and row["reason"] == problem
