"""Knowledge distillation from a teacher trunk (+ heads) into a student: features and responses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.head import HeadOutput
from shared.contract import FeatureSpec


class FeatureDistiller(nn.Module):
    """Feature distillation on the contract maps, with 1x1 adapters where channel counts differ.

    ``forward(student_feats, teacher_feats) -> scalar``: mean over maps of the MSE between the
    (adapted) student map and the teacher map, each normalised by the teacher map's variance so
    levels weigh alike. Needs no labels.
    """

    def __init__(self, student: tuple[FeatureSpec, ...], teacher: tuple[FeatureSpec, ...]):
        super().__init__()
        t_by_name = {s.name: s for s in teacher}
        self.adapters = nn.ModuleDict()
        for s in student:
            t = t_by_name[s.name]
            self.adapters[s.name] = nn.Identity() if t.channels == s.channels else nn.Conv2d(s.channels, t.channels, 1)

    def forward(self, student: dict[str, Tensor], teacher: dict[str, Tensor]) -> Tensor:  # noqa: D102
        terms = []
        for name, adapter in self.adapters.items():
            t = teacher[name].detach()
            terms.append(F.mse_loss(adapter(student[name]), t) / t.var().clamp(min=1e-6))
        return torch.stack(terms).mean()


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
