"""COCO metrics with faster-coco-eval, from detections in original image pixels.

:func:`coco_metrics` gives the full report of ``polyhead eval`` (summary, per-class, per-area, AR@100);
:func:`coco_map` only its ``map`` and ``map50``, the two numbers training, compression and
``add-task`` record in ``head.json`` / ``variant.json``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from transfer.data.coco import CocoTask

AREAS = ("small", "medium", "large")  # COCO's area ranges: < 32², 32²..96², > 96² pixels (box w * h)


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


class ClassAP(TypedDict):
    """AP of one class; ``None`` where the class has no (non-crowd) ground truth."""

    map: float | None
    map50: float | None


class CocoMetrics(TypedDict):
    """What :func:`coco_metrics` returns (every value in [0, 1] or ``None``)."""

    map: float
    map50: float
    per_class: dict[str, ClassAP]
    map_small: float | None
    map_medium: float | None
    map_large: float | None
    ar100: float | None


def coco_map(task: CocoTask, detections: Iterable[ImageDetections]) -> dict[str, float]:
    """mAP@[.5:.95] and mAP50 of ``detections`` against ``task``'s annotations.

    Returns:
        ``{"map": float, "map50": float}`` in [0, 1] (0 when there are no detections); exactly the
        ``map`` / ``map50`` of :func:`coco_metrics`.
    """
    result = coco_metrics(task, detections)
    return {"map": result["map"], "map50": result["map50"]}


def coco_metrics(task: CocoTask, detections: Iterable[ImageDetections]) -> CocoMetrics:
    """COCO bbox metrics of ``detections`` against ``task``'s annotations (crowd boxes ignored).

    Values come from one ``COCOeval_faster`` run: ``map`` / ``map50`` are its summary ``stats[0]`` /
    ``stats[1]``; the others are read from its ``precision`` array ``[T, R, K, A, M]`` (IoU
    thresholds .50:.05:.95 x 101 recall points x classes x areas all/small/medium/large x
    maxDets 1/10/100) and ``recall`` array ``[T, K, A, M]``, at maxDets 100, averaged over the
    entries COCO filled (it leaves -1 where nothing applies), as ``COCOeval.summarize`` does.

    Args:
        task: The split with its ground truth; class names come from ``task.categories``.
        detections: One :class:`ImageDetections` per image (images left out count as having none).

    Returns:
        ``map``, ``map50``: float, 0.0 when there are no detections at all (as before; -1.0 when
        there are detections but no ground truth in the whole split). ``per_class``: class name ->
        ``{"map", "map50"}`` for every class of ``task``, in label order. ``map_small``,
        ``map_medium``, ``map_large``: mAP@[.5:.95] over objects of that area. ``ar100``: recall
        @[.5:.95] with at most 100 detections per image. Where COCO has nothing to average (a class
        or area range without ground truth) the value is ``None``, never -1 or NaN, so the result
        is plain JSON.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    images = [{"id": i, "file_name": im.file_name, "width": im.width, "height": im.height}
              for i, im in task.images.items()]
    categories = [{"id": c, "name": n} for c, n in task.categories]
    gt = {"images": images, "categories": categories, "annotations": []}
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
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        # an empty result set is built directly: older faster-coco-eval's loadRes rejects []
        coco_dt = coco_gt.loadRes(results) if results else COCO(
            {"images": images, "categories": categories, "annotations": []})
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    summary = (float(ev.stats[0]), float(ev.stats[1])) if results else (0.0, 0.0)
    return {"map": summary[0], "map50": summary[1], **_from_arrays(ev, task)}


def _mean(values: np.ndarray) -> float | None:
    """Mean of the entries COCO filled (> -1); ``None`` when there are none."""
    filled = values[values > -1]
    return float(np.mean(filled)) if filled.size else None


def _from_arrays(ev: object, task: CocoTask) -> dict:
    """``per_class``, ``map_<area>`` and ``ar100`` from ``ev.eval``'s precision and recall arrays."""
    p = ev.params
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    recall = np.asarray(ev.eval["recall"])  # [T, K, A, M]
    m = p.maxDets.index(100)
    everything = p.areaRngLbl.index("all")
    names = dict(task.categories)
    per_class = {}
    for k, cat_id in enumerate(p.catIds):  # K follows params.catIds: the sorted category ids = label order
        at_k = precision[:, :, k, everything, m]
        per_class[names[cat_id]] = {"map": _mean(at_k), "map50": _mean(at_k[0])}  # T index 0: IoU .50
    areas = {f"map_{a}": _mean(precision[:, :, :, p.areaRngLbl.index(a), m]) for a in AREAS}
    return {"per_class": per_class, **areas, "ar100": _mean(recall[:, :, everything, m])}
