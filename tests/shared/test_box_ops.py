import itertools

import torch

from shared.boxes import aligned_iou, box_iou, box_to_distance, distance_to_box
from shared.nms import batched_nms, multiclass_nms_indices, nms
from shared.points import grid_points


def _random_boxes(n, seed=0, size=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * 30 + 2
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


def _iou_scalar(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _brute_force_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if all(_iou_scalar(boxes[i].tolist(), boxes[k].tolist()) <= thr for k in keep):
            keep.append(i)
    return keep


def test_box_iou_matches_scalar_reference():
    a, _ = _random_boxes(7, 1)
    b, _ = _random_boxes(5, 2)
    iou = box_iou(a, b)
    for i, j in itertools.product(range(7), range(5)):
        assert abs(float(iou[i, j]) - _iou_scalar(a[i].tolist(), b[j].tolist())) < 1e-6


def test_giou_is_iou_minus_hull_penalty_and_one_for_identical_boxes():
    a, _ = _random_boxes(20, 3)
    assert torch.allclose(aligned_iou(a, a, giou=True), torch.ones(20))
    far = a + 500
    assert bool((aligned_iou(a, far, giou=True) < 0).all())


def test_nms_agrees_with_brute_force():
    for seed in range(5):
        boxes, scores = _random_boxes(80, seed)
        for thr in (0.3, 0.5, 0.7):
            assert nms(boxes, scores, thr).tolist() == _brute_force_nms(boxes, scores, thr)


def test_batched_nms_never_suppresses_across_classes():
    boxes, scores = _random_boxes(60, 7)
    classes = torch.arange(60) % 3
    keep = set(batched_nms(boxes, scores, classes, 0.5).tolist())
    expected = set()
    for c in range(3):
        idx = torch.nonzero(classes == c).flatten()
        expected |= {int(idx[k]) for k in _brute_force_nms(boxes[idx], scores[idx], 0.5)}
    assert keep == expected


def test_multiclass_nms_indices_respects_score_threshold_and_limit():
    boxes, _ = _random_boxes(50, 4)
    scores = torch.rand(2, 3, 50, generator=torch.Generator().manual_seed(4))
    sel = multiclass_nms_indices(boxes.expand(2, -1, -1), scores, 5, 0.5, 0.2)
    assert bool((scores[sel[:, 0], sel[:, 1], sel[:, 2]] > 0.2).all())
    for b, c in itertools.product(range(2), range(3)):
        assert int(((sel[:, 0] == b) & (sel[:, 1] == c)).sum()) <= 5


def test_distance_decoding_round_trips():
    points, strides = grid_points([(4, 4), (2, 2)], [8, 16])
    assert points.shape == (20, 2) and strides.tolist() == [8.0] * 16 + [16.0] * 4
    assert points[0].tolist() == [4.0, 4.0] and points[16].tolist() == [8.0, 8.0]
    dist = torch.rand(20, 4) * 10
    assert torch.allclose(box_to_distance(points, distance_to_box(points, dist)), dist, atol=1e-5)
