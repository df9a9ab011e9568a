"""Robustness of a trunk variant and its heads under common corruptions: COCO-C's mPC and rPC.

Every task's first ``max_images`` validation images are corrupted by each corruption of
:mod:`transfer.evaluation.corruptions` at each severity (on the original image, then letterboxed),
the exported trunk and heads run on them with onnxruntime, and COCO mAP@[.5:.95] is measured on the
same images, clean and corrupted. The trunk runs once per image and condition; every head reads
its features (images shared by several tasks are corrupted and run once).

The ``robustness`` entry written into ``variant.json``::

    {"clean_map": float, "mpc": float, "rpc": float | None,
     "per_corruption": {name: {"1": map, "2": map, "3": map}},
     "per_task": {task: {"clean_map", "mpc", "rpc", "per_corruption", "images"}},
     "images": int, "seed": int, "max_images": int}

``mpc`` (mean performance under corruption) is the mean mAP over corruptions and severities;
``rpc`` = ``mpc / clean_map`` (``None`` when the clean mAP is 0). At the top, ``clean_map`` and
``per_corruption`` are means over tasks, ``mpc`` the mean of that ``per_corruption`` and ``rpc`` its
ratio to that ``clean_map``. ``clean_map`` is measured on the same capped images, so it may differ
from the full split's ``map``. ``images``: distinct images corrupted per condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.artifacts import atomic_write_json, read_json
from shared.errors import ConfigError
from shared.letterbox import LetterboxInfo, letterbox
from shared.workspace import Workspace
from transfer.data.coco import CocoTask
from transfer.data.images import read_rgb
from transfer.evaluation.coco_map import ImageDetections, coco_map
from transfer.evaluation.corruptions import CORRUPTIONS, SEVERITIES, check_corruptions, corrupt
from transfer.export.onnx_graphs import session

CLEAN = ("clean", 0)  # the condition without corruption


@dataclass(frozen=True)
class RobustnessSettings:
    """What a robustness measurement covers.

    Attributes:
        corruptions: Names from :data:`~transfer.evaluation.corruptions.CORRUPTIONS` (each at severities 1..3).
        max_images: First validation images per task (by image id) that are evaluated.
        seed: Base seed of the per-image noise.
        batch_size: Images per onnxruntime call.
        threads: onnxruntime intra-op threads of the trunk session.
    """

    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    max_images: int = 100
    seed: int = 0
    batch_size: int = 16
    threads: int = 2

    def __post_init__(self) -> None:
        """Check the names and the image cap (errors name the choices)."""
        object.__setattr__(self, "corruptions", check_corruptions(list(self.corruptions)))
        if self.max_images < 1:
            raise ConfigError(f"max_images must be at least 1, got {self.max_images}")


def first_images(task: CocoTask, n: int) -> CocoTask:
    """``task`` cut to its first ``n`` images by id (annotations and crowd boxes of those only)."""
    keep = sorted(task.images)[:n]
    return replace(task, images={i: task.images[i] for i in keep},
                   annotations={i: task.annotations.get(i, []) for i in keep},
                   crowd={i: task.crowd[i] for i in keep if i in task.crowd})


def summarise(maps: Mapping[str, Mapping[tuple[str, int], float]], images: Mapping[str, int], distinct: int,
              seed: int, max_images: int) -> dict:
    """The ``robustness`` entry (module docstring) from mAPs per task and condition.

    Args:
        maps: Task -> ``{CLEAN: map, (corruption, severity): map, ...}``; every task the same conditions.
        images: Task -> images evaluated.
        distinct: Distinct images over all tasks (the top-level ``images``).
        seed: The noise seed.
        max_images: The per-task cap.
    """
    per_task = {}
    for task, by_condition in maps.items():
        per = {}
        for (name, severity), value in by_condition.items():
            if (name, severity) != CLEAN:
                per.setdefault(name, {})[str(severity)] = float(value)
        per_task[task] = _scores(float(by_condition[CLEAN]), per) | {"images": int(images[task])}
    first = next(iter(per_task.values()))["per_corruption"]
    mean_per = {c: {s: float(np.mean([t["per_corruption"][c][s] for t in per_task.values()])) for s in sev}
                for c, sev in first.items()}
    clean = float(np.mean([t["clean_map"] for t in per_task.values()]))
    return _scores(clean, mean_per) | {"per_task": per_task, "images": int(distinct), "seed": int(seed),
                                       "max_images": int(max_images)}


def _scores(clean: float, per: dict[str, dict[str, float]]) -> dict:
    """``clean_map``, ``mpc``, ``rpc`` and ``per_corruption`` from the clean mAP and the corrupted ones."""
    mpc = float(np.mean([v for sev in per.values() for v in sev.values()]))
    return {"clean_map": clean, "mpc": mpc, "rpc": mpc / clean if clean > 0 else None, "per_corruption": per}


def measure_robustness(
    trunk_path: str | Path, heads: Mapping[str, str | Path], vals: Mapping[str, CocoTask], input_size: int,
    settings: RobustnessSettings | None = None, progress: bool = False,
) -> dict:
    """COCO mAP of every head in ``heads`` on ``trunk_path``, clean and under every corruption and severity.

    Args:
        trunk_path: A variant's ``model.onnx`` (input ``images`` ``(B, 3, S, S)`` uint8).
        heads: Task -> head ``model.onnx`` (inputs: the trunk's feature maps).
        vals: Task -> validation split (every key of ``heads`` must be here).
        input_size: The trunk's ``S``.
        settings: Corruptions, image cap, seed (default: all five, 100 images per task).
        progress: A tqdm bar over the conditions.

    Returns:
        The ``robustness`` entry (module docstring).
    """
    settings = settings or RobustnessSettings()
    tasks = {t: first_images(vals[t], settings.max_images) for t in heads}
    trunk = session(trunk_path, threads=settings.threads)
    head_sessions = {t: session(p) for t, p in heads.items()}
    feat_names = [i.name for i in next(iter(head_sessions.values())).get_inputs()]
    files = {}  # path -> file name (the seed of its noise): images shared by tasks are run once
    for task in tasks.values():
        for im in task.images.values():
            files.setdefault(task.images_dir / im.file_name, im.file_name)
    row = {path: k for k, path in enumerate(files)}
    originals = [read_rgb(path) for path in files]  # (H, W, 3) uint8 each
    conditions = [CLEAN, *((c, s) for c in settings.corruptions for s in SEVERITIES)]
    maps: dict[str, dict[tuple[str, int], float]] = {t: {} for t in tasks}
    for condition in tqdm(conditions, desc=f"robustness {Path(trunk_path).parent.name}", disable=not progress,
                          leave=False):
        feats, infos = _features(trunk, feat_names, originals, list(files.values()), condition, input_size, settings)
        for t, task in tasks.items():
            rows = [row[task.images_dir / im.file_name] for im in task.images.values()]
            dets = _detect(head_sessions[t], feat_names, feats, rows, infos, list(task.images), settings.batch_size)
            maps[t][condition] = coco_map(task, dets)["map"]
    images = {t: len(task.images) for t, task in tasks.items()}
    return summarise(maps, images, len(files), settings.seed, settings.max_images)


def _features(trunk, feat_names: list[str], originals: list[np.ndarray], file_names: list[str],
              condition: tuple[str, int], size: int, settings: RobustnessSettings
              ) -> tuple[dict[str, np.ndarray], list[LetterboxInfo]]:
    """Trunk features ``{name: (N, C, h, w)}`` of every image under ``condition``, and the letterbox of each."""
    canvases, infos = [], []
    for image, file_name in zip(originals, file_names):
        if condition != CLEAN:
            image = corrupt(image, *condition, seed=settings.seed, file_name=file_name)
        canvas, info = letterbox(image, size)  # (S, S, 3)
        canvases.append(canvas.transpose(2, 0, 1))
        infos.append(info)
    batches = []
    for start in range(0, len(canvases), settings.batch_size):
        batch = np.ascontiguousarray(np.stack(canvases[start:start + settings.batch_size]))  # (B, 3, S, S) uint8
        batches.append(trunk.run(feat_names, {"images": batch}))
    return {n: np.concatenate([b[k] for b in batches]) for k, n in enumerate(feat_names)}, infos


def _detect(head, feat_names: list[str], feats: dict[str, np.ndarray], rows: list[int], infos: list[LetterboxInfo],
            image_ids: list[int], batch_size: int) -> list[ImageDetections]:
    """Run one head over the features of ``rows`` and map its boxes back to original pixels."""
    out = []
    for start in range(0, len(rows), batch_size):
        sel = rows[start:start + batch_size]
        num, boxes, scores, classes = head.run(["num_dets", "boxes", "scores", "classes"],
                                               {n: feats[n][sel] for n in feat_names})
        for i, r in enumerate(sel):
            k = int(num[i, 0])
            b = infos[r].to_original(boxes[i, :k]) if k else boxes[i, :0].reshape(0, 4)
            out.append(ImageDetections(image_ids[start + i], b, scores[i, :k], classes[i, :k]))
    return out


def record_robustness(variant_json: str | Path, entry: dict) -> None:
    """Set ``robustness`` in a ``variant.json`` (every other key kept; atomic rewrite)."""
    meta = read_json(variant_json, "trunk variant metadata", expect=dict)
    meta["robustness"] = entry
    atomic_write_json(variant_json, meta)


def measure_variant(ws: Workspace, variant: str, vals: Mapping[str, CocoTask],
                    settings: RobustnessSettings | None = None, progress: bool = False) -> dict:
    """:func:`measure_robustness` of workspace variant ``variant`` with every head in ``vals``; recorded.

    Returns:
        The entry, also written into ``trunk/<variant>/variant.json`` under ``robustness``.
    """
    path = ws.variant(variant) / "variant.json"
    input_size = int(read_json(path, "trunk variant metadata", expect=dict)["input_size"])
    heads = {t: ws.head(t) / "model.onnx" for t in vals}
    entry = measure_robustness(ws.variant(variant) / "model.onnx", heads, vals, input_size, settings, progress)
    record_robustness(path, entry)
    return entry


def is_current(meta: Mapping, tasks: list[str], settings: RobustnessSettings) -> bool:
    """Whether ``meta``'s ``robustness`` entry covers ``tasks`` and ``settings`` (so it need not be measured again)."""
    entry = meta.get("robustness")
    if not isinstance(entry, Mapping) or not isinstance(entry.get("per_task"), Mapping):
        return False
    return (entry.get("seed") == settings.seed and entry.get("max_images") == settings.max_images
            and set(entry["per_task"]) == set(tasks)
            and set(entry.get("per_corruption", ())) == set(settings.corruptions))
