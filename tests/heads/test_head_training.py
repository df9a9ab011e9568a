import torch

from heads.head import DetectionHead, HeadArchitecture
from heads.loss import DetectionLoss, LossConfig, assign, assign_batch, pad_targets
from heads.postprocess import PostprocessConfig, postprocess
from shared.boxes import box_iou
from shared.trunk import build_trunk


def _scene(n=4, size=64, seed=0):
    """Bright squares on dark images, one class per square size."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    targets = []
    for i in range(n):
        x, y = (torch.randint(0, size - 24, (2,), generator=g)).tolist()
        images[i, :, y : y + 20, x : x + 20] = 255
        targets.append({"boxes": torch.tensor([[x, y, x + 20, y + 20]], dtype=torch.float32),
                        "labels": torch.tensor([i % 2])})
    return images, targets


def test_head_and_trunk_learn_a_tiny_set():
    torch.manual_seed(0)
    trunk = build_trunk("nano")
    head = DetectionHead(trunk.feature_specs, HeadArchitecture(2, width=32))
    images, targets = _scene()
    loss_fn = DetectionLoss()
    opt = torch.optim.AdamW(list(trunk.parameters()) + list(head.parameters()), lr=5e-3)
    losses = []
    for _ in range(40):
        loss = loss_fn(head(trunk(images)), targets)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():  # train-mode BN: 40 steps are too few for eval-mode running statistics
        dets = postprocess(head(trunk(images)), PostprocessConfig(score_threshold=0.05))
    for det, target in zip(dets, targets):
        assert len(det.boxes) > 0 and float(box_iou(det.boxes[:1], target["boxes"])[0, 0]) > 0.3


def test_loss_ignores_images_without_targets():
    trunk = build_trunk("nano")
    head = DetectionHead(trunk.feature_specs, HeadArchitecture(2, width=16))
    images, targets = _scene(2)
    out = head(trunk(images))
    both = DetectionLoss()(out, targets)["total"]
    only_first = DetectionLoss()(out, [targets[0], None])["total"]
    assert torch.isfinite(both) and torch.isfinite(only_first) and only_first.item() != both.item()


def test_assignment_puts_foreground_inside_boxes_with_soft_targets():
    points = torch.stack(torch.meshgrid(torch.arange(4.0, 64, 8), torch.arange(4.0, 64, 8), indexing="xy"), -1)
    points = points.reshape(-1, 2)
    a = len(points)
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    pred_boxes = torch.cat([points - 6, points + 6], 1)
    fg, tbox, tscore = assign(torch.full((a, 2), 0.5), pred_boxes, points, gt, torch.tensor([1]), LossConfig(topk=5))
    assert 0 < int(fg.sum()) <= 5
    inside = (points[fg] > 8).all(1) & (points[fg] < 40).all(1)
    assert bool(inside.all())
    assert bool((tscore[fg, 1] > 0).all()) and bool((tscore[:, 0] == 0).all()) and bool((tscore[~fg] == 0).all())
    assert torch.equal(tbox[fg], gt.expand(int(fg.sum()), 4))


def test_batched_assignment_equals_one_image_at_a_time():
    """Padding the ground truth to the batch's largest count changes no image's assignment."""
    g = torch.Generator().manual_seed(0)
    points = torch.stack(torch.meshgrid(torch.arange(4.0, 64, 8), torch.arange(4.0, 64, 8), indexing="xy"), -1)
    points = points.reshape(-1, 2)
    scores = torch.rand(3, len(points), 4, generator=g)
    boxes = torch.cat([points - 6, points + 6], 1).expand(3, -1, -1) + torch.rand(3, len(points), 4, generator=g)
    gts = [torch.tensor([[8.0, 8.0, 40.0, 40.0], [30.0, 20.0, 60.0, 50.0], [2.0, 2.0, 5.0, 5.0]]),
           torch.tensor([[10.0, 30.0, 50.0, 62.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([1, 3, 0]), torch.tensor([2]), torch.zeros(0, dtype=torch.int64)]
    gt_boxes, gt_labels, valid = pad_targets([{"boxes": b, "labels": c} for b, c in zip(gts, labels)], boxes)
    assert gt_boxes.shape == (3, 3, 4) and valid.sum(1).tolist() == [3, 1, 0]
    fg, tbox, tscore = assign_batch(scores, boxes, points, gt_boxes, gt_labels, valid, LossConfig(topk=5))
    for b in range(3):
        fg1, tbox1, tscore1 = assign(scores[b], boxes[b], points, gts[b], labels[b], LossConfig(topk=5))
        assert torch.equal(fg[b], fg1) and torch.allclose(tscore[b], tscore1)
        assert torch.equal(tbox[b][fg1], tbox1[fg1])
    assert int(fg[0].sum()) > 0 and int(fg[2].sum()) == 0
