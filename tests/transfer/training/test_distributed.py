"""Data-parallel training for real: 2 gloo processes on the CPU, then a 1-process resume of their checkpoint."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from heads.loss import DetectionLoss
from shared.errors import ConfigError
from shared.trunk import trunk_config
from transfer.config import DataConfig, HeadSection, PolyheadConfig, TrainConfig
from transfer.data.datasets import MultiTaskDataset, collate_multitask
from transfer.data.synth import generate
from transfer.training.distributed import DistContext, env_context, launch, process_group
from transfer.training.loop import load_tasks, rank_threads, task_infos, train
from transfer.training.multitask_model import build_model, load_checkpoint

NUM_TRAIN = 48  # 2 ranks x 4 images a step: 6 steps an epoch


def _cfg(data: Path, epochs: int = 1) -> PolyheadConfig:
    return PolyheadConfig(
        input_size=64, trunk="nano", data=DataConfig(root=str(data), tasks=("signs",)),
        head=HeadSection(width=16, depth=1),
        train=TrainConfig(epochs=epochs, batch_size=8, lr=3e-2, warmup_steps=0, threads=1),
    )


def _checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def _rank(cfg: PolyheadConfig, data: Path, checkpoint: Path) -> dict:
    """One rank of the job (module level: the spawned processes import it)."""
    with process_group(torch.device("cpu")) as ctx:
        result = train(cfg, data, checkpoint, progress=False, device="cpu", ctx=ctx)
        return {"ctx": ctx, "history": result.history, "sums": ctx.gather(_checksum(result.model)),
                "threads": torch.get_num_threads(), "epochs_run": result.epochs_run}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    root = tmp_path_factory.mktemp("ddp")
    generate(root / "data", seed=0, num_train=NUM_TRAIN, num_val=4, image_size=128)
    checkpoint = root / "nano.pt"
    return root / "data", checkpoint, launch(2, _rank, _cfg(root / "data"), root / "data", checkpoint)


def test_two_gloo_ranks_split_the_data_and_stay_identical(job: tuple[Path, Path, list[dict]]) -> None:
    _, _, results = job
    assert [r["ctx"].rank for r in results] == [0, 1]
    assert all(r["ctx"].world_size == 2 and r["ctx"].local_world_size == 2 for r in results)
    r0, r1 = results
    assert len(r0["history"]) == len(r1["history"]) == NUM_TRAIN // 8  # each rank: half the images a step
    assert r0["history"] != r1["history"]  # different shards of the data ...
    assert r0["sums"][0] == r0["sums"][1] == r1["sums"][0]  # ... but the same weights after every step
    assert r0["threads"] == r1["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)


def _fixed_batch_loss(model: torch.nn.Module, data: Path) -> float:
    """Detection loss on the first 8 training images, not augmented (batch statistics, no update)."""
    cfg = _cfg(data)
    ds = MultiTaskDataset(load_tasks(cfg, data, "train"), data / "images", cfg.input_size)
    images, targets, _ = collate_multitask([ds[i] for i in range(8)])
    model.train()
    with torch.no_grad():
        outs = model(images)[1]
    return float(sum(DetectionLoss()(outs[n], targets[n])["total"] for n in outs))


def test_loss_falls(job: tuple[Path, Path, list[dict]]) -> None:
    data, checkpoint, _ = job
    torch.manual_seed(0)  # as train() does before building the model
    fresh = build_model(trunk_config("nano"), task_infos(load_tasks(_cfg(data), data, "train")), 16, 1)
    before, after = _fixed_batch_loss(fresh, data), _fixed_batch_loss(load_checkpoint(checkpoint)[0], data)
    assert after < 0.95 * before, (before, after)


def test_rank0_checkpoint_resumes_in_one_process(job: tuple[Path, Path, list[dict]]) -> None:
    data, checkpoint, results = job
    model, state = load_checkpoint(checkpoint)
    assert state["epoch"] == 1
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    assert _checksum(model) == results[0]["sums"][0]
    resumed = train(_cfg(data, epochs=2), data, checkpoint, progress=False, device="cpu")
    assert resumed.epochs_run == 1 and len(resumed.history) == NUM_TRAIN // 8
    assert load_checkpoint(checkpoint)[1]["epoch"] == 2
    assert _checksum(resumed.model) != results[0]["sums"][0]


def test_batch_size_must_split_over_the_ranks(tmp_path: Path) -> None:
    cfg = replace(_cfg(tmp_path), train=replace(_cfg(tmp_path).train, batch_size=10))
    with pytest.raises(ConfigError, match="batch_size 10 does not split over 3 processes"):
        train(cfg, tmp_path, tmp_path / "x.pt", device="cpu", ctx=DistContext(0, 3, 0, 3))


def test_context_from_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    ctx = env_context()
    assert ctx == DistContext(3, 8, 1, 2) and not ctx.is_main and ctx.is_distributed
    assert rank_threads(_cfg(Path(".")), ctx) == max(1, len(os.sched_getaffinity(0)) // 2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        env_context()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name)
    assert env_context() == DistContext() and rank_threads(_cfg(Path(".")), DistContext()) == 1


def test_launch_rejects_zero_processes() -> None:
    with pytest.raises(ConfigError, match="--nproc 0"):
        launch(0, _checksum, torch.nn.Linear(1, 1))
