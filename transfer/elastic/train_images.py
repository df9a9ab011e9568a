"""The images the supernet is distilled on: every head's training images, shared out by head, then unlabelled ones.

The sandwich loss needs no labels, only images the reference trunk's features are matched on. A
head added later by `add-task` reads the same ``p3,p4,p5`` contract, but its images can look
nothing like the trained tasks' (real photographs beside synthetic scenes): distilled on the
trained tasks' images alone, sub-networks lost 2-8 mAP points on such a head while staying
within 1 point on the others (docs/benchmarks.md, elastic trunk, eighth run). So every head's
training images are drawn from, in proportion to the heads they train (the configured tasks'
images, often one set shared by several tasks, count once per task), taken in turn so that a
limit keeps the proportion; unlabelled images (``<images>/unlabeled``) come last.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from shared.artifacts import read_json
from shared.workspace import Workspace
from transfer.data.coco import load_coco

_SKIPPED = "supernet images: head {task!r} records no training annotations ({why}); its images are not distilled on"


class TrainImagesWarning(UserWarning):
    """A head's training images could not be listed for the supernet; the line names the head and why."""


def _task_files(ws: Workspace, cfg, root: Path) -> tuple[list[list[Path]], list[int]]:
    """``(groups of image files, heads each group trains)``: the configured tasks, then each added head."""
    from transfer.training.loop import load_tasks

    trained: set[Path] = set()
    for task in load_tasks(cfg, root, "train").values():
        trained |= {task.images_dir / im.file_name for im in task.images.values()}
    groups, weights = [sorted(trained)], [len(cfg.data.tasks)]
    for name in ws.tasks():
        if name in cfg.data.tasks:
            continue
        meta = read_json(ws.head(name) / "head.json")
        train_json = Path(meta.get("train_json") or root / name / "train.json")
        if not train_json.is_file():
            warnings.warn(_SKIPPED.format(task=name, why=f"{train_json} not found"), TrainImagesWarning, stacklevel=3)
            continue
        with warnings.catch_warnings():  # add-task already reported the file's fixes
            warnings.simplefilter("ignore")
            task = load_coco(train_json, Path(meta.get("images") or root / cfg.data.images), name=name)
        files = sorted({task.images_dir / im.file_name for im in task.images.values()} - trained)
        if files:
            groups.append(files)
            weights.append(1)
    return groups, weights


def supernet_train_images(ws: Workspace, cfg, root: Path, limit: int | None = None) -> list[Path]:
    """Image files to distil the supernet on (see the module docstring), at most ``limit``.

    Args:
        ws: The workspace (its heads).
        cfg: Its configuration (the trained tasks, the images folder).
        root: Its data root.
        limit: Most images (``None``: all).

    Returns:
        Files in draw order: per round, ``weight`` files from each head group in turn, until the
        groups run out; then the unlabelled ones.
    """
    groups, weights = _task_files(ws, cfg, root)
    order: list[Path] = []
    cursors = [0] * len(groups)
    while any(c < len(g) for c, g in zip(cursors, groups, strict=True)):
        for i, (group, weight) in enumerate(zip(groups, weights, strict=True)):
            order += group[cursors[i]:cursors[i] + weight]
            cursors[i] += weight
    unlabeled = root / cfg.data.images / "unlabeled"
    order += sorted(unlabeled.rglob("*.jpg")) if unlabeled.is_dir() else []
    return order if limit is None else order[:limit]
