"""Grid points: the centre of every feature cell, in input pixels."""

from __future__ import annotations

import torch
from torch import Tensor


def grid_points(sizes: list[tuple[int, int]], strides: list[int], device=None) -> tuple[Tensor, Tensor]:
    """Cell centres of every level, concatenated level by level, row-major inside a level.

    Args:
        sizes: ``(H_l, W_l)`` of each level's feature map.
        strides: Stride of each level.

    Returns:
        points: ``(A, 2)`` float ``(x, y)`` centres in input pixels, ``A = sum(H_l * W_l)``.
        point_strides: ``(A,)`` float stride of each point.
    """
    pts, strs = [], []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
        strs.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(pts), torch.cat(strs)
