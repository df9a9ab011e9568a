"""`polyhead eval`: COCO mAP of one task, offline (onnxruntime) or through a Triton server."""

from __future__ import annotations

from pathlib import Path

from shared.artifacts import read_json
from shared.workspace import Workspace
from transfer.coco import CocoTask
from transfer.evaluate import ImageDetections, coco_map
from transfer.onnx_export import session
from transfer.predict import detect_split, onnx_detector


def evaluate_task(
    workdir: str | Path, task: str, val: CocoTask, variant: str = "reference", server: str | None = None
) -> dict[str, float]:
    """mAP@[.5:.95] and mAP50 of ``task`` on ``val``.

    Offline it runs ``trunk/<variant>`` + ``heads/<task>`` with onnxruntime; with ``server`` it sends
    the original images through the Triton ``detect_<task>`` ensemble with the client SDK.
    """
    ws = Workspace.at(workdir)
    head_dir = ws.require(ws.head(task), f"no head for task {task!r}; train it or run `polyhead add-task`")
    input_size = int(read_json(head_dir / "head.json", "head metadata")["input_size"])
    if server is None:
        ws.require(ws.variant(variant), f"no trunk variant {variant!r}; run `polyhead train` or `compress`")
        det = onnx_detector(session(ws.variant(variant) / "model.onnx", 2), session(head_dir / "model.onnx"))
        return coco_map(val, detect_split(val, input_size, det, progress=True))
    return coco_map(val, _detect_through_server(server, task, val))


def _detect_through_server(server: str, task: str, val: CocoTask) -> list[ImageDetections]:
    import numpy as np

    from serving.client import Detector
    from transfer.datasets import read_rgb

    out = []
    with Detector(server) as detector:
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
