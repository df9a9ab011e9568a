"""The weight-sharing supernet: one trunk's weights, any sub-network of an :class:`ElasticSpace`.

:class:`ElasticTrunk` runs a sub-network by slicing the shared weights (first-k hidden channels of
every block, the blocks a stage keeps), so every sub-network trains the same tensors.
:func:`sort_channels` reorders each block's hidden channels by importance once, before training,
without changing the function, so "first k" keeps the most important ones. :func:`extract_subnet`
copies a sub-network's slices into a plain, physically smaller :class:`~shared.trunk.Trunk` that
exports to ONNX like any other.

BatchNorm during supernet training uses batch statistics and leaves the shared running statistics
as they are (momentum 0): they belong to no sub-network; :mod:`transfer.elastic.recalibrate`
estimates each extracted sub-network's own.
"""

from __future__ import annotations

import copy
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.blocks import ConvBNAct, InvertedResidual
from shared.contract import FeatureSpec
from shared.errors import InputError
from shared.trunk import Trunk
from transfer.elastic.space import ElasticSpace, SubnetArch


def _bn(x: Tensor, bn: nn.BatchNorm2d, k: int | None, training: bool) -> Tensor:
    """BatchNorm of the first ``k`` channels (all when ``None``); running statistics never updated."""
    s = slice(None) if k is None else slice(0, k)
    return F.batch_norm(x, bn.running_mean[s], bn.running_var[s], bn.weight[s], bn.bias[s], training, 0.0, bn.eps)


def _conv(x: Tensor, layer: ConvBNAct, out_k: int | None, in_k: int | None, training: bool, groups: int = 1) -> Tensor:
    """A :class:`ConvBNAct` on sliced weights: ``out_k`` output and ``in_k`` input channels."""
    conv, bn = layer[0], layer[1]
    w = conv.weight[: out_k or conv.out_channels, : in_k or conv.weight.shape[1]]
    y = _bn(F.conv2d(x, w, None, conv.stride, conv.padding, 1, groups), bn, out_k, training)
    return F.relu6(y) if len(layer) > 2 else y


def block_forward(block: InvertedResidual, x: Tensor, hidden: int, training: bool) -> Tensor:
    """One inverted residual at ``hidden`` expanded channels: ``(B, cin, H, W) -> (B, cout, H/s, W/s)``."""
    layers = list(block.conv)
    if len(layers) == 3:  # expand, depthwise, project
        y = _conv(x, layers[0], hidden, None, training)  # (B, hidden, H, W)
        dw, proj = layers[1], layers[2]
    else:  # no expand conv: hidden is the block input
        y, dw, proj = x, layers[0], layers[1]
        hidden = x.shape[1]
    y = _conv(y, dw, hidden, None, training, groups=hidden)  # (B, hidden, H/s, W/s)
    y = _conv(y, proj, None, hidden, training)  # (B, cout, H/s, W/s)
    return x + y if block.use_residual else y


def _importance(block: InvertedResidual) -> Tensor | None:
    """Per hidden channel: |depthwise BN gamma| x L1 of its project-conv column; ``None`` without expand conv."""
    layers = list(block.conv)
    if len(layers) != 3:
        return None
    gamma = layers[1][1].weight.detach().abs()  # (hidden,)
    column = layers[2][0].weight.detach().abs().sum(dim=(0, 2, 3))  # (hidden,)
    return gamma * column


@torch.no_grad()
def sort_channels(trunk: Trunk) -> Trunk:
    """A copy of ``trunk`` whose blocks' hidden channels are in decreasing importance (same function).

    Permutes the expand conv's outputs and BN, the depthwise conv and BN, and the project conv's
    inputs together, so the outputs are unchanged (up to float rounding).
    """
    out = copy.deepcopy(trunk)
    for block in out.backbone.blocks:
        score = _importance(block)
        if score is None:
            continue
        order = torch.argsort(score, descending=True)
        expand, dw, proj = list(block.conv)
        for layer in (expand, dw):
            layer[0].weight.copy_(layer[0].weight[order])
            bn = layer[1]
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t.copy_(t[order])
        proj[0].weight.copy_(proj[0].weight[:, order])
    return out


class ElasticTrunk(nn.Module):
    """The supernet: ``forward(images (B,3,H,W) uint8, arch) -> {"p3": (B,C,H/8,W/8), "p4": ..., "p5": ...}``.

    Args:
        trunk: The full trunk whose weights are shared (usually :func:`sort_channels` of the trained one).
        space: The choices; ``space.base`` must be ``trunk.cfg``.
    """

    def __init__(self, trunk: Trunk, space: ElasticSpace):
        super().__init__()
        if trunk.cfg != space.base:
            raise InputError(f"the elastic space was built for {space.base}, not for this trunk ({trunk.cfg})")
        self.trunk, self.space = trunk, space
        self.feature_specs: tuple[FeatureSpec, ...] = trunk.feature_specs
        stride, self._strides = 2, []
        for _, _, s, _ in space.backbone.block_io():
            stride *= s
            self._strides.append(stride)

    def forward(self, images: Tensor, arch: SubnetArch) -> dict[str, Tensor]:  # noqa: D102
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"trunk expects (B, 3, H, W) uint8 images, got shape {tuple(images.shape)}")
        bb, training = self.trunk.backbone, self.training
        x = _conv(self.trunk.normalize(images), bb.stem, None, None, training)  # (B, stem, H/2, W/2)
        taps: dict[int, Tensor] = {}
        for i in self.space.active_blocks(arch):
            x = block_forward(bb.blocks[i], x, self.space.hidden_of(i, arch.widths[i]), training)
            taps[self._strides[i]] = x  # the last block run at each stride is its tap
        feats = {s: taps[s] for s in (8, 16, 32)}
        return self.trunk.neck(feats)

    def train(self, mode: bool = True) -> ElasticTrunk:
        """Training mode; the neck's BatchNorms (full modules) also keep their running statistics."""
        super().train(mode)
        for m in self.trunk.neck.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.0 if mode else 0.1
        return self

    @torch.no_grad()
    def extract(self, arch: SubnetArch) -> Trunk:
        """The sub-network as a plain :class:`Trunk` (eval mode), built from its config, weights sliced."""
        return extract_subnet(self.trunk, self.space, arch)


_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(.*)$")


@torch.no_grad()
def extract_subnet(trunk: Trunk, space: ElasticSpace, arch: SubnetArch) -> Trunk:
    """Copy ``arch``'s slices of ``trunk`` into a physically smaller :class:`Trunk` (contract checked on build).

    Every tensor of the sub-network is the leading slice of the shared one (first hidden channels;
    sub-network block ``j`` is the ``j``-th block ``arch`` runs).
    """
    sub = Trunk(space.trunk_config(arch))
    active = space.active_blocks(space.validate(arch))
    full = trunk.state_dict()
    state = {}
    for key, target in sub.state_dict().items():
        m = _BLOCK.match(key)
        src = full[f"backbone.blocks.{active[int(m.group(1))]}.{m.group(2)}" if m else key]
        state[key] = src[tuple(slice(0, n) for n in target.shape)].clone() if target.dim() else src.clone()
    sub.load_state_dict(state)
    return sub.eval()
