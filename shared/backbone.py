"""A MobileNetV2-style backbone whose stage widths and depths are data.

Pruning and search change a :class:`BackboneConfig` (or the ``hidden`` widths inside blocks);
the module is always rebuilt from the config, so a pruned backbone can be saved as a state_dict
plus its config and reloaded without pickling modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from shared.blocks import ConvBNAct, InvertedResidual


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` inverted-residual blocks, the first with ``stride``."""

    channels: int
    depth: int
    stride: int
    expand: float = 4.0


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone shape as data.

    Attributes:
        stem: Channels of the stride-2 stem convolution.
        stages: Stages in order; the last stage at cumulative stride 8, 16 and 32 feeds the neck.
        hidden: Optional expanded width of every block (flat, in order); ``None`` means
            ``round(cin * expand)``. Pruning writes this.
    """

    stem: int = 16
    stages: tuple[StageSpec, ...] = ()
    hidden: tuple[int, ...] | None = field(default=None)

    def block_io(self) -> list[tuple[int, int, int, float]]:
        """``(cin, cout, stride, expand)`` of every block, in order."""
        io, cin = [], self.stem
        for st in self.stages:
            for i in range(st.depth):
                io.append((cin, st.channels, st.stride if i == 0 else 1, st.expand))
                cin = st.channels
        return io

    def default_hidden(self) -> tuple[int, ...]:
        """Expanded widths when no pruning happened."""
        return tuple(max(8, int(round(cin * e))) for cin, _, _, e in self.block_io())

    def with_hidden(self, hidden: tuple[int, ...]) -> BackboneConfig:
        """Copy with explicit (e.g. pruned) expanded widths."""
        return replace(self, hidden=tuple(int(h) for h in hidden))


class Backbone(nn.Module):
    """``(B, 3, H, W) float -> {8: C3, 16: C4, 32: C5}`` feature maps keyed by stride."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        io = cfg.block_io()
        hidden = cfg.hidden or cfg.default_hidden()
        if len(hidden) != len(io):
            raise ValueError(f"BackboneConfig.hidden has {len(hidden)} widths for {len(io)} blocks")
        self.stem = ConvBNAct(3, cfg.stem, 3, 2)
        self.blocks = nn.ModuleList(
            InvertedResidual(cin, cout, s, e, hidden=h) for (cin, cout, s, e), h in zip(io, hidden)
        )
        # Record, per block, the cumulative stride after it; tap the last block at 8/16/32.
        stride, taps = 2, {}
        for i, (_, cout, s, _) in enumerate(io):
            stride *= s
            taps[stride] = (i, cout)
        missing = [s for s in (8, 16, 32) if s not in taps]
        if missing:
            raise ValueError(f"backbone stages never reach strides {missing}; adjust StageSpec strides")
        self.tap_index = {s: taps[s][0] for s in (8, 16, 32)}
        self.out_channels = {s: taps[s][1] for s in (8, 16, 32)}

    def forward(self, x: Tensor) -> dict[int, Tensor]:  # noqa: D102
        out: dict[int, Tensor] = {}
        x = self.stem(x)
        wanted = {i: s for s, i in self.tap_index.items()}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def bn_scale_l1(module: nn.Module) -> Tensor:
    """Sum of |gamma| over every BatchNorm in ``module`` (the sparse-training penalty)."""
    terms = [m.weight.abs().sum() for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
