"""Training loss of a task head: task-aligned assignment, quality focal loss and GIoU."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

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
def assign_batch(
    scores: Tensor, boxes: Tensor, points: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor,
    cfg: LossConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Task-aligned assignment (TOOD/YOLOv8) for a batch, ground truth padded to ``M`` boxes.

    Args:
        scores: ``(B, A, C)`` predicted probabilities.
        boxes: ``(B, A, 4)`` predicted boxes.
        points: ``(A, 2)`` cell centres.
        gt_boxes: ``(B, M, 4)``; gt_labels: ``(B, M)`` int64 in ``[0, C)``; gt_valid: ``(B, M)`` bool
            (False marks padding).

    Returns:
        fg: ``(B, A)`` bool foreground mask.
        target_box: ``(B, A, 4)`` assigned box (valid where ``fg``).
        target_score: ``(B, A, C)`` soft IoU-aware class targets (zero for background).
    """
    nb, num_points, num_classes = scores.shape
    target_score = scores.new_zeros(nb, num_points, num_classes)
    if gt_boxes.shape[1] == 0 or not bool(gt_valid.any()):
        return torch.zeros(nb, num_points, dtype=torch.bool), boxes.new_zeros(nb, num_points, 4), target_score
    x, y = points[:, 0], points[:, 1]
    inside = (
        (x > gt_boxes[..., 0:1]) & (x < gt_boxes[..., 2:3]) & (y > gt_boxes[..., 1:2]) & (y < gt_boxes[..., 3:4])
    )  # (B, M, A)
    # Tiny boxes may contain no cell centre: fall back to the nearest point.
    centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    nearest = ((centre[:, :, None] - points) ** 2).sum(-1).argmin(-1)  # (B, M)
    inside.scatter_(2, nearest[..., None], True)
    inside &= gt_valid[..., None]
    iou = box_iou(gt_boxes, boxes).clamp(min=0)  # (B, M, A)
    label_scores = scores.gather(2, gt_labels[:, None, :].expand(nb, num_points, -1)).transpose(1, 2)  # (B, M, A)
    align = label_scores.pow(cfg.alpha) * iou.pow(cfg.beta) * inside
    top = align.topk(min(cfg.topk, num_points), dim=2).indices
    chosen = torch.zeros_like(inside).scatter_(2, top, True) & inside
    # A point claimed by several boxes goes to the one it overlaps most.
    # (max().indices: 10x faster than argmax over a non-last dim on CPU; ties only among unclaimed points)
    owner = torch.where(chosen, iou, torch.full_like(iou, -1.0)).max(1).indices  # (B, A)
    fg = chosen.any(1)
    align = align * chosen
    norm = align / align.amax(2, keepdim=True).clamp(min=1e-9) * (iou * chosen).amax(2, keepdim=True)
    point_score = norm.gather(1, owner[:, None]).squeeze(1) * fg  # (B, A)
    target_score.scatter_(2, gt_labels.gather(1, owner)[..., None], point_score[..., None])
    return fg, gt_boxes.gather(1, owner[..., None].expand(-1, -1, 4)), target_score


def assign(
    scores: Tensor, boxes: Tensor, points: Tensor, gt_boxes: Tensor, gt_labels: Tensor, cfg: LossConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`assign_batch` for one image: ``(A, C), (A, 4), (A, 2), (N, 4), (N,)`` -> ``(A,), (A, 4), (A, C)``."""
    valid = torch.ones(1, len(gt_boxes), dtype=torch.bool)
    fg, box, score = assign_batch(scores[None], boxes[None], points, gt_boxes[None], gt_labels[None], valid, cfg)
    return fg[0], box[0], score[0]


def pad_targets(targets: list[dict], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-image targets into ``boxes (B, M, 4)``, ``labels (B, M)``, ``valid (B, M)``, M = most boxes."""
    counts = torch.tensor([len(t["boxes"]) for t in targets])
    boxes = pad_sequence([t["boxes"].to(like.dtype) for t in targets], batch_first=True)
    labels = pad_sequence([t["labels"].long() for t in targets], batch_first=True)
    valid = torch.arange(boxes.shape[1]) < counts[:, None]
    return boxes.reshape(len(targets), -1, 4), labels.reshape(len(targets), -1), valid


def quality_focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """QFL (GFL): BCE towards a soft target, modulated by ``|sigmoid - target|^gamma``. Summed."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * (prob - target).abs().pow(gamma)).sum()


class DetectionLoss:
    """Loss of one head over a batch; images with ``None`` targets are ignored.

    ``__call__(out, targets) -> {"cls": scalar, "box": scalar, "total": scalar}``, where
    ``targets[b]`` is ``None`` or ``{"boxes": (N,4) float, "labels": (N,) int64}``. It computes in
    float32 with autocast off, whatever the head ran in (bf16/fp16 under a GPU's autocast).
    """

    def __init__(self, cfg: LossConfig = LossConfig()):
        self.cfg = cfg

    def __call__(self, out: HeadOutput, targets: list[dict | None]) -> dict[str, Tensor]:  # noqa: D102
        with torch.autocast(out.logits.device.type, enabled=False):
            fp32 = replace(out, logits=out.logits.float(), distances=out.distances.float(), points=out.points.float())
            return self._loss(fp32, targets)

    def _loss(self, out: HeadOutput, targets: list[dict | None]) -> dict[str, Tensor]:
        keep = [b for b, t in enumerate(targets) if t is not None]
        zero = out.logits.new_zeros(())
        if not keep:
            return {"cls": zero, "box": zero, "total": zero}
        index = torch.tensor(keep) if len(keep) < len(targets) else slice(None)
        logits, boxes = out.logits[index], decode_boxes(out)[index]
        gt_boxes, gt_labels, gt_valid = pad_targets([targets[b] for b in keep], boxes)
        fg, tbox, tscore = assign_batch(
            logits.detach().sigmoid(), boxes.detach(), out.points, gt_boxes, gt_labels, gt_valid, self.cfg
        )
        cls_sum = quality_focal_loss(logits, tscore)
        box_sum = zero
        if fg.any():
            giou = aligned_iou(boxes[fg], tbox[fg], giou=True)
            box_sum = ((1 - giou) * tscore[fg].sum(-1)).sum()
        norm = max(float(tscore.sum()), 1.0)
        cls_loss = self.cfg.cls_weight * cls_sum / norm
        box_loss = self.cfg.box_weight * box_sum / norm
        return {"cls": cls_loss, "box": box_loss, "total": cls_loss + box_loss}
