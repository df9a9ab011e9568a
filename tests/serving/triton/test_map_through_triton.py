"""mAP through the embedded Triton equals offline (onnxruntime) mAP on a small real workspace.

The workspace is real (nano trunk + a ``signs`` head, exported and published by the project's own
code, synthetic COCO images) but untrained: a few seconds of training leave the mAP near 0, where
"equal within 0.1 point" would prove nothing. So the head's prediction layers get deterministic
random weights (detections everywhere, with varied scores, boxes and classes) and the ground truth
is made from the offline detections: the top 3 of each image, moved by a few pixels. The offline
mAP then lies well inside (0, 1), and any difference in letterboxing, box mapping, score order or
class mapping on the server path moves it.
"""

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.client import Detector
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.repository import build_repository
from shared.artifacts import atomic_write_bytes
from shared.trunk import trunk_config
from shared.workspace import Workspace
from transfer.config import DataConfig, HeadSection, PolyheadConfig, dump_config
from transfer.data.coco import CocoTask, load_coco
from transfer.data.synth import CLASSES, generate
from transfer.evaluate import _detect_concurrently, _detect_remotely, evaluate_task
from transfer.evaluation.predict import detect_split, onnx_detector
from transfer.export.onnx_graphs import session
from transfer.train import publish_model
from transfer.training.multitask_model import TaskInfo, build_model

TASK, SIZE, GT_PER_IMAGE = "signs", 64, 3
AGREE = 0.001  # metrics served vs offline: within 0.1 point


def _pseudo_ground_truth(work: Path, val: CocoTask, out: Path) -> CocoTask:
    """``val``'s images with the offline top detections, jittered, as annotations."""
    ws = Workspace.at(work)
    detector = onnx_detector(session(ws.variant("reference") / "model.onnx", 2), session(ws.head(TASK) / "model.onnx"))
    rng = np.random.default_rng(0)
    to_cat = val.label_to_cat_id
    images = [{"id": i, "file_name": im.file_name, "width": im.width, "height": im.height}
              for i, im in val.images.items()]
    annotations = []
    for det in detect_split(val, SIZE, detector):
        for k in np.argsort(-det.scores)[:GT_PER_IMAGE]:
            x1, y1, x2, y2 = (det.boxes[k] + rng.normal(0, 1.5, 4)).tolist()
            w, h = max(x2 - x1, 2.0), max(y2 - y1, 2.0)
            annotations.append({"id": len(annotations) + 1, "image_id": det.image_id, "bbox": [x1, y1, w, h],
                                "category_id": to_cat[int(det.labels[k])], "area": w * h, "iscrowd": 0})
    assert len(annotations) >= GT_PER_IMAGE * len(images) // 2, "too few detections"
    categories = [{"id": c, "name": n} for c, n in val.categories]
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return load_coco(out, val.images_dir, name=TASK)


@pytest.fixture(scope="module")
def served_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CocoTask]:
    """A real workspace (nano trunk + ``signs`` head, random but fixed weights) and its val set."""
    root = tmp_path_factory.mktemp("servingmap")
    generate(root / "data", seed=0, num_train=2, num_val=10, image_size=128)
    ws = Workspace.at(root / "work")
    cfg = PolyheadConfig(input_size=SIZE, trunk="nano", data=DataConfig(root=str(root / "data"), tasks=(TASK,)),
                         head=HeadSection(width=16, depth=1, max_dets=20))
    atomic_write_bytes(ws.config, dump_config(cfg).encode())
    torch.manual_seed(0)
    info = TaskInfo(CLASSES[TASK], tuple(range(1, len(CLASSES[TASK]) + 1)))
    model = build_model(trunk_config("nano"), {TASK: info}, 16, 1)
    with torch.no_grad():  # spread scores and boxes instead of the 0.01 prior everywhere
        for pred in model.heads[TASK].preds.values():
            pred.weight.normal_(0.0, 0.3)
            pred.bias[: len(info.classes)].fill_(-1.0)
    publish_model(ws, cfg, model)
    val = load_coco(root / "data" / TASK / "val.json", root / "data" / "images", name=TASK)
    return ws.root, _pseudo_ground_truth(ws.root, val, root / "pseudo_val.json")


def flat(metrics: dict) -> dict:
    """``metrics`` with ``per_class`` spread into ``<class>.map`` / ``<class>.map50`` keys."""
    out = {k: v for k, v in metrics.items() if k != "per_class"}
    return out | {f"{n}.{k}": v for n, ap in metrics["per_class"].items() for k, v in ap.items()}


@pytest.mark.triton
def test_map_through_the_server_equals_offline_map(served_workspace):
    work, val = served_workspace
    offline = evaluate_task(work, TASK, val)
    assert 0.05 < offline["map"] < 0.99, f"offline mAP {offline} is not a meaningful operating point"
    repo = build_repository(work, max_batch_size=4).path
    with (EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server,
          Detector(server.url) as detector):
        served = evaluate_task(work, TASK, val, detector=detector)
        concurrent = evaluate_task(work, TASK, val, connect=partial(Detector, server.url), workers=3)
        one_by_one = _detect_remotely(detector, TASK, val)
        at_once = _detect_concurrently(partial(Detector, server.url), TASK, val, 3)
    assert [d.image_id for d in at_once] == [d.image_id for d in one_by_one] == list(val.images)
    for a, b in zip(at_once, one_by_one):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert flat(concurrent) == pytest.approx(flat(served), abs=1e-6)  # concurrent == sequential
    assert abs(served["map"] - offline["map"]) <= AGREE, (served, offline)
    assert abs(served["map50"] - offline["map50"]) <= AGREE, (served, offline)
    for key in ("map_small", "map_medium", "map_large", "ar100"):
        assert (served[key] is None) == (offline[key] is None), (key, served, offline)
        assert served[key] is None or abs(served[key] - offline[key]) <= AGREE, (key, served, offline)
    assert served["per_class"].keys() == offline["per_class"].keys() == set(val.class_names)
    for name, ap in offline["per_class"].items():
        for key, value in ap.items():
            other = served["per_class"][name][key]
            assert (value is None) == (other is None) and (value is None or abs(value - other) <= AGREE), \
                (name, key, served["per_class"], offline["per_class"])
