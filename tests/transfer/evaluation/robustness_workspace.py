"""A photo workspace whose validation ground truth is its reference's own clean detections.

:func:`tests.tiny_workspace.build_photo_workspace`'s one-epoch model scores mAP 0 on the real labels,
which leaves rPC undefined. Here the ``photos`` validation file is rewritten with the reference's top
detections on the clean images as its boxes (the detector run by the project's evaluation path), so
the clean mAP is high and a corruption that changes the detections lowers it: real files, real models.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.workspace import Workspace
from tests.tiny_workspace import PHOTO_TASK, build_photo_workspace
from transfer.data.coco import load_coco
from transfer.evaluation.predict import detect_split, onnx_detector
from transfer.export.onnx_graphs import session

SIZE = 64
TOP = 3  # detections per image kept as ground truth


def build_robustness_workspace(root: Path) -> Path:
    """The workspace (``root/work``; data under ``root/data``) with pseudo-labelled ``photos`` validation."""
    build_photo_workspace(root, SIZE, num_train=4, num_val=4, image_size=128)
    ws = Workspace.at(root / "work")
    val_json = root / "data" / PHOTO_TASK / "val.json"
    task = load_coco(val_json, root / "data" / "images", name=PHOTO_TASK)
    trunk, head = session(ws.variant("reference") / "model.onnx"), session(ws.head(PHOTO_TASK) / "model.onnx")
    detector = onnx_detector(trunk, head)
    coco = json.loads(val_json.read_text())
    coco["annotations"] = []
    for det in detect_split(task, SIZE, detector):
        for k in det.scores.argsort()[::-1][:TOP]:
            x1, y1, x2, y2 = (float(v) for v in det.boxes[k])
            if x2 - x1 > 1 and y2 - y1 > 1:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": det.image_id,
                                            "category_id": task.label_to_cat_id[int(det.labels[k])],
                                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                            "iscrowd": 0})
    if not coco["annotations"]:
        raise AssertionError("the reference detects nothing on the validation photos")
    val_json.write_text(json.dumps(coco))
    return ws.root
