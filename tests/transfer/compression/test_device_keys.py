"""Latency device keys: what a key says, and which key a set of variants is compared on."""

import re

import pytest

from shared.errors import ConfigError
from transfer.export.device_keys import (
    comparison_key,
    cpu_key,
    cpu_model,
    cuda_key,
    device_kind,
    local_device_key,
    require_known_key,
    sanitise,
)

EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t: fpu\n"
XEON = "processor : 0\nmodel name : Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\n"


def test_cpu_keys_name_the_model_and_the_threads_from_cpuinfo():
    assert cpu_key(2, EPYC) == "cpu-amd-epyc-7b13-2t"
    assert cpu_key(4, XEON) == "cpu-intel-xeon-platinum-8375c-4t"
    assert cpu_model("processor : 0\nmodel name : AMD EPYC\n") == "amd-epyc"


def test_a_cpuinfo_without_model_name_falls_back_to_the_platform():
    key = cpu_key(2, "processor : 0\nCPU part : 0xd0c\n")  # ARM: no "model name" line
    assert re.fullmatch(r"cpu-[a-z0-9.-]+-2t", key) and "part" not in key


def test_cuda_keys_name_the_device():
    assert cuda_key("NVIDIA H200") == "cuda-nvidia-h200"
    assert cuda_key("NVIDIA GeForce RTX 4090") == "cuda-nvidia-geforce-rtx-4090"
    assert sanitise("  !!  ") == "" and cuda_key("") == "cuda-unknown"


def test_older_keys_have_a_kind_like_new_ones():
    assert device_kind("cpu-x86_64-2t") == "cpu" and device_kind("cuda-nvidia-h200") == "cuda"


def test_this_machines_cpu_key_is_well_formed():
    assert re.fullmatch(r"cpu-[a-z0-9.-]+-2t", local_device_key("cpu"))
    with pytest.raises(ConfigError, match="tpu"):
        local_device_key("tpu")


def test_comparison_key_is_common_to_all_and_prefers_the_same_kind():
    both = {"cpu-a-2t": 1, "cuda-x": 1}
    assert comparison_key("cuda-x", [both, both]) == ("cuda-x", "")
    key, why = comparison_key("cuda-x", [{"cpu-a-2t": 1, "cuda-y": 1, "cuda-x": 1}, {"cpu-a-2t": 1, "cuda-y": 1}])
    assert key == "cuda-y" and "1 of 2 variants have no latency for cuda-x" in why
    assert comparison_key("cuda-x", [both, {"cpu-a-2t": 1}])[0] == "cpu-a-2t"  # no other GPU: the common one
    assert comparison_key("cuda-x", [{"cuda-x": 1}, {"cpu-a-2t": 1}])[0] is None  # nothing common


def test_a_key_no_variant_has_is_refused_naming_those_there_are():
    require_known_key("cuda-x", [{"cuda-x": 1}, {}], "--serving-device")
    with pytest.raises(ConfigError, match=r"'cuda-h100'.*\['cpu-a-2t', 'cuda-x'\].*polyhead measure"):
        require_known_key("cuda-h100", [{"cuda-x": 1}, {"cpu-a-2t": 1}], "--serving-device")
