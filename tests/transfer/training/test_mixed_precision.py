"""The GPU code paths of training (device moves, autocast, the fp16 loss scaler), run on the CPU.

No GPU runs here, so CUDA itself is untested; but ``DevicePlan(cpu, bfloat16 | float16)`` drives
every line a CUDA plan drives (CPU autocast supports both dtypes, and the scaler works on the CPU):
the trunk training's backbone learning rate, the head-only trainer, the feature cache's PyTorch
trunk and the pruned trunks' distillation fine-tune.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from heads.head import DetectionHead, HeadArchitecture
from serving.cli.options import DEVICES
from shared.errors import ConfigError
from shared.trunk import build_trunk, trunk_config
from transfer.compression.prune import PruneSettings, distill_finetune, feature_error, prune_trunk, trunk_features
from transfer.config import PolyheadConfig, TrainConfig
from transfer.training.devices import DEVICE_CHOICES, DevicePlan
from transfer.training.feature_cache import DeviceTrunk, FeatureCache, HeadOnlyTrainConfig, train_head_on_cache
from transfer.training.loop import param_groups
from transfer.training.multitask_model import TaskInfo, build_model

CPU = torch.device("cpu")
PLANS = {"bf16": DevicePlan(CPU, torch.bfloat16), "fp16": DevicePlan(CPU, torch.float16)}


def _images(n: int, size: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _calibrated_nano(images: torch.Tensor):
    trunk = build_trunk("nano").train()
    with torch.no_grad():
        for _ in range(10):
            trunk(images)
    return trunk.eval()


def test_cli_device_choices_are_the_libraries() -> None:
    assert DEVICES == DEVICE_CHOICES


@pytest.mark.parametrize("precision", sorted(PLANS))
def test_head_only_training_under_autocast_lowers_the_loss(precision: str) -> None:
    torch.manual_seed(0)
    trunk = _calibrated_nano(_images(16))
    with torch.no_grad():
        feats = trunk(_images(32))
    features = {n: f.permute(0, 2, 3, 1).numpy().astype(np.float16) for n, f in feats.items()}
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([i % 2])} for i in range(32)]
    cache = FeatureCache(tuple(trunk.feature_specs), features, targets)
    head = DetectionHead(trunk.feature_specs, HeadArchitecture(2, width=16))
    losses = train_head_on_cache(head, cache, HeadOnlyTrainConfig(epochs=8, batch_size=8), plan=PLANS[precision])
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
    assert all(p.device == CPU and p.dtype == torch.float32 for p in head.parameters())  # fp32 master weights
    assert not head.training


@pytest.mark.parametrize("precision", sorted(PLANS))
def test_distillation_fine_tune_under_autocast_pulls_features_towards_the_reference(precision: str) -> None:
    torch.manual_seed(0)
    images = _images(32)
    reference = _calibrated_nano(images)
    target = trunk_features(reference, images, plan=PLANS[precision])  # fp32 target whatever the plan
    assert all(t.dtype == torch.float32 for t in target.values())
    pruned = prune_trunk(reference, PruneSettings(ratio=0.6, round_to=4))
    before = feature_error(pruned, target, images)
    losses = distill_finetune(pruned, images, target, PruneSettings(steps=25, batch_size=16, lr=3e-3),
                              plan=PLANS[precision])
    assert len(losses) == 25 and np.isfinite(losses).all() and not pruned.training
    assert feature_error(pruned, target, images) < 0.8 * before


def test_device_trunk_returns_float32_cpu_features_close_to_the_trunks() -> None:
    images = _images(4)
    trunk = _calibrated_nano(images)
    with torch.no_grad():
        ref = trunk(images)
    got = DeviceTrunk(trunk, PLANS["bf16"])(images)
    assert set(got) == set(ref) and not DeviceTrunk.training
    for name, r in ref.items():
        assert got[name].dtype == torch.float32 and got[name].device == CPU and got[name].shape == r.shape
        assert (got[name] - r).abs().max() <= 0.05 * r.abs().max() + 1e-3, name  # bf16 rounding, not garbage


def test_a_pretrained_backbone_trains_at_its_own_learning_rate_scale() -> None:
    tasks = {"signs": TaskInfo(("a", "b"), (1, 2))}
    cfg = PolyheadConfig(trunk="mobilenet_v2", train=TrainConfig(backbone_lr_scale=0.25))
    arch = trunk_config("mobilenet_v2")
    model = build_model(replace(arch, pretrained=None), tasks, 16, 1)  # the same shapes, no weights read
    groups = param_groups(cfg, model, None)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.25]
    backbone = {id(p) for p in model.trunk.backbone.parameters()}
    assert {id(p) for p in groups[1]["params"]} == backbone
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # each parameter once
    scratch = param_groups(PolyheadConfig(trunk="student"), build_model(trunk_config("student"), tasks, 16, 1), None)
    assert [g["lr_scale"] for g in scratch] == [1.0]  # from scratch: every parameter at train.lr


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_backbone_lr_scale_out_of_range_names_the_key(value: float) -> None:
    with pytest.raises(ConfigError, match=r"train.backbone_lr_scale = .* is out of range: allowed \[0, 1\]"):
        TrainConfig(backbone_lr_scale=value)
