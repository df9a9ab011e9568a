"""The controller compares variants on the serving device's figures and Pareto set, one device at a time."""

import json
import warnings

import pytest

from serving.controller import read_variants
from shared.errors import ConfigError
from transfer.export.device_keys import LatencyDeviceWarning, local_device_key

VERSIONS = {1: "ref", 2: "small", 3: "fp16"}


def _write(work, name, latency: dict, m: float, **extra):
    path = work / "trunk" / name / "variant.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"name": name, "admitted": True, "map": {"cars": {"map": m}},
            "latency_ms": {k: {"b1": v, "b8": 8 * v} for k, v in latency.items()}, **extra}
    path.write_text(json.dumps(meta))


@pytest.fixture()
def work(tmp_path):
    # On the CPU fp16 is slow and off the front; on the GPU it is the fastest.
    _write(tmp_path, "ref", {"cpu-a-2t": 10.0, "cuda-x": 2.0}, 0.50,
           pareto_by_device={"cpu-a-2t": True, "cuda-x": True})
    _write(tmp_path, "small", {"cpu-a-2t": 5.0, "cuda-x": 1.5}, 0.40,
           pareto_by_device={"cpu-a-2t": True, "cuda-x": True})
    _write(tmp_path, "fp16", {"cpu-a-2t": 30.0, "cuda-x": 0.8}, 0.49, pareto=False,
           pareto_by_device={"cpu-a-2t": False, "cuda-x": True})
    return tmp_path


def _by_name(variants):
    return {v.name: v for v in variants}


def test_the_controller_takes_the_serving_devices_latency_and_pareto_set(work):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatencyDeviceWarning)  # no fallback here
        gpu = _by_name(read_variants(work, VERSIONS, "cuda-x"))
        cpu = _by_name(read_variants(work, VERSIONS, "cpu-a-2t"))
    assert set(gpu) == {"ref", "small", "fp16"} and gpu["fp16"].latency_ms == 0.8
    assert {v.device for v in gpu.values()} == {"cuda-x"}
    assert set(cpu) == {"ref", "small"} and cpu["ref"].latency_ms == 10.0  # fp16 is off the CPU's front
    assert {v.device for v in cpu.values()} == {"cpu-a-2t"}


def test_a_variant_without_the_serving_devices_figures_falls_back_for_all_with_a_warning(work):
    _write(work, "small", {"cpu-a-2t": 5.0}, 0.40, pareto_by_device={"cpu-a-2t": True})
    with pytest.warns(LatencyDeviceWarning, match=r"cuda-x: 1 of 3 variants.*polyhead measure .*--device cuda"):
        variants = _by_name(read_variants(work, VERSIONS, "cuda-x"))
    assert {v.device for v in variants.values()} == {"cpu-a-2t"}  # never cuda-x for some, cpu for others
    assert variants["ref"].latency_ms == 10.0 and "fp16" not in variants  # the CPU's front, too


def test_the_fallback_prefers_another_device_of_the_same_kind(work):
    for name, m in (("ref", 0.5), ("small", 0.4), ("fp16", 0.49)):
        _write(work, name, {"cpu-a-2t": 9.0, "cuda-y": 3.0, **({"cuda-x": 1.0} if name == "ref" else {})}, m)
    with pytest.warns(LatencyDeviceWarning, match="same kind"):
        variants = read_variants(work, VERSIONS, "cuda-x")
    assert {v.device for v in variants} == {"cuda-y"} and {v.latency_ms for v in variants} == {3.0}


def test_auto_is_this_machines_key_and_older_files_still_read(work):
    here = local_device_key("auto")
    _write(work, "ref", {"cpu-x86_64-2t": 12.0, here: 11.0}, 0.50, pareto=True)  # no pareto_by_device: older
    _write(work, "small", {"cpu-x86_64-2t": 6.0, here: 4.0}, 0.40, pareto=True)
    _write(work, "fp16", {"cpu-x86_64-2t": 30.0, here: 31.0}, 0.49, pareto=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatencyDeviceWarning)
        variants = _by_name(read_variants(work, VERSIONS, "auto"))
        old = _by_name(read_variants(work, VERSIONS, "cpu-x86_64-2t"))
    assert set(variants) == {"ref", "small"} and variants["small"].latency_ms == 4.0  # older "pareto" applies
    assert old["small"].latency_ms == 6.0 and old["small"].device == "cpu-x86_64-2t"


def test_a_serving_device_no_variant_has_is_a_clear_error_naming_the_keys(work):
    with pytest.raises(ConfigError, match=r"--serving-device 'cuda-h100'.*\['cpu-a-2t', 'cuda-x'\]"):
        read_variants(work, VERSIONS, "cuda-h100")


def test_auto_on_a_machine_never_measured_falls_back_to_the_same_kind(work):
    with pytest.warns(LatencyDeviceWarning, match=f"serving device {local_device_key('auto')}: 3 of 3") as caught:
        variants = read_variants(work, VERSIONS, "auto")
    kind = local_device_key("auto").split("-")[0]
    assert {v.device for v in variants} == {"cpu-a-2t" if kind == "cpu" else "cuda-x"}
    assert "--serving-device" in str(caught[0].message)
