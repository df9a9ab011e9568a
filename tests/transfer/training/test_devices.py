"""Device choice: ``auto``/``cpu``/``cuda``, the clear error without CUDA, precision and threads per device."""

from __future__ import annotations

import contextlib

import pytest
import torch

from serving.cli.main import main
from shared.errors import ConfigError
from transfer.train import run_train
from transfer.training.devices import DevicePlan, plan_device, resolve_device, to_cpu

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")


def test_auto_picks_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("CPU") == torch.device("cpu")


@no_cuda
def test_cuda_without_cuda_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"--device cuda but torch .* sees no CUDA device; run with --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        plan_device("cuda:1")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--device 'tpu' is not one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_cpu_trains_in_full_precision_with_its_threads() -> None:
    plan = plan_device("cpu")
    assert plan == DevicePlan(torch.device("cpu")) and not plan.is_cuda
    assert isinstance(plan.autocast(), contextlib.nullcontext)
    assert not plan.grad_scaler().is_enabled()
    threads = torch.get_num_threads()
    try:
        plan.set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_cuda_plan_leaves_threads_alone_and_scales_only_fp16() -> None:
    bf16 = DevicePlan(torch.device("cuda", 0), torch.bfloat16)
    threads = torch.get_num_threads()
    bf16.set_threads(threads + 3)
    assert torch.get_num_threads() == threads
    assert bf16.is_cuda and bf16.amp_dtype == torch.bfloat16


def test_move_and_to_cpu_reach_nested_tensors() -> None:
    batch = {"signs": [{"boxes": torch.ones(2, 4), "labels": torch.zeros(2, dtype=torch.long)}, None], "n": 3}
    moved = plan_device("cpu").move(batch)
    assert moved["signs"][1] is None and moved["n"] == 3 and torch.equal(moved["signs"][0]["boxes"], torch.ones(2, 4))
    state = to_cpu({"state": {0: {"exp_avg": torch.ones(3, requires_grad=True) * 2}}, "lr": 0.1})
    assert state["state"][0]["exp_avg"].device.type == "cpu" and not state["state"][0]["exp_avg"].requires_grad


@no_cuda
def test_train_command_refuses_cuda_before_starting_processes(tmp_path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="--device cpu"):
        run_train(tmp_path / "w", device="cuda", nproc=2)
    assert not (tmp_path / "w" / "polyhead.yaml").exists()  # refused before anything was written
    assert main(["train", "--workdir", str(tmp_path / "w"), "--device", "cuda"]) == 2
    assert "sees no CUDA device; run with --device cpu" in capsys.readouterr().err
