"""`polyhead measure` on real ONNX trunks: a second device's figures beside the first, its Pareto set recomputed."""

import json

import numpy as np
import pytest
import torch

from shared.errors import ConfigError
from shared.trunk import Trunk, trunk_config
from transfer.compression.catalogue import build_catalogue, device_pareto
from transfer.compression.measure import run_measure
from transfer.export.device_keys import cpu_key
from transfer.export.latency import interleaved_latency, onnx_runner, torch_runner


def _read(work, name):
    return json.loads((work / "trunk" / name / "variant.json").read_text())


@pytest.fixture()
def catalogued(workspace, fakes):
    """The fake workspace with figures on a first device ``cpu-test`` and its catalogue."""
    fakes.add_variant_metrics(workspace)
    names = ["ref", "small", "rejected"]
    metas = {n: _read(workspace, n) for n in names}
    metas["rejected"] |= {"map": {t: {"map": 0.45} for t in fakes.TASKS}, "latency_ms": {"cpu-test": {"b1": 1.0}}}
    catalogue = build_catalogue(metas, "ref", 1.0, "cpu-test", list(fakes.TASKS))
    for name, row in catalogue["variants"].items():
        meta = metas[name] | {"admitted": row["admitted"], "pareto": row["pareto"],
                              "pareto_by_device": row["pareto_by_device"] | {cpu_key(): False}}  # a stale flag
        (workspace / "trunk" / name / "variant.json").write_text(json.dumps(meta))
    (workspace / "trunk/catalogue.json").write_text(json.dumps(catalogue))
    return workspace


def test_measure_adds_this_devices_figures_without_touching_the_first_and_recomputes_its_pareto(catalogued):
    before = {n: _read(catalogued, n) for n in ("ref", "small", "rejected")}
    lines = []
    report = run_measure(catalogued, device="cpu", repeats=2, log=lines.append)
    key = cpu_key()
    assert report.device == key != "cpu-test" and set(report.latency) == set(before)
    assert any("timing 3 variants" in line for line in lines) and any("round 3/3" in line for line in lines)
    after = {n: _read(catalogued, n) for n in before}
    for name, meta in after.items():
        assert meta["latency_ms"]["cpu-test"] == before[name]["latency_ms"]["cpu-test"]  # first device untouched
        assert meta["pareto_by_device"]["cpu-test"] == before[name]["pareto_by_device"]["cpu-test"]
        assert meta["pareto"] == before[name]["pareto"] and meta["admitted"] == before[name]["admitted"]
        assert meta["latency_ms"][key] == report.latency[name] and meta["latency_ms"][key]["b8"] > 0
        assert meta["latency_runtime"][key] == "onnxruntime-cpu"
    admitted = [n for n, m in after.items() if m["admitted"]]
    expected = device_pareto(after, admitted, key, ["cars", "people", "signs"])
    assert {n: m["pareto_by_device"][key] for n, m in after.items()} == expected
    assert after["ref"]["pareto_by_device"][key] is True  # the stale False recomputed: the most accurate
    assert after["rejected"]["pareto_by_device"][key] is False  # measured, but not admitted
    catalogue = json.loads((catalogued / "trunk/catalogue.json").read_text())
    assert catalogue["pareto_by_device"][key] == report.pareto and catalogue["device"] == "cpu-test"
    assert catalogue["variants"]["ref"]["pareto_by_device"][key] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_measure_on_cuda_without_a_gpu_is_refused_before_anything_is_written(catalogued):
    before = {p: p.read_bytes() for p in catalogued.rglob("*.json")}
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        run_measure(catalogued, device="cuda")
    assert {p: p.read_bytes() for p in catalogued.rglob("*.json")} == before


def test_a_torch_trunk_and_an_onnx_trunk_time_side_by_side(workspace):
    trunk = Trunk(trunk_config("nano"))
    images = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    out = torch_runner(trunk, "cpu")(images)
    assert set(out) == {s.name for s in trunk.feature_specs} and out["p3"].dtype == torch.float32
    runners = {"torch": torch_runner(trunk, "cpu"), "onnx": onnx_runner(workspace / "trunk/ref/model.onnx")}
    lat = interleaved_latency(runners, images, repeats=2, rounds=2)
    assert set(lat) == {"torch", "onnx"} and all(v["b1"] > 0 and v["b8"] > 0 for v in lat.values())
