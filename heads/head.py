"""An anchor-free detection head built from the trunk's feature contract."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.blocks import ConvBNAct
from shared.contract import FeatureSpec, check_specs
from shared.errors import ConfigError
from shared.points import grid_points


@dataclass(frozen=True)
class HeadArchitecture:
    """Architecture of one task head module (what :class:`DetectionHead` is built from).

    Not the YAML ``head:`` section (``transfer.config.HeadSection``, which sets width/depth for
    training) nor head-only training settings (``transfer.training.feature_cache.HeadOnlyTrainConfig``).

    Attributes:
        num_classes: Classes of the task.
        width: Channels of the per-level towers.
        depth: Depthwise-separable layers per tower.
        prior_prob: Initial foreground probability (classification bias init).
    """

    num_classes: int
    width: int = 64
    depth: int = 1
    prior_prob: float = 0.01

    def __post_init__(self):
        if self.num_classes < 1:
            raise ConfigError(f"a head needs at least one class, got num_classes={self.num_classes}")


@dataclass
class HeadOutput:
    """Raw head output, every level concatenated.

    Attributes:
        logits: ``(B, A, C)`` classification logits (quality-aware: sigmoid ~ IoU).
        distances: ``(B, A, 4)`` non-negative ``l, t, r, b`` distances in input pixels.
        points: ``(A, 2)`` cell centres in input pixels.
        strides: ``(A,)`` stride of each point.
    """

    logits: Tensor
    distances: Tensor
    points: Tensor
    strides: Tensor


class DetectionHead(nn.Module):
    """GFL/NanoDet-style head: one depthwise-separable tower per level predicting classes + box.

    ``forward({"p3": (B,C,H/8,W/8), ...}) -> HeadOutput``. Built from ``FeatureSpec``s, so it
    runs on every trunk variant that keeps the contract.
    """

    def __init__(self, specs: Sequence[FeatureSpec], cfg: HeadArchitecture):
        super().__init__()
        check_specs(specs)
        self.specs, self.cfg = tuple(specs), cfg
        self.towers = nn.ModuleDict()
        self.preds = nn.ModuleDict()
        for s in self.specs:
            layers: list[nn.Module] = []
            cin = s.channels
            for _ in range(cfg.depth):
                layers += [ConvBNAct(cin, cin, 3, groups=cin), ConvBNAct(cin, cfg.width, 1)]
                cin = cfg.width
            self.towers[s.name] = nn.Sequential(*layers)
            self.preds[s.name] = nn.Conv2d(cin, cfg.num_classes + 4, 1)
        bias = -math.log((1 - cfg.prior_prob) / cfg.prior_prob)
        for pred in self.preds.values():
            nn.init.normal_(pred.weight, std=0.01)
            nn.init.constant_(pred.bias[: cfg.num_classes], bias)
            nn.init.constant_(pred.bias[cfg.num_classes :], 0.0)

    def forward(
        self, features: dict[str, Tensor], static_sizes: Sequence[tuple[int, int]] | None = None
    ) -> HeadOutput:
        """Predict every level and concatenate.

        Args:
            features: ``{"p3": (B, C, H/8, W/8), ...}`` as the contract declares.
            static_sizes: ``(H_l, W_l)`` of every level when the input size is fixed (the served
                export): reshapes use these Python ints and the grid points become constants, so
                the exported graph holds no shape arithmetic (~150 small nodes fewer, measured).
        """
        logits, dists, sizes = [], [], []
        c = self.cfg.num_classes
        for i, s in enumerate(self.specs):
            y = self.preds[s.name](self.towers[s.name](features[s.name]))  # (B, C+4, H, W)
            if static_sizes is None:
                sizes.append((y.shape[2], y.shape[3]))
                y = y.flatten(2).transpose(1, 2)  # (B, HW, C+4)
            else:
                h, w = static_sizes[i]
                sizes.append((h, w))
                y = y.reshape(-1, c + 4, h * w).transpose(1, 2)  # (B, HW, C+4)
            logits.append(y[..., :c])
            dists.append(F.softplus(y[..., c:]) * s.stride)
        points, strides = grid_points(sizes, [s.stride for s in self.specs], device=logits[0].device)
        return HeadOutput(torch.cat(logits, 1), torch.cat(dists, 1), points, strides)
