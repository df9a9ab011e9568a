"""Run a task's detector over a COCO split (torch or onnxruntime) and map boxes to original pixels."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from heads.postprocess import PostprocessConfig, postprocess
from shared.letterbox import LetterboxInfo
from transfer.data.coco import CocoTask
from transfer.data.datasets import MultiTaskDataset, collate_multitask
from transfer.evaluation.coco_map import ImageDetections
from transfer.training.multitask_model import MultiTaskModel

#: ``images (B,3,S,S) uint8 -> list of (boxes (K,4), scores (K,), labels (K,)) in canvas pixels``.
BatchDetector = Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]


def iterate_split(task: CocoTask, size: int, batch_size: int = 16) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """Yield ``(images (B,3,S,S) uint8, metas)`` letterboxed batches of ``task``'s images."""
    ds = MultiTaskDataset({task.name: task}, task.images_dir, size)
    for images, _, metas in DataLoader(ds, batch_size=batch_size, collate_fn=collate_multitask):
        yield images.numpy(), metas


def detect_split(task: CocoTask, size: int, detector: BatchDetector, progress: bool = False) -> list[ImageDetections]:
    """Run ``detector`` over every image of ``task`` and map detections back to original pixels."""
    out = []
    batches = iterate_split(task, size)
    for images, metas in tqdm(batches, desc=f"eval {task.name}", disable=not progress, leave=False):
        for (boxes, scores, labels), meta in zip(detector(images), metas):
            info = LetterboxInfo(meta["scale"], meta["pad_x"], meta["pad_y"], meta["orig_w"], meta["orig_h"])
            boxes = info.to_original(boxes) if len(boxes) else boxes.reshape(0, 4)
            out.append(ImageDetections(meta["image_ids"][task.name], boxes, scores, labels))
    return out


def torch_detector(model: MultiTaskModel, task: str, post: PostprocessConfig) -> BatchDetector:
    """A :data:`BatchDetector` running ``model``'s trunk and ``task``'s head in torch."""

    @torch.no_grad()
    def run(images: np.ndarray):
        model.eval()
        feats = model.trunk(torch.from_numpy(images))
        dets = postprocess(model.heads[task](feats), post)
        return [(d.boxes.numpy(), d.scores.numpy(), d.classes.numpy()) for d in dets]

    return run


def onnx_detector(trunk_session, head_session) -> BatchDetector:
    """A :data:`BatchDetector` running an exported trunk and head with onnxruntime."""
    feat_names = [i.name for i in head_session.get_inputs()]

    def run(images: np.ndarray):
        feats = trunk_session.run(feat_names, {"images": images})
        num, boxes, scores, classes = head_session.run(
            ["num_dets", "boxes", "scores", "classes"], dict(zip(feat_names, feats))
        )
        return [(boxes[i, : num[i, 0]], scores[i, : num[i, 0]], classes[i, : num[i, 0]]) for i in range(len(num))]

    return run
