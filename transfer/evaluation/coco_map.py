"""COCO mAP with faster-coco-eval, from detections in original image pixels."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from transfer.data.coco import CocoTask


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image in original pixels.

    Attributes:
        image_id: COCO image id in the task's file.
        boxes: ``(K, 4)`` x1, y1, x2, y2.
        scores: ``(K,)``.
        labels: ``(K,)`` contiguous class index (mapped back to category ids for COCO).
    """

    image_id: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def coco_map(task: CocoTask, detections: Iterable[ImageDetections]) -> dict[str, float]:
    """mAP@[.5:.95] and mAP50 of ``detections`` against ``task``'s annotations.

    Returns:
        ``{"map": float, "map50": float}`` in [0, 1] (0 when there are no detections).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    gt = {
        "images": [{"id": i, "file_name": im.file_name, "width": im.width, "height": im.height}
                   for i, im in task.images.items()],
        "categories": [{"id": c, "name": n} for c, n in task.categories],
        "annotations": [],
    }
    for crowd, per_image in ((0, task.annotations), (1, task.crowd)):
        for image_id, anns in per_image.items():
            for a in anns:
                x, y, w, h = a.bbox
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                                          "category_id": a.category_id, "bbox": [x, y, w, h], "area": w * h,
                                          "iscrowd": crowd})
    to_cat = task.label_to_cat_id
    results = []
    for det in detections:
        for box, score, label in zip(det.boxes, det.scores, det.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": int(det.image_id), "category_id": int(to_cat[int(label)]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    if not results:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1])}
