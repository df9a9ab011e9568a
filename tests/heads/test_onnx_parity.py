import numpy as np
import pytest
import torch

from heads.exportable import OUTPUT_NAMES, ExportableHead
from heads.head import DetectionHead, HeadArchitecture
from heads.postprocess import PostprocessConfig, postprocess
from shared.trunk import build_trunk
from transfer.export.onnx_graphs import export_head, export_trunk, session


@pytest.fixture(scope="module")
def trunk_and_head():
    torch.manual_seed(0)
    trunk = build_trunk("nano").eval()
    head = DetectionHead(trunk.feature_specs, HeadArchitecture(3, width=16)).eval()
    with torch.no_grad():  # spread the scores so that the order of detections is unambiguous
        for pred in head.preds.values():
            pred.weight.normal_(0, 0.3)
    return trunk, head


def test_trunk_onnx_matches_torch(tmp_path, trunk_and_head):
    trunk, _ = trunk_and_head
    images = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    diff = export_trunk(trunk, tmp_path / "trunk.onnx", 96, images)
    assert diff <= 1e-4
    sess = session(tmp_path / "trunk.onnx")
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    out = sess.run(None, {"images": np.zeros((5, 3, 96, 96), np.uint8)})  # dynamic batch
    assert [o.shape for o in out] == [(5, 32, 12, 12), (5, 32, 6, 6), (5, 32, 3, 3)]


def test_head_onnx_detections_equal_torch(tmp_path, trunk_and_head):
    trunk, head = trunk_and_head
    post = PostprocessConfig(score_threshold=0.3, iou_threshold=0.5, max_dets=20)
    export_head(head, tmp_path / "head.onnx", 96, post)
    sess = session(tmp_path / "head.onnx")
    images = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8)
    with torch.no_grad():
        feats = trunk(images)
        ref = ExportableHead(head, post).eval()(*feats.values())
        eager = postprocess(head(feats), post)
    got = sess.run(list(OUTPUT_NAMES), {k: v.numpy() for k, v in feats.items()})
    assert got[0].shape == (3, 1) and got[1].shape == (3, 20, 4) and got[3].dtype == np.int64
    np.testing.assert_array_equal(got[0], ref[0].numpy())
    np.testing.assert_array_equal(got[3], ref[3].numpy())
    np.testing.assert_allclose(got[1], ref[1].numpy(), atol=1e-3)
    np.testing.assert_allclose(got[2], ref[2].numpy(), atol=1e-5)
    # The in-graph NMS and the eager post-processing keep the same detections.
    for i, det in enumerate(eager):
        n = int(got[0][i, 0])
        assert n == len(det.scores)
        np.testing.assert_allclose(got[2][i, :n], det.scores.numpy(), atol=1e-5)
        np.testing.assert_array_equal(got[3][i, :n], det.classes.numpy())
        assert (got[3][i, n:] == -1).all() and (got[2][i, n:] == 0).all()


def test_detection_agreement_counts_matching_detections():
    from transfer.export.onnx_graphs import detection_agreement

    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]]], np.float32)
    out = [np.array([[2]]), boxes, np.array([[0.9, 0.8, 0.0]], np.float32), np.array([[1, 2, -1]])]
    assert detection_agreement(out, out) == 1.0
    other = [out[0], out[1], out[2], np.array([[1, 0, -1]])]  # second detection changed class
    assert detection_agreement(out, other) == 0.5
    empty = [np.array([[0]]), boxes, np.zeros((1, 3), np.float32), np.full((1, 3), -1)]
    assert detection_agreement(empty, empty) == 1.0 and detection_agreement(out, empty) == 0.0


def test_fixed_size_head_export_holds_no_shape_arithmetic(tmp_path, trunk_and_head):
    import onnx

    _, head = trunk_and_head
    post = PostprocessConfig(score_threshold=0.3, iou_threshold=0.5, max_dets=20)
    export_head(head, tmp_path / "head.onnx", 96, post)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "head.onnx")).graph.node]
    assert "Range" not in ops  # grid points are constants
    assert ops.count("Shape") <= 2, ops  # only the batch-sized zeros_like/full_like remain
    assert ops.count("NonMaxSuppression") == 1
    # the dynamic form (features of any size) still computes them from the input shapes
    feats = {s.name: torch.randn(2, s.channels, 96 // s.stride, 96 // s.stride) for s in head.specs}
    with torch.no_grad():
        fixed = ExportableHead(head, post, input_size=96).eval()(*feats.values())
        dynamic = ExportableHead(head, post).eval()(*feats.values())
    for a, b in zip(fixed, dynamic, strict=True):
        torch.testing.assert_close(a, b)
