"""Accuracy of a sub-network: every head's COCO mAP on a bounded validation split.

A sub-network is extracted from the supernet, its BatchNorm statistics recalibrated on the
calibration images, and run in torch (eval mode); each head runs as its exported ONNX file in
onnxruntime (the frozen heads served today, including heads added with ``add-task``), and COCO
mAP@[.5:.95] comes from :func:`transfer.evaluation.coco_map.coco_map` over the first
``max_images`` validation images of each task.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from shared.trunk import Trunk
from transfer.data.coco import CocoTask
from transfer.elastic.recalibrate import recalibrate_bn
from transfer.elastic.space import SubnetArch
from transfer.elastic.supernet import ElasticTrunk
from transfer.evaluation.coco_map import coco_map
from transfer.evaluation.predict import BatchDetector, detect_split
from transfer.evaluation.robustness import first_images


def torch_trunk_onnx_head(trunk: Trunk, head_session) -> BatchDetector:
    """A detector: ``trunk`` in torch (features ``p3/p4/p5``), then the head's ONNX graph (decode + NMS)."""
    names = [i.name for i in head_session.get_inputs()]

    @torch.no_grad()
    def run(images: np.ndarray):
        feats = trunk(torch.from_numpy(images))
        num, boxes, scores, classes = head_session.run(
            ["num_dets", "boxes", "scores", "classes"], {n: feats[n].numpy() for n in names})
        return [(boxes[i, : num[i, 0]], scores[i, : num[i, 0]], classes[i, : num[i, 0]]) for i in range(len(num))]

    return run


class SubnetEvaluator:
    """``evaluate(arch) -> {task: mAP}`` of every head on a sub-network (recalibrated first).

    Args:
        supernet: The trained supernet.
        calibration: ``(N, 3, S, S)`` uint8 images for BatchNorm recalibration.
        vals: Task -> validation split (cut to ``max_images``).
        head_sessions: Task -> onnxruntime session of ``heads/<task>/model.onnx``.
        input_size: S.
        max_images: First validation images per task that are evaluated.
    """

    def __init__(self, supernet: ElasticTrunk, calibration: Tensor, vals: Mapping[str, CocoTask],
                 head_sessions: Mapping, input_size: int, max_images: int):
        self.supernet, self.calibration, self.input_size = supernet, calibration, input_size
        self.vals = {t: first_images(v, max_images) for t, v in vals.items()}
        self.heads = dict(head_sessions)

    def subnet(self, arch: SubnetArch) -> Trunk:
        """The recalibrated plain trunk of ``arch`` (eval mode)."""
        return recalibrate_bn(self.supernet.extract(arch), self.calibration)

    def evaluate(self, arch: SubnetArch) -> dict[str, float]:  # noqa: D102
        trunk = self.subnet(arch)
        return {t: float(coco_map(v, detect_split(v, self.input_size, torch_trunk_onnx_head(trunk, self.heads[t])))
                         ["map"]) for t, v in self.vals.items()}
