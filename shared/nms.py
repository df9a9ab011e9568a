"""Non-maximum suppression in plain torch (torchvision cannot be imported on our CPU machines).

Semantics match ONNX ``NonMaxSuppression`` (and onnxruntime's kernel): candidates need
``score > score_threshold``; a box is suppressed by a kept box when ``IoU > iou_threshold``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from shared.boxes import box_iou


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS.

    Args:
        boxes: ``(N, 4)`` x1, y1, x2, y2.
        scores: ``(N,)``.
        iou_threshold: Suppress boxes whose IoU with a kept box is above this.

    Returns:
        ``(K,)`` int64 indices of kept boxes, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    removed = [False] * len(order)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        for j in over[i, i + 1 :].nonzero()[0]:
            removed[i + 1 + j] = True
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """Per-class NMS in one call (boxes of different classes never suppress each other).

    Args:
        boxes: ``(N, 4)``; scores: ``(N,)``; classes: ``(N,)`` int.

    Returns:
        ``(K,)`` kept indices by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset, scores, iou_threshold)


def multiclass_nms_indices(
    boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float, score_threshold: float
) -> Tensor:
    """Reference of ONNX ``NonMaxSuppression``.

    Args:
        boxes: ``(B, A, 4)``.
        scores: ``(B, C, A)``.

    Returns:
        ``(M, 3)`` int64 rows ``(batch, class, box)``.
    """
    rows = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            cand = torch.nonzero(scores[b, c] > score_threshold).flatten()
            if cand.numel() == 0:
                continue
            keep = cand[nms(boxes[b, cand], scores[b, c, cand], iou_threshold)][:max_per_class]
            rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)
