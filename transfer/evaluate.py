"""`polyhead eval`: COCO mAP of one task, offline (onnxruntime) or through a detector passed in (a server)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.artifact_records import read_head_record
from shared.workspace import Workspace
from transfer.data.coco import CocoTask
from transfer.data.datasets import read_rgb
from transfer.evaluation.coco_map import ImageDetections, coco_map
from transfer.evaluation.predict import detect_split, onnx_detector
from transfer.export.onnx_graphs import session


class RemoteDetector(Protocol):
    """What evaluation needs of a served detector (``serving.client.Detector`` is one).

    ``detect(image, tasks=task)`` takes one RGB uint8 image (H, W, 3) and returns one result per
    image; ``result[task]`` holds detections with ``box`` (x1, y1, x2, y2 in original pixels),
    ``score`` and ``class_id``.
    """

    def detect(self, images: np.ndarray, tasks: str) -> Sequence:  # noqa: D102
        ...


def evaluate_task(
    workdir: str | Path, task: str, val: CocoTask, variant: str = "reference", detector: RemoteDetector | None = None
) -> dict[str, float]:
    """mAP@[.5:.95] and mAP50 of ``task`` on ``val``.

    Offline (``detector`` None) it runs ``trunk/<variant>`` + ``heads/<task>`` with onnxruntime;
    otherwise it sends the original images to ``detector`` (e.g. a ``Detector`` on Triton's
    ``detect_<task>``), one at a time.
    """
    ws = Workspace.at(workdir)
    head_dir = ws.require(ws.head(task), f"no head for task {task!r}; train it or run `polyhead add-task`")
    input_size = read_head_record(head_dir).input_size
    if detector is None:
        ws.require(ws.variant(variant), f"no trunk variant {variant!r}; run `polyhead train` or `compress`")
        det = onnx_detector(session(ws.variant(variant) / "model.onnx", 2), session(head_dir / "model.onnx"))
        return coco_map(val, detect_split(val, input_size, det, progress=True))
    return coco_map(val, _detect_remotely(detector, task, val))


def _detect_remotely(detector: RemoteDetector, task: str, val: CocoTask) -> list[ImageDetections]:
    out = []
    for image_id, im in val.images.items():
        [result] = detector.detect(read_rgb(val.images_dir / im.file_name), tasks=task)
        dets = result[task]
        out.append(ImageDetections(
            image_id,
            np.array([d.box for d in dets], dtype=np.float32).reshape(-1, 4),
            np.array([d.score for d in dets], dtype=np.float32),
            np.array([d.class_id for d in dets], dtype=np.int64),
        ))
    return out
