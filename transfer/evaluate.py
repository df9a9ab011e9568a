"""`polyhead eval`: COCO metrics of one task, offline (onnxruntime) or through detectors passed in (a server)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.artifact_records import read_head_record
from shared.errors import ConfigError
from shared.workspace import Workspace
from transfer.data.coco import CocoTask
from transfer.data.datasets import read_rgb
from transfer.evaluation.coco_map import CocoMetrics, ImageDetections, coco_metrics
from transfer.evaluation.predict import detect_split, onnx_detector
from transfer.export.onnx_graphs import session


class RemoteDetector(Protocol):
    """What evaluation needs of a served detector (``serving.client.Detector`` is one).

    ``detect(image, tasks=task)`` takes one RGB uint8 image (H, W, 3) and returns one result per
    image; ``result[task]`` holds detections with ``box`` (x1, y1, x2, y2 in original pixels),
    ``score`` and ``class_id``.
    """

    def detect(self, images: np.ndarray, tasks: str) -> Sequence:  # noqa: D102
        ...


REMOTE_WORKERS = 4  # concurrent requests of a connect()-ed evaluation, one detector per thread


def evaluate_task(
    workdir: str | Path, task: str, val: CocoTask, variant: str = "reference", detector: RemoteDetector | None = None,
    *, connect: Callable[[], RemoteDetector] | None = None, workers: int = REMOTE_WORKERS,
) -> CocoMetrics:
    """COCO metrics (:func:`~transfer.evaluation.coco_map.coco_metrics`) of ``task`` on ``val``.

    Offline (``detector`` and ``connect`` None) it runs ``trunk/<variant>`` + ``heads/<task>`` with
    onnxruntime. Otherwise it sends the original images to a server: to ``detector`` one at a time
    (one detector is not assumed thread-safe: ``serving.client.Detector`` caches server metadata
    unguarded), or, with ``connect`` (a zero-argument factory, e.g. ``partial(Detector, url)``),
    ``workers`` at a time, each thread through its own ``connect()``-ed detector, closed at the end.
    Both give the same detections in ``val``'s image order.

    Raises:
        ConfigError: If both ``detector`` and ``connect`` are given, or ``workers`` < 1.
    """
    if detector is not None and connect is not None:
        raise ConfigError("evaluate_task got both a detector and connect; pass one (connect sends concurrently)")
    if workers < 1:
        raise ConfigError(f"workers={workers}: need at least 1 concurrent request")
    ws = Workspace.at(workdir)
    head_dir = ws.require(ws.head(task), f"no head for task {task!r}; train it or run `polyhead add-task`")
    input_size = read_head_record(head_dir).input_size
    if detector is None and connect is None:
        ws.require(ws.variant(variant), f"no trunk variant {variant!r}; run `polyhead train` or `compress`")
        det = onnx_detector(session(ws.variant(variant) / "model.onnx", 2), session(head_dir / "model.onnx"))
        return coco_metrics(val, detect_split(val, input_size, det, progress=True))
    if connect is not None:
        return coco_metrics(val, _detect_concurrently(connect, task, val, workers))
    return coco_metrics(val, _detect_remotely(detector, task, val))


def _detect_one(detector: RemoteDetector, task: str, val: CocoTask, image_id: int) -> ImageDetections:
    """Detections of image ``image_id`` of ``val`` through ``detector``, in original pixels."""
    [result] = detector.detect(read_rgb(val.images_dir / val.images[image_id].file_name), tasks=task)
    dets = result[task]
    return ImageDetections(
        image_id,
        np.array([d.box for d in dets], dtype=np.float32).reshape(-1, 4),
        np.array([d.score for d in dets], dtype=np.float32),
        np.array([d.class_id for d in dets], dtype=np.int64),
    )


def _detect_remotely(detector: RemoteDetector, task: str, val: CocoTask) -> list[ImageDetections]:
    return [_detect_one(detector, task, val, image_id) for image_id in val.images]


def _detect_concurrently(
    connect: Callable[[], RemoteDetector], task: str, val: CocoTask, workers: int
) -> list[ImageDetections]:
    """:func:`_detect_remotely` with ``workers`` threads, each with its own ``connect()``-ed detector."""
    local, opened, lock = threading.local(), [], threading.Lock()

    def one(image_id: int) -> ImageDetections:
        if not hasattr(local, "detector"):
            local.detector = connect()
            with lock:
                opened.append(local.detector)
        return _detect_one(local.detector, task, val, image_id)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="eval")
    try:
        return list(pool.map(one, val.images))  # map keeps val's image order
    finally:
        pool.shutdown(cancel_futures=True)  # on an error, drop the images not sent yet
        for d in opened:
            if callable(close := getattr(d, "close", None)):
                close()
