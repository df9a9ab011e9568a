"""Turn raw head outputs into detections (torch, eager): decode, threshold, per-class NMS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from heads.head import HeadOutput
from shared.boxes import distance_to_box
from shared.nms import batched_nms


@dataclass(frozen=True)
class PostprocessConfig:
    """Detection thresholds.

    Attributes:
        score_threshold: Candidates need ``score > score_threshold``.
        iou_threshold: Per-class NMS IoU threshold.
        max_dets: Detections kept per image (K of the exported outputs).
        pre_nms_topk: Candidates per image entering NMS.
    """

    score_threshold: float = 0.05
    iou_threshold: float = 0.6
    max_dets: int = 100
    pre_nms_topk: int = 1000


@dataclass
class Detections:
    """Detections of one image: ``boxes (K, 4)`` x1,y1,x2,y2 input pixels, ``scores (K,)``, ``classes (K,)``."""

    boxes: Tensor
    scores: Tensor
    classes: Tensor


def decode_boxes(out: HeadOutput) -> Tensor:
    """``(B, A, 4)`` boxes in input pixels."""
    return distance_to_box(out.points, out.distances)


@torch.no_grad()
def postprocess(out: HeadOutput, cfg: PostprocessConfig = PostprocessConfig()) -> list[Detections]:
    """Decode and NMS every image of the batch.

    Returns:
        One :class:`Detections` per image, sorted by decreasing score, at most ``cfg.max_dets``.
    """
    boxes = decode_boxes(out)  # (B, A, 4)
    scores = out.logits.sigmoid()  # (B, A, C)
    num_classes = scores.shape[-1]
    results = []
    for b in range(boxes.shape[0]):
        flat = scores[b].flatten()  # (A*C,)
        cand = torch.nonzero(flat > cfg.score_threshold).flatten()
        if cand.numel() > cfg.pre_nms_topk:
            cand = cand[flat[cand].topk(cfg.pre_nms_topk).indices]
        anchor, cls = cand // num_classes, cand % num_classes
        keep = batched_nms(boxes[b, anchor], flat[cand], cls, cfg.iou_threshold)[: cfg.max_dets]
        results.append(Detections(boxes[b, anchor[keep]], flat[cand[keep]], cls[keep]))
    return results
