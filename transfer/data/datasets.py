"""Torch datasets over validated COCO tasks: multi-task labelled images and unlabelled folders.

Images are read by :func:`transfer.data.images.read_rgb` (EXIF orientation applied, any mode to RGB),
letterboxed to ``size x size`` (see :mod:`shared.letterbox`) and returned as uint8 ``[3, S, S]`` RGB
tensors; normalisation happens inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from shared.errors import DataError
from shared.letterbox import letterbox
from transfer.data.augment import Augment, apply_augment
from transfer.data.coco import CocoTask
from transfer.data.images import read_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
__all__ = ["IMAGE_SUFFIXES", "ImageFolderDataset", "MultiTaskDataset", "collate_multitask", "read_rgb"]

Target = dict[str, torch.Tensor]  # {"boxes": float32 [N, 4] xyxy canvas px, "labels": int64 [N]}


class MultiTaskDataset(Dataset):
    """Images shared by several COCO tasks, with one target per task.

    Every image listed by any task is one item (matched across tasks by ``file_name``). A task whose
    file does not list an image gets ``None`` as its target (its loss must skip that image); a task
    that lists it without annotations gets empty targets (a true negative).

    Items are ``(image, targets, meta)``:
        - image: uint8 ``[3, S, S]`` RGB letterbox canvas (augmented when ``augment`` is set).
        - targets: task -> ``{"boxes": float32 [N, 4] x1, y1, x2, y2 canvas px, "labels": int64 [N]}``
          (contiguous labels ``0..C-1``) or ``None``.
        - meta: ``file_name``, ``image_ids`` (task -> COCO id or None), and the letterbox fields
          ``scale, pad_x, pad_y, orig_w, orig_h`` (they map boxes back only without augmentation).
    """

    def __init__(
        self,
        tasks: dict[str, CocoTask],
        images_dir: str | Path,
        size: int,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        """Index the union of the tasks' images.

        Args:
            tasks: Task name -> validated annotations.
            images_dir: Directory that ``file_name`` entries are relative to.
            size: Side of the square letterbox canvas.
            augment: Augmentation settings, or ``None`` for evaluation.
            seed: Base seed; item ``i`` in epoch ``e`` uses ``default_rng((seed, e, i))``.

        Raises:
            DataError: If there are no tasks or images, or two tasks disagree on an image's size.
        """
        if not tasks:
            raise DataError("MultiTaskDataset needs at least one task; pass {name: load_coco(...)}")
        self.tasks = dict(tasks)
        self.images_dir = Path(images_dir)
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        by_file: dict[str, dict[str, int]] = {}
        sizes: dict[str, tuple[int, int, str]] = {}
        for name, task in self.tasks.items():
            for image_id, im in task.images.items():
                by_file.setdefault(im.file_name, {})[name] = image_id
                prev = sizes.setdefault(im.file_name, (im.width, im.height, name))
                if prev[:2] != (im.width, im.height):
                    raise DataError(
                        f"{task.path}: image {im.file_name!r} is {im.width}x{im.height} here but "
                        f"{prev[0]}x{prev[1]} in task {prev[2]!r}; the files must agree"
                    )
        if not by_file:
            raise DataError(f"MultiTaskDataset: tasks {list(self.tasks)} list no images")
        self.file_names = sorted(by_file)
        self._ids = [by_file[f] for f in self.file_names]

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (call once per epoch for fresh, reproducible draws)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.file_names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Target | None], dict[str, Any]]:
        file_name = self.file_names[index]
        ids = self._ids[index]
        image = read_rgb(self.images_dir / file_name)  # (H, W, 3)
        canvas, info = letterbox(image, self.size)  # (S, S, 3)

        # Gather every task's boxes so one geometric transform moves them all.
        names = [n for n in self.tasks if n in ids]
        parts = [self.tasks[n].targets(ids[n]) for n in names]
        task_of = np.concatenate([np.full(len(p[1]), k, dtype=np.int64) for k, p in enumerate(parts)] or [[]])
        labels = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.int64)]).astype(np.int64)
        boxes = np.concatenate([p[0] for p in parts] or [np.zeros((0, 4), np.float32)])
        boxes = info.to_letterboxed(boxes) if len(boxes) else boxes.astype(np.float32)  # (N, 4)
        keep = np.arange(len(labels))
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            canvas, boxes, keep = apply_augment(self.augment, canvas, boxes, keep, rng)
        else:
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, self.size)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, self.size)

        targets: dict[str, Target | None] = {n: None for n in self.tasks}
        for k, n in enumerate(names):
            sel = task_of[keep] == k
            targets[n] = {
                "boxes": torch.from_numpy(np.ascontiguousarray(boxes[sel], dtype=np.float32)).reshape(-1, 4),
                "labels": torch.from_numpy(labels[keep][sel].copy()),
            }
        meta = {
            "file_name": file_name,
            "image_ids": {n: ids.get(n) for n in self.tasks},
            "scale": info.scale,
            "pad_x": info.pad_x,
            "pad_y": info.pad_y,
            "orig_w": info.orig_w,
            "orig_h": info.orig_h,
        }
        image_t = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))  # (3, S, S) uint8
        return image_t, targets, meta


def collate_multitask(
    batch: Sequence[tuple[torch.Tensor, dict[str, Target | None], dict[str, Any]]],
) -> tuple[torch.Tensor, dict[str, list[Target | None]], list[dict[str, Any]]]:
    """Collate :class:`MultiTaskDataset` items for a ``DataLoader``.

    Args:
        batch: Items ``(image [3, S, S], targets, meta)``.

    Returns:
        ``images`` uint8 ``[B, 3, S, S]``; ``targets`` task -> list of B targets (``None`` where the
        task does not cover that image); ``metas`` list of B meta dicts.
    """
    images = torch.stack([item[0] for item in batch])  # (B, 3, S, S)
    tasks = list(batch[0][1]) if batch else []
    targets = {t: [item[1][t] for item in batch] for t in tasks}
    metas = [item[2] for item in batch]
    return images, targets, metas


class ImageFolderDataset(Dataset):
    """Unlabelled images (distillation, calibration): items are uint8 ``[3, S, S]`` letterbox canvases."""

    def __init__(self, paths: str | Path | Sequence[str | Path], size: int) -> None:
        """Collect the image files.

        Args:
            paths: A directory (its image files, recursively, sorted) or a sequence of files.
            size: Side of the square letterbox canvas.

        Raises:
            DataError: If the directory does not exist, a file is missing, or nothing is found.
        """
        if isinstance(paths, (str, Path)):
            root = Path(paths)
            if not root.is_dir():
                raise DataError(f"{root}: not a directory of images; pass a folder or a list of files")
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files = [Path(p) for p in paths]
            absent = [str(p) for p in files if not p.is_file()]
            if absent:
                raise DataError(f"ImageFolderDataset: {len(absent)} file(s) missing, e.g. {absent[:3]}")
        if not files:
            raise DataError(f"ImageFolderDataset: no images ({', '.join(IMAGE_SUFFIXES)}) in {paths}")
        self.paths = files
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        canvas, _ = letterbox(read_rgb(self.paths[index]), self.size)  # (S, S, 3)
        return torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))  # (3, S, S) uint8
