"""A light PAN neck that turns backbone maps into the feature contract ``p3, p4, p5``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from shared.blocks import ConvBNAct


class DWFuse(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 at fixed width ``c``: ``(B, c, H, W) -> (B, c, H, W)``."""

    def __init__(self, c: int):
        super().__init__(ConvBNAct(c, c, 3, groups=c), ConvBNAct(c, c, 1))


class PANNeck(nn.Module):
    """Top-down then bottom-up fusion at a fixed width ``channels`` for every output.

    Input ``{8: C3, 16: C4, 32: C5}``; output ``{"p3": (B,c,H/8,W/8), "p4": ..., "p5": ...}``.
    """

    def __init__(self, in_channels: dict[int, int], channels: int = 64):
        super().__init__()
        self.lateral = nn.ModuleDict({str(s): ConvBNAct(c, channels, 1) for s, c in in_channels.items()})
        self.td4, self.td3 = DWFuse(channels), DWFuse(channels)
        self.down3 = ConvBNAct(channels, channels, 3, 2, groups=channels)
        self.down4 = ConvBNAct(channels, channels, 3, 2, groups=channels)
        self.bu4, self.bu5 = DWFuse(channels), DWFuse(channels)

    def forward(self, feats: dict[int, Tensor]) -> dict[str, Tensor]:  # noqa: D102
        l3, l4, l5 = (self.lateral[str(s)](feats[s]) for s in (8, 16, 32))
        t4 = self.td4(l4 + F.interpolate(l5, size=l4.shape[-2:], mode="nearest"))
        p3 = self.td3(l3 + F.interpolate(t4, size=l3.shape[-2:], mode="nearest"))
        p4 = self.bu4(t4 + self.down3(p3))
        p5 = self.bu5(l5 + self.down4(p4))
        return {"p3": p3, "p4": p4, "p5": p5}
