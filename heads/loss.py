"""Training loss of a task head: task-aligned assignment, quality focal loss and GIoU."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from heads.head import HeadOutput
from heads.postprocess import decode_boxes
from shared.boxes import aligned_iou, box_iou


@dataclass(frozen=True)
class LossConfig:
    """Assignment and weighting.

    Attributes:
        topk: Points assigned per ground-truth box (best alignment among points inside it).
        alpha: Exponent of the classification score in the alignment metric.
        beta: Exponent of the IoU in the alignment metric.
        cls_weight: Weight of the quality focal loss.
        box_weight: Weight of the GIoU loss.
    """

    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    cls_weight: float = 1.0
    box_weight: float = 2.0


@torch.no_grad()
def assign(
    scores: Tensor, boxes: Tensor, points: Tensor, gt_boxes: Tensor, gt_labels: Tensor, cfg: LossConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Task-aligned assignment (TOOD/YOLOv8) for one image.

    Args:
        scores: ``(A, C)`` predicted probabilities.
        boxes: ``(A, 4)`` predicted boxes.
        points: ``(A, 2)`` cell centres.
        gt_boxes: ``(N, 4)``; gt_labels: ``(N,)`` int64 in ``[0, C)``.

    Returns:
        fg: ``(A,)`` bool foreground mask.
        target_box: ``(A, 4)`` assigned box (valid where ``fg``).
        target_score: ``(A, C)`` soft IoU-aware class targets (zero for background).
    """
    num_points, num_classes = scores.shape
    target_score = scores.new_zeros(num_points, num_classes)
    if gt_boxes.numel() == 0:
        return torch.zeros(num_points, dtype=torch.bool), boxes.new_zeros(num_points, 4), target_score
    x, y = points[:, 0], points[:, 1]
    inside = (
        (x[None] > gt_boxes[:, 0:1]) & (x[None] < gt_boxes[:, 2:3])
        & (y[None] > gt_boxes[:, 1:2]) & (y[None] < gt_boxes[:, 3:4])
    )  # (N, A)
    # Tiny boxes may contain no cell centre: fall back to the nearest point.
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    nearest = torch.cdist(centre, points).argmin(1)
    inside[torch.arange(len(gt_boxes)), nearest] = True
    iou = box_iou(gt_boxes, boxes).clamp(min=0)  # (N, A)
    align = scores[:, gt_labels].T.pow(cfg.alpha) * iou.pow(cfg.beta) * inside
    k = min(cfg.topk, num_points)
    top = align.topk(k, dim=1).indices
    chosen = torch.zeros_like(inside)
    chosen.scatter_(1, top, True)
    chosen &= inside
    # A point claimed by several boxes goes to the one it overlaps most.
    owner = torch.where(chosen, iou, torch.full_like(iou, -1.0)).argmax(0)  # (A,)
    fg = chosen.any(0)
    align = align * chosen
    norm = align / align.amax(1, keepdim=True).clamp(min=1e-9) * (iou * chosen).amax(1, keepdim=True)
    point_score = norm[owner, torch.arange(num_points)] * fg
    target_score[fg, gt_labels[owner[fg]]] = point_score[fg]
    return fg, gt_boxes[owner], target_score


def quality_focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """QFL (GFL): BCE towards a soft target, modulated by ``|sigmoid - target|^gamma``. Summed."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * (prob - target).abs().pow(gamma)).sum()


class DetectionLoss:
    """Loss of one head over a batch; images with ``None`` targets are ignored.

    ``__call__(out, targets) -> {"cls": scalar, "box": scalar, "total": scalar}``, where
    ``targets[b]`` is ``None`` or ``{"boxes": (N,4) float, "labels": (N,) int64}``.
    """

    def __init__(self, cfg: LossConfig = LossConfig()):
        self.cfg = cfg

    def __call__(self, out: HeadOutput, targets: list[dict | None]) -> dict[str, Tensor]:  # noqa: D102
        boxes = decode_boxes(out)
        probs = out.logits.detach().sigmoid()
        cls_sum = out.logits.new_zeros(())
        box_sum = out.logits.new_zeros(())
        norm = 0.0
        for b, t in enumerate(targets):
            if t is None:
                continue
            fg, tbox, tscore = assign(probs[b], boxes[b].detach(), out.points, t["boxes"], t["labels"], self.cfg)
            cls_sum = cls_sum + quality_focal_loss(out.logits[b], tscore)
            if fg.any():
                weight = tscore[fg].sum(1)
                giou = aligned_iou(boxes[b, fg], tbox[fg], giou=True)
                box_sum = box_sum + ((1 - giou) * weight).sum()
            norm += float(tscore.sum())
        norm = max(norm, 1.0)
        cls_loss = self.cfg.cls_weight * cls_sum / norm
        box_loss = self.cfg.box_weight * box_sum / norm
        return {"cls": cls_loss, "box": box_loss, "total": cls_loss + box_loss}
