"""Every trunk variant run once over the validation splits with onnxruntime: detections, metrics, features.

The trunk's features of a batch are computed once per variant and reused by every head whose
split holds the same images (the synthetic tasks share theirs), and by the feature similarity.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shared.letterbox import LetterboxInfo
from transfer.data.coco import CocoTask
from transfer.evaluation.coco_map import CocoMetrics, ImageDetections, coco_metrics
from transfer.evaluation.predict import BatchDetector, iterate_split, onnx_detector
from transfer.export.onnx_graphs import session
from transfer.report.inputs import ReportInputs
from transfer.report.section import Missing

MAX_EVAL_IMAGES = 200  # images per task scored for the per-class / per-size AP (the first ones of the split)
CKA_IMAGES = 32  # validation images the feature similarity compares the variants on
BATCH = 16  # images per trunk call (predict.iterate_split's default)


class CachedSession:
    """An onnxruntime trunk session that computes each distinct ``images`` batch once.

    Quacks like ``onnxruntime.InferenceSession.run`` as :func:`~transfer.evaluation.predict.onnx_detector`
    calls it: ``run(names, {"images": (B, 3, S, S) uint8}) -> [(B, C, H, W) float32 per name]``.
    """

    def __init__(self, trunk: Any):
        self.trunk = trunk
        self.outputs = [o.name for o in trunk.get_outputs()]
        self._cache: dict[bytes, dict[str, np.ndarray]] = {}

    def run(self, names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:  # noqa: D102
        images = feeds["images"]
        key = hashlib.sha1(images.tobytes() + str(images.shape).encode()).digest()
        if key not in self._cache:
            self._cache[key] = dict(zip(self.outputs, self.trunk.run(self.outputs, {"images": images})))
        return [self._cache[key][n] for n in (names or self.outputs)]


@dataclass(frozen=True)
class VariantRun:
    """One variant's pass over the validation splits.

    Attributes:
        detections: Task -> one :class:`ImageDetections` per scored image (original pixels).
        metrics: Task -> :func:`~transfer.evaluation.coco_map.coco_metrics` on the scored images.
        features: Trunk output (``p3``, ``p4``, ``p5``) -> ``(N, C, H, W)`` float32 maps of the
            similarity images (:func:`similarity_batches`).
        seconds: Wall time of the pass.
    """

    detections: dict[str, list[ImageDetections]]
    metrics: dict[str, CocoMetrics]
    features: dict[str, np.ndarray]
    seconds: float


def scored_split(task: CocoTask, max_images: int = MAX_EVAL_IMAGES) -> CocoTask:
    """``task`` restricted to its first ``max_images`` images (the whole split when it is smaller)."""
    if len(task.images) <= max_images:
        return task
    keep = list(task.images)[:max_images]
    return replace(task, images={i: task.images[i] for i in keep},
                   annotations={i: task.annotations.get(i, []) for i in keep},
                   crowd={i: task.crowd[i] for i in keep if i in task.crowd})


Batches = list[tuple[np.ndarray, list[dict]]]  # letterboxed (B, 3, S, S) uint8 images and their metas


def similarity_batches(batches: Batches, count: int = CKA_IMAGES) -> list[np.ndarray]:
    """The first ``count`` images of ``batches`` (a split's letterboxed batches), as ``(B, 3, S, S)`` uint8."""
    out, seen = [], 0
    for images, _ in batches:
        if seen >= count:
            break
        out.append(images[: count - seen])
        seen += len(out[-1])
    return out


def detect_batches(task: CocoTask, batches: Batches, detector: BatchDetector) -> list[ImageDetections]:
    """``detector`` over a split's letterboxed batches, boxes mapped back to original pixels.

    :func:`~transfer.evaluation.predict.detect_split` on batches decoded once for every variant.
    """
    out = []
    for images, metas in batches:
        for (boxes, scores, labels), meta in zip(detector(images), metas):
            info = LetterboxInfo(meta["scale"], meta["pad_x"], meta["pad_y"], meta["orig_w"], meta["orig_h"])
            boxes = info.to_original(boxes) if len(boxes) else boxes.reshape(0, 4)
            out.append(ImageDetections(meta["image_ids"][task.name], boxes, scores, labels))
    return out


def run_variants(inputs: ReportInputs, threads: int = 2) -> tuple[dict[str, VariantRun], list[Missing]]:
    """Run every variant with every head over the (first :data:`MAX_EVAL_IMAGES` images of the) splits.

    Args:
        inputs: The workspace (:func:`~transfer.report.inputs.load_inputs`).
        threads: onnxruntime threads of the trunk sessions.

    Returns:
        Variant name -> :class:`VariantRun`, and the variants that could not run (their ONNX file
        missing or not matching the heads), with the fix.
    """
    ws = inputs.workspace
    splits = {task: scored_split(val) for task, val in inputs.vals.items()}
    heads = {task: session(ws.head(task) / "model.onnx") for task in splits}
    batches = {task: list(iterate_split(val, int(inputs.heads[task]["input_size"]), BATCH))
               for task, val in splits.items()}  # decoded and letterboxed once for every variant
    similar = similarity_batches(next(iter(batches.values()), []))  # cache hits: detection saw these batches
    runs, missing = {}, []
    for name in inputs.variants:
        path = ws.variant(name) / "model.onnx"
        if not path.exists():
            missing.append(Missing(f"model.onnx of variant {name!r}", "re-run `polyhead compress --workdir W`"))
            continue
        t0 = time.perf_counter()
        trunk = CachedSession(session(path, threads))
        try:
            detections = {task: detect_batches(val, batches[task], onnx_detector(trunk, heads[task]))
                          for task, val in splits.items()}
            feats = [trunk.run(None, {"images": b}) for b in similar]
        except (RuntimeError, ValueError) as exc:  # onnxruntime: the trunk's maps do not fit the heads
            missing.append(Missing(f"detections of variant {name!r} ({type(exc).__name__})",
                                   "re-export it with `polyhead compress --workdir W` (contract mismatch?)"))
            continue
        features = {level: np.concatenate([f[i] for f in feats]) for i, level in enumerate(trunk.outputs)} \
            if feats else {}
        metrics = {task: coco_metrics(splits[task], dets) for task, dets in detections.items()}
        runs[name] = VariantRun(detections, metrics, features, time.perf_counter() - t0)
    return runs, missing
