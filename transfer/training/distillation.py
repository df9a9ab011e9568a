"""Knowledge distillation from a teacher trunk (+ heads) into a student: features and responses."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.head import HeadOutput
from shared.contract import FeatureSpec
from shared.mobilenet_v2 import TAP_CHANNELS, MobileNetV2, MobileNetV2Trunk, load_mobilenet_v2


class FeatureDistiller(nn.Module):
    """Feature distillation on matching maps, with 1x1 adapters where channel counts differ.

    ``forward(student_feats, teacher_feats) -> scalar``: mean over maps of the MSE between the
    (adapted) student map and the teacher map, each normalised by the teacher map's variance so
    levels weigh alike. Maps are matched by key and must have the same spatial size. Needs no labels.

    Args:
        student: Channels of each student map, e.g. ``{"p3": 64, ...}``.
        teacher: Channels of each teacher map; every student key must be there.
    """

    def __init__(self, student: Mapping[str, int], teacher: Mapping[str, int]):
        super().__init__()
        missing = sorted(set(student) - set(teacher))
        if missing:
            raise ValueError(f"teacher has no map(s) {missing} to distil into (it has {sorted(teacher)})")
        self.adapters = nn.ModuleDict(
            {k: nn.Identity() if teacher[k] == c else nn.Conv2d(c, teacher[k], 1) for k, c in student.items()}
        )

    @staticmethod
    def for_contract(student: tuple[FeatureSpec, ...], teacher: tuple[FeatureSpec, ...]) -> FeatureDistiller:
        """Distiller over the contract maps ``p3/p4/p5`` of two trunks."""
        return FeatureDistiller({s.name: s.channels for s in student}, {s.name: s.channels for s in teacher})

    def forward(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> Tensor:  # noqa: D102
        terms = []
        for name, adapter in self.adapters.items():
            t = teacher[name].detach()
            terms.append(F.mse_loss(adapter(student[name]), t) / t.var().clamp(min=1e-6))
        return torch.stack(terms).mean()


def stride_keys(maps: Mapping[int, Any]) -> dict[str, Any]:
    """``{8: x, 16: y}`` -> ``{"s8": x, "s16": y}`` (ModuleDict keys must be strings)."""
    return {f"s{stride}": v for stride, v in maps.items()}


class ImageNetTeacher(nn.Module):
    """A frozen pretrained ImageNet MobileNetV2 as a feature teacher for the student's backbone.

    ``forward(images: (B, 3, S, S) uint8) -> {"s8": (B, 32, S/8, S/8), "s16": (B, 96, ..), "s32": (B, 320, ..)}``:
    the backbone maps at strides 8/16/32, matched by :func:`stride_keys` against the student's
    ``trunk.backbone`` outputs. It has no task heads (no response distillation) and no neck, so it
    needs no training on the tasks: what it passes on is its ImageNet features.
    """

    def __init__(self, backbone: MobileNetV2):
        super().__init__()
        self.trunk = MobileNetV2Trunk(backbone, freeze_backbone=True)
        self.channels = stride_keys(TAP_CHANNELS)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def from_weights(path: str | Path) -> ImageNetTeacher:
        """Load a torchvision-format ``mobilenet_v2`` state_dict file (see :func:`load_mobilenet_v2`)."""
        return ImageNetTeacher(load_mobilenet_v2(path))

    def train(self, mode: bool = True) -> ImageNetTeacher:
        """Always in eval mode: the teacher's BatchNorm statistics are ImageNet's."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:  # noqa: D102
        return stride_keys(self.trunk.taps(self.trunk.normalize(images)))


def response_distillation(student: HeadOutput, teacher: HeadOutput) -> Tensor:
    """Head-level distillation: class BCE towards the teacher's probabilities + box L1.

    The box term is the L1 between ``l, t, r, b`` distances (in strides), weighted by the teacher's
    confidence, so background cells do not pull boxes around.
    """
    t_prob = teacher.logits.detach().sigmoid()  # (B, A, C)
    cls = F.binary_cross_entropy_with_logits(student.logits, t_prob)
    conf = t_prob.amax(-1, keepdim=True)  # (B, A, 1)
    stride = student.strides.view(1, -1, 1)
    box = ((student.distances - teacher.distances.detach()).abs() / stride * conf).sum() / conf.sum().clamp(min=1)
    return cls + 0.25 * box
