"""The Pareto set per device: each device's front from its own figures; admission the same everywhere."""

from transfer.compression.catalogue import build_catalogue, device_pareto

TASKS = ["signs"]


def _meta(latency: dict, m: float, **extra) -> dict:
    return {"size_bytes": 1000, "sha256": "x", "map": {"signs": {"map": m}},
            "latency_ms": {k: {"b1": b1, "b8": 8 * b1} for k, b1 in latency.items()}, **extra}


def _metas() -> dict:
    return {
        "reference": _meta({"cpu-a-2t": 10.0, "cuda-x": 2.0}, 0.50),
        "pruned-r1": _meta({"cpu-a-2t": 6.0, "cuda-x": 1.9}, 0.49),
        # fp16: slow on this CPU, fastest on the GPU
        "fp16": _meta({"cpu-a-2t": 30.0, "cuda-x": 0.8}, 0.495, precision="fp16"),
        "bad": _meta({"cpu-a-2t": 1.0, "cuda-x": 0.1}, 0.10),  # far over tolerance: never admitted
    }


def test_a_variant_fast_on_the_gpu_and_slow_on_the_cpu_is_pareto_on_the_gpu_only():
    cat = build_catalogue(_metas(), "reference", 1.0, "cpu-a-2t", TASKS)
    rows = cat["variants"]
    assert rows["fp16"]["pareto_by_device"] == {"cpu-a-2t": False, "cuda-x": True}
    assert rows["fp16"]["pareto"] is False  # the catalogue's own device
    assert cat["pareto_by_device"] == {"cpu-a-2t": ["pruned-r1", "reference"], "cuda-x": ["fp16", "reference"]}
    assert cat["pareto"] == cat["pareto_by_device"]["cpu-a-2t"]
    assert rows["bad"]["pareto_by_device"] == {"cpu-a-2t": False, "cuda-x": False}


def test_admission_does_not_depend_on_the_device():
    on_cpu = build_catalogue(_metas(), "reference", 1.0, "cpu-a-2t", TASKS)["variants"]
    on_gpu = build_catalogue(_metas(), "reference", 1.0, "cuda-x", TASKS)["variants"]
    assert {n: r["admitted"] for n, r in on_cpu.items()} == {n: r["admitted"] for n, r in on_gpu.items()}
    assert on_gpu["fp16"]["pareto"] is True and on_gpu["fp16"]["latency_b1_ms"] == 0.8


def test_rows_never_borrow_another_devices_figures():
    metas = _metas()
    del metas["fp16"]["latency_ms"]["cuda-x"]
    cat = build_catalogue(metas, "reference", 1.0, "cuda-x", TASKS)
    assert cat["variants"]["fp16"]["latency_b1_ms"] is None  # not its 30 ms CPU figure
    assert "cuda-x" not in cat["variants"]["fp16"]["pareto_by_device"]  # unknown there, not False
    assert device_pareto(metas, ["reference", "pruned-r1", "fp16"], "cuda-x", TASKS) == {
        "reference": True, "pruned-r1": True, "bad": False}
