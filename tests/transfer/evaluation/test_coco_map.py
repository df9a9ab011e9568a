"""coco_metrics against answers known exactly, and against a direct faster-coco-eval run."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from faster_coco_eval import COCO, COCOeval_faster

from transfer.data.coco import CocoAnnotation, CocoImage, CocoTask
from transfer.evaluation.coco_map import ImageDetections, coco_map, coco_metrics

CLASSES = ((1, "cat"), (2, "dog"), (5, "owl"))  # ids not contiguous: labels 0, 1, 2
SMALL, MEDIUM, LARGE = 16.0, 50.0, 120.0  # box sides: areas 256 < 32², 32² < 2500 < 96², 14400 > 96²
SUMMARY = ("map", "map50", "map_small", "map_medium", "map_large", "ar100")


def make_task(boxes: dict[int, list[tuple[tuple[float, float, float, float], int]]],
              crowd: dict[int, list] | None = None) -> CocoTask:
    """A task of 200 x 200 images; ``boxes``: image id -> [((x, y, w, h), category id)]."""
    images = {i: CocoImage(f"{i}.png", 200, 200) for i in boxes}
    anns = {i: [CocoAnnotation(b, c) for b, c in v] for i, v in boxes.items()}
    return CocoTask("pets", Path("val.json"), Path("."), CLASSES, images, anns,
                    {i: [CocoAnnotation(b, c) for b, c in v] for i, v in (crowd or {}).items()})


def dets(image_id: int, rows: list[tuple[tuple[float, float, float, float], int, float]]) -> ImageDetections:
    """``rows``: ((x, y, w, h), label, score) -> detections as x1, y1, x2, y2."""
    boxes = np.array([[x, y, x + w, y + h] for (x, y, w, h), _, _ in rows], dtype=np.float32).reshape(-1, 4)
    return ImageDetections(image_id, boxes, np.array([s for *_, s in rows], dtype=np.float32),
                           np.array([lab for _, lab, _ in rows], dtype=np.int64))


def perfect(task: CocoTask) -> list[ImageDetections]:
    to_label = task.cat_id_to_label
    return [dets(i, [(a.bbox, to_label[a.category_id], 0.9) for a in anns]) for i, anns in task.annotations.items()]


def sized(x: float, side: float) -> tuple[float, float, float, float]:
    return (x, 10.0, side, side)


def test_perfect_detections_score_one_everywhere():
    task = make_task({1: [(sized(0, SMALL), 1), (sized(30, MEDIUM), 2)],
                      2: [(sized(0, LARGE), 1), (sized(130, SMALL), 5)], 3: [(sized(100, MEDIUM), 5)]})
    result = coco_metrics(task, perfect(task))
    assert {k: result[k] for k in SUMMARY} == dict.fromkeys(SUMMARY, 1.0)
    assert result["per_class"] == {n: {"map": 1.0, "map50": 1.0} for _, n in CLASSES}
    assert coco_map(task, perfect(task)) == {"map": 1.0, "map50": 1.0}


def test_one_class_perfect_and_one_all_wrong():
    task = make_task({1: [(sized(0, MEDIUM), 1), (sized(100, MEDIUM), 2)], 2: [(sized(60, MEDIUM), 2)],
                      3: [(sized(0, MEDIUM), 5)]})
    rows = {1: [(sized(0, MEDIUM), 0, 0.9), ((100, 130, MEDIUM, MEDIUM), 1, 0.8)],  # dog: below its box
            2: [((0, 140, MEDIUM, MEDIUM), 1, 0.7)], 3: [((130, 130, MEDIUM, MEDIUM), 0, 0.6)]}  # no owl found
    result = coco_metrics(task, [dets(i, r) for i, r in rows.items()])
    assert result["per_class"] == {"cat": {"map": 1.0, "map50": 1.0}, "dog": {"map": 0.0, "map50": 0.0},
                                   "owl": {"map": 0.0, "map50": 0.0}}
    assert result["map"] == pytest.approx(1 / 3) and result["map50"] == pytest.approx(1 / 3)
    assert result["ar100"] == pytest.approx(1 / 3)


def test_small_medium_large_and_an_area_without_ground_truth():
    task = make_task({1: [(sized(0, SMALL), 1), (sized(40, MEDIUM), 1)], 2: [(sized(0, SMALL), 2)]})
    rows = {1: [(sized(0, SMALL), 0, 0.9), ((40, 140, MEDIUM, MEDIUM), 0, 0.8),  # medium cat missed
                ((60, 60, LARGE, LARGE), 0, 0.5)],  # a large false positive: no large ground truth
            2: [(sized(0, SMALL), 1, 0.9)]}
    result = coco_metrics(task, [dets(i, r) for i, r in rows.items()])
    assert result["map_small"] == 1.0
    assert result["map_medium"] == 0.0
    assert result["map_large"] is None


def test_a_class_without_ground_truth_is_none_even_with_detections():
    task = make_task({1: [(sized(0, MEDIUM), 1)], 2: [(sized(0, MEDIUM), 2)]})  # no owl anywhere
    detections = perfect(task) + [dets(3, [])]
    detections[0] = dets(1, [(sized(0, MEDIUM), 0, 0.9), ((100, 100, MEDIUM, MEDIUM), 2, 0.95)])
    result = coco_metrics(task, detections)
    assert result["per_class"]["owl"] == {"map": None, "map50": None}
    assert result["per_class"]["cat"] == result["per_class"]["dog"] == {"map": 1.0, "map50": 1.0}
    assert result["map"] == 1.0  # the class without ground truth is left out of the mean, not counted 0
    json.dumps(result, allow_nan=False)  # None, never NaN: plain JSON


def test_no_detections_gives_zero_where_there_is_ground_truth_and_none_elsewhere():
    task = make_task({1: [(sized(0, SMALL), 1)], 2: [(sized(0, LARGE), 2)]})
    result = coco_metrics(task, [])
    assert (result["map"], result["map50"], result["ar100"]) == (0.0, 0.0, 0.0)
    assert (result["map_small"], result["map_medium"], result["map_large"]) == (0.0, None, 0.0)
    assert result["per_class"] == {"cat": {"map": 0.0, "map50": 0.0}, "dog": {"map": 0.0, "map50": 0.0},
                                   "owl": {"map": None, "map50": None}}
    assert coco_map(task, []) == {"map": 0.0, "map50": 0.0}


def random_case(seed: int) -> tuple[CocoTask, list[ImageDetections]]:
    """Ground truth of every size and class (and one crowd box), detections jittered, missing, spurious."""
    rng = np.random.default_rng(seed)
    boxes, crowd, detections = {}, {2: [((150.0, 150.0, 40.0, 40.0), 2)]}, []
    for i in range(1, 9):
        boxes[i] = [((float(rng.uniform(0, 60)), float(rng.uniform(0, 60)), side, side), int(rng.choice([1, 2, 5])))
                    for side in rng.choice([SMALL, 24.0, MEDIUM, 80.0, LARGE], size=int(rng.integers(1, 5)))]
    task = make_task(boxes, crowd)
    to_label = task.cat_id_to_label
    for i, anns in task.annotations.items():
        rows = [((*(np.array(a.bbox[:2]) + rng.normal(0, a.bbox[2] / 8, 2)), a.bbox[2], a.bbox[3]),
                 to_label[a.category_id], float(rng.uniform(0.2, 1))) for a in anns if rng.uniform() < 0.8]
        rows += [((float(rng.uniform(0, 150)),) * 2 + (30.0, 30.0), int(rng.integers(0, 3)), float(rng.uniform(0, 1)))]
        detections.append(dets(i, rows))
    return task, detections


def direct_coco_eval(task: CocoTask, detections: list[ImageDetections], cat_ids: list[int] | None = None):
    """faster-coco-eval on its own, from the same boxes, optionally restricted to ``cat_ids``."""
    gt = {"images": [{"id": i, "width": 200, "height": 200} for i in task.images],
          "categories": [{"id": c, "name": n} for c, n in CLASSES], "annotations": []}
    for crowd, per_image in ((0, task.annotations), (1, task.crowd)):
        for i, anns in per_image.items():
            gt["annotations"] += [{"id": len(gt["annotations"]) + 1 + k, "image_id": i, "category_id": a.category_id,
                                   "bbox": list(a.bbox), "area": a.bbox[2] * a.bbox[3], "iscrowd": crowd}
                                  for k, a in enumerate(anns)]
    res = [{"image_id": d.image_id, "category_id": CLASSES[int(lab)][0], "score": float(s),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
           for d in detections for b, s, lab in zip(d.boxes, d.scores, d.labels)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        ev = COCOeval_faster(coco_gt, coco_gt.loadRes(res), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [None if s == -1 else float(s) for s in ev.stats]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summary_and_per_class_values_equal_a_direct_faster_coco_eval_run(seed):
    task, detections = random_case(seed)
    result = coco_metrics(task, detections)
    stats = direct_coco_eval(task, detections)  # AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ...
    expected = dict(zip(SUMMARY, (stats[0], stats[1], stats[3], stats[4], stats[5], stats[8])))
    assert {k: result[k] for k in SUMMARY} == pytest.approx(expected, abs=1e-9)
    assert 0.05 < result["map"] < 0.95, "the case should not be trivial"
    for cat_id, name in CLASSES:
        own = direct_coco_eval(task, detections, [cat_id])
        assert result["per_class"][name] == pytest.approx({"map": own[0], "map50": own[1]}, abs=1e-9), name


def test_a_match_at_iou_point_54_counts_for_map50_only():
    task = make_task({1: [(sized(0, MEDIUM), 2)]})
    shifted = (15.0, 10.0, MEDIUM, MEDIUM)  # IoU 35 / 65 = 0.54: a match at .50, none from .55 on
    result = coco_metrics(task, [dets(1, [(shifted, 1, 0.9)])])
    assert result["per_class"]["dog"] == {"map": pytest.approx(0.1), "map50": 1.0}  # 1 of 10 IoU thresholds
    assert (result["map"], result["map50"]) == (pytest.approx(0.1), 1.0)
    assert result["per_class"]["cat"] == {"map": None, "map50": None}
