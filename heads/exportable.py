"""Exportable head: decode + ONNX ``NonMaxSuppression`` inside the graph, fixed-size outputs.

"Exportable" as in *the torch module that is traced to ONNX*: :class:`ExportableHead` wraps a
trained :class:`~heads.head.DetectionHead` so its graph ends in final detections. Nothing here
writes a file; tracing it to ONNX and checking parity is ``transfer.export.onnx_graphs``, putting
the ONNX file into the workspace is ``transfer.export.publish``, and ``polyhead export`` (building
the Triton model repository) is ``serving.triton.repository``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from heads.head import DetectionHead
from heads.outputs import OUTPUT_NAMES
from heads.postprocess import PostprocessConfig, decode_boxes
from shared.nms import multiclass_nms_indices

__all__ = ["OUTPUT_NAMES", "ExportableHead"]


class _OnnxNMS(torch.autograd.Function):
    """Eager: :func:`multiclass_nms_indices`; exported: one ONNX ``NonMaxSuppression`` node."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score: float) -> Tensor:
        return multiclass_nms_indices(boxes, scores, max_per_class, iou, score)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou, score):  # noqa: D102
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float)),
            g.op("Constant", value_t=torch.tensor([score], dtype=torch.float)),
        )


class ExportableHead(nn.Module):
    """Head + decode + NMS with fixed-size outputs, the form served by Triton.

    ``forward(p3, p4, p5)`` returns:
        num_dets: ``(B, 1)`` int64 valid detections per image.
        boxes: ``(B, K, 4)`` float32 x1, y1, x2, y2 in input pixels (zeros where padded).
        scores: ``(B, K)`` float32, decreasing (zeros where padded).
        classes: ``(B, K)`` int64 class index (``-1`` where padded).
    """

    def __init__(
        self, head: DetectionHead, cfg: PostprocessConfig = PostprocessConfig(), input_size: int | None = None
    ):
        """Wrap ``head`` for export.

        Args:
            head: The trained head.
            cfg: Thresholds and K baked into the graph.
            input_size: Fixed square input side the features come from (what the server feeds):
                the level sizes, anchor count and grid points become constants of the graph.
                ``None`` keeps every shape dynamic (features of any size).
        """
        super().__init__()
        self.head, self.cfg = head, cfg
        self.names = [s.name for s in head.specs]
        self.static_sizes = None
        if input_size is not None:
            self.static_sizes = [(-(-input_size // s.stride),) * 2 for s in head.specs]  # ceil, as the trunk

    def forward(self, *features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # noqa: D102
        out = self.head(dict(zip(self.names, features)), self.static_sizes)
        boxes = decode_boxes(out)  # (B, A, 4)
        scores = out.logits.sigmoid().transpose(1, 2).contiguous()  # (B, C, A)
        if self.static_sizes is None:
            num_classes, num_anchors = scores.shape[1], scores.shape[2]
        else:  # Python ints: constants in the graph, no Shape/Gather nodes
            num_classes, num_anchors = self.head.cfg.num_classes, sum(h * w for h, w in self.static_sizes)
        sel = _OnnxNMS.apply(boxes, scores, self.cfg.max_dets, self.cfg.iou_threshold, self.cfg.score_threshold)
        # Keep the selected scores, zero the rest: flat (batch, class, anchor) index, 1-D scatter.
        flat_idx = (sel[:, 0] * num_classes + sel[:, 1]) * num_anchors + sel[:, 2]  # (M,)
        flat_scores = scores.reshape(-1)
        kept = torch.zeros_like(flat_scores).scatter(0, flat_idx, flat_scores.gather(0, flat_idx))
        k = min(self.cfg.max_dets, num_classes * num_anchors)
        top_scores, top = kept.reshape(-1, num_classes * num_anchors).topk(k, dim=1)  # (B, K)
        valid = top_scores > 0
        classes = torch.where(valid, top // num_anchors, torch.full_like(top, -1))
        anchor = top % num_anchors
        top_boxes = torch.gather(boxes, 1, anchor.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)
        num_dets = valid.sum(1, keepdim=True).to(torch.int64)
        return num_dets, top_boxes, top_scores, classes
