"""Input sizes 320 and 640 work end to end on real pixels: train, export, every heads layout, the client.

Per size, a nano trunk and a ``photos`` head are trained for one epoch on scikit-image's photos at
that input size, exported and published by the project's own code
(:func:`tests.tiny_workspace.build_photo_workspace`). Per heads layout, the repository is built
(python backend), the real tritonserver serves it, and :class:`serving.client.Detector` sends two
non-square photographs of other sizes (one landscape, one portrait) in one call. The served
detections must lie in each original image's pixels and equal the offline ones: the workspace's
exported trunk and head run by onnxruntime over the same images read from disk through the
evaluation path (:func:`transfer.evaluation.predict.detect_split`, as ``polyhead eval`` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
import tritonclient.grpc as grpcclient
from PIL import Image

from serving.client import Detector
from serving.triton import model_configs as mcfg
from serving.triton.model_names import TRUNK_MODEL, head_model, task_model
from serving.triton.repository import build_repository
from shared.workspace import Workspace
from tests.tiny_workspace import PHOTO_TASK, build_photo_workspace
from transfer.data.coco import load_coco
from transfer.data.photo_task import CATEGORY_IDS, CLASSES
from transfer.evaluation.predict import detect_split, onnx_detector
from transfer.export.onnx_graphs import session

SIZES = (320, 640)
MIN_DETS = 5  # per image: the comparison must cover real detections, not two empty lists


def _photographs() -> list[np.ndarray]:
    """Two real photographs, neither square nor of an input size: 480x300 (landscape) and 300x460."""
    astronaut = skimage.data.astronaut()  # (512, 512, 3) uint8 RGB
    return [np.ascontiguousarray(astronaut[100:400, 16:496]), np.ascontiguousarray(astronaut[20:480, 150:450])]


PHOTOS = _photographs()


def _offline(work: Path, size: int, probe: Path) -> tuple[tuple[str, ...], list]:
    """The task's class names and the detections of :data:`PHOTOS` by onnxruntime on the exported
    trunk + head, through the evaluation path (images read from disk, letterboxed, boxes mapped back)."""
    (probe / "images").mkdir(parents=True)
    images = []
    for i, photo in enumerate(PHOTOS, 1):
        Image.fromarray(photo).save(probe / "images" / f"{i}.png")  # lossless: the same pixels
        images.append({"id": i, "file_name": f"{i}.png", "width": photo.shape[1], "height": photo.shape[0]})
    categories = [{"id": CATEGORY_IDS[c], "name": c} for c in CLASSES]
    (probe / "probe.json").write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    task = load_coco(probe / "probe.json", probe / "images", name=PHOTO_TASK)
    ws = Workspace.at(work)
    detector = onnx_detector(
        session(ws.variant("reference") / "model.onnx", 2), session(ws.head(PHOTO_TASK) / "model.onnx")
    )
    return task.class_names, detect_split(task, size, detector)


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s}px")
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A workspace trained, exported and published at ``size``, and the offline detections of :data:`PHOTOS`."""
    size = request.param
    root = build_photo_workspace(tmp_path_factory.mktemp(f"photos{size}"), size)
    work = root / "work"
    classes, offline = _offline(work, size, root / "probe")
    assert [d.image_id for d in offline] == [1, 2]
    assert all(len(d.boxes) >= MIN_DETS for d in offline), [len(d.boxes) for d in offline]
    return SimpleNamespace(work=work, size=size, classes=classes, offline=offline)


def test_the_workspace_is_exported_at_its_input_size(trained):
    ws, size = Workspace.at(trained.work), trained.size
    variant = json.loads((ws.variant("reference") / "variant.json").read_text())
    head = json.loads((ws.head(PHOTO_TASK) / "head.json").read_text())
    assert variant["input_size"] == head["input_size"] == size
    images = session(ws.variant("reference") / "model.onnx").get_inputs()[0]
    assert images.shape[1:] == [3, size, size]


@pytest.mark.triton
@pytest.mark.parametrize("layout", mcfg.HEADS_LAYOUTS)
def test_served_detections_are_in_original_pixels_and_equal_offline(trained, server_factory, layout):
    size, offline = trained.size, trained.offline
    summary = build_repository(trained.work, max_batch_size=4, heads_layout=layout)  # backend: python
    assert summary.options.backend == "python" and summary.input_size == size
    hosted = {"per_task": head_model(PHOTO_TASK), "shared": mcfg.HEADS_MODEL, "in_trunk": None}[layout]
    assert {m for m in summary.models if m.startswith("head")} == ({hosted} if hosted else set())
    on_disk = mcfg.read_config(summary.path / TRUNK_MODEL / "config.pbtxt")
    assert list(on_disk.input[0].dims) == [3, size, size]

    with server_factory(trained.work, repo=summary.path) as server, Detector(server.url) as detector:
        client = grpcclient.InferenceServerClient(server.url)
        served = client.get_model_config(TRUNK_MODEL).config
        assert list(served.input[0].dims) == [3, size, size]
        metadata = client.get_model_metadata(task_model(PHOTO_TASK))
        assert list(metadata.inputs[0].shape) == [-1, 3, size, size]
        results = detector.detect(PHOTOS)  # one call, both images: letterboxed to `size` by the client

    assert len(results) == len(PHOTOS)
    for photo, result, ref in zip(PHOTOS, results, offline, strict=True):
        h, w = photo.shape[:2]
        dets = result[PHOTO_TASK]
        boxes = np.array([d.box for d in dets], np.float32).reshape(-1, 4)
        assert len(dets) == len(ref.boxes) >= MIN_DETS, (len(dets), len(ref.boxes))
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all(), (w, h, boxes)
        assert [d.class_name for d in dets] == [trained.classes[d.class_id] for d in dets]
        np.testing.assert_array_equal([d.class_id for d in dets], ref.labels)
        np.testing.assert_allclose(boxes, ref.boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose([d.score for d in dets], ref.scores, rtol=0, atol=1e-5)
