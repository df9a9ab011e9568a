"""Box utilities shared by every head. Boxes are ``(..., 4)`` ``x1, y1, x2, y2`` in pixels."""

from __future__ import annotations

import torch
from torch import Tensor


def distance_to_box(points: Tensor, distances: Tensor) -> Tensor:
    """Decode ``(left, top, right, bottom)`` distances from ``points``.

    Args:
        points: ``(A, 2)`` or broadcastable ``(..., A, 2)`` ``(x, y)``.
        distances: ``(..., A, 4)`` non-negative distances in pixels.

    Returns:
        ``(..., A, 4)`` boxes ``x1, y1, x2, y2``.
    """
    x, y = points[..., 0], points[..., 1]
    return torch.stack(
        [x - distances[..., 0], y - distances[..., 1], x + distances[..., 2], y + distances[..., 3]], dim=-1
    )


def box_to_distance(points: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of :func:`distance_to_box`: ``(..., A, 4)`` distances (negative when outside)."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """``(..., 4) -> (...)`` areas (zero for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU: ``(..., N, 4), (..., M, 4) -> (..., N, M)`` (leading dims broadcast)."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return inter / union.clamp(min=1e-9)


def aligned_iou(a: Tensor, b: Tensor, giou: bool = False) -> Tensor:
    """Element-wise IoU (or GIoU) of aligned boxes: ``(..., 4), (..., 4) -> (...)``."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    iou = inter / union.clamp(min=1e-9)
    if not giou:
        return iou
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)
