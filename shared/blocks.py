"""Building blocks of the trunk: conv-BN-act and MobileNetV2-style inverted residuals."""

from __future__ import annotations

from torch import Tensor, nn


class ConvBNAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> ReLU6`` (activation optional)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 project, residual when shapes allow.

    ``(B, cin, H, W) -> (B, cout, H/stride, W/stride)``. The expanded width (``hidden``) is the
    only channel count pruning may change; ``cin``/``cout`` are the block's interface.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: float = 4.0, hidden: int | None = None):
        super().__init__()
        hidden = hidden if hidden is not None else max(8, int(round(cin * expand)))
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if hidden != cin or expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1))
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden), ConvBNAct(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        y = self.conv(x)
        return x + y if self.use_residual else y
