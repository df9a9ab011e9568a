"""Synthetic multi-task scenes in COCO format, for demos and tests.

Every image mixes objects of several tasks on a varied background; each task gets its own
``<task>/train.json`` and ``<task>/val.json`` listing *all* images (an image without objects of a
task is a true negative for it). The first three tasks of :data:`TASKS` train the trunk; the fourth
(``shapes``) is the task added later by head-only training. Output is byte-identical for a seed.

Layout::

    out_dir/images/{train,val,unlabeled}/<id>.jpg
    out_dir/<task>/{train,val}.json          # file_name relative to out_dir/images
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shared.artifacts import atomic_write_json
from shared.errors import ConfigError
from transfer.data.synth_painters import PAINTERS, background

TASKS: tuple[str, ...] = ("signs", "vehicles", "people", "shapes")
CLASSES: dict[str, tuple[str, ...]] = {t: tuple(name for name, _, _ in PAINTERS[t]) for t in TASKS}
TRUNK_TASKS: tuple[str, ...] = TASKS[:3]
NEW_TASK: str = TASKS[3]

MIN_VISIBLE = 0.4  # objects more than 60 % hidden by later ones are left out entirely
MAX_OVERLAP = 0.35  # placement rejects a spot covering more than this fraction of a placed box
_SPLITS = {"train": 0, "val": 1, "unlabeled": 2}


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote.

    Attributes:
        out_dir: Root of the data set.
        images_dir: Directory ``file_name`` entries are relative to (``out_dir/images``).
        tasks: Task names in order (trunk tasks first, the later task last).
        classes: Task -> class names (category ids are 1..C in this order).
        train_json: Task -> train annotation file.
        val_json: Task -> val annotation file.
        unlabeled_dir: Directory of unlabelled images, or ``None`` if none were made.
        num_train: Train images.
        num_val: Val images.
        num_unlabeled: Unlabelled images.
        num_objects: Task -> annotated objects over train + val.
        seconds: Wall time of the generation.
    """

    out_dir: Path
    images_dir: Path
    tasks: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]
    train_json: dict[str, Path]
    val_json: dict[str, Path]
    unlabeled_dir: Path | None
    num_train: int
    num_val: int
    num_unlabeled: int
    num_objects: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class SynthObject:
    """One placed object: task, class index and ``[x, y, w, h]`` box of the whole object."""

    task: str
    label: int
    bbox: tuple[int, int, int, int]


def generate(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 150,
    num_unlabeled: int = 0,
    image_size: int = 256,
) -> SynthSummary:
    """Write a synthetic multi-task detection data set.

    Args:
        out_dir: Output directory (created; existing files with the same names are overwritten).
        seed: Master seed; image ``i`` of split ``s`` uses ``default_rng((seed, s, i))``.
        num_train: Number of training images.
        num_val: Number of validation images.
        num_unlabeled: Extra unlabelled images under ``images/unlabeled/``.
        image_size: Side of the square images (object sizes scale with ``image_size / 256``).

    Returns:
        A :class:`SynthSummary` with the written paths and counts.

    Raises:
        ConfigError: If a count is negative, ``num_train`` is 0, or ``image_size`` < 128.
    """
    if num_train < 1 or num_val < 0 or num_unlabeled < 0:
        raise ConfigError(
            f"synth counts must be num_train >= 1, num_val/num_unlabeled >= 0; got "
            f"{num_train}, {num_val}, {num_unlabeled}"
        )
    if image_size < 128:
        raise ConfigError(f"synth image_size must be >= 128 (objects up to 110 px at 256), got {image_size}")
    start = time.perf_counter()
    out = Path(out_dir)
    images_dir = out / "images"
    counts = {"train": num_train, "val": num_val, "unlabeled": num_unlabeled}
    for split, n in counts.items():
        if n:
            (images_dir / split).mkdir(parents=True, exist_ok=True)
    scenes: dict[str, list[tuple[int, str, list[SynthObject]]]] = {"train": [], "val": []}
    next_id = 1
    with tqdm(total=sum(counts.values()), desc="synth", unit="img", disable=None) as bar:
        for split, n in counts.items():
            for i in range(n):
                rng = np.random.default_rng((seed, _SPLITS[split], i))
                image, objects = render_scene(rng, image_size, with_objects=split != "unlabeled")
                file_name = f"{split}/{next_id:06d}.jpg"
                Image.fromarray(image).save(images_dir / file_name, quality=95, subsampling=0)
                if split in scenes:
                    scenes[split].append((next_id, file_name, objects))
                next_id += 1
                bar.update()
    train_json, val_json, num_objects = {}, {}, dict.fromkeys(TASKS, 0)
    for task in TASKS:
        for split, paths in (("train", train_json), ("val", val_json)):
            coco = _to_coco(task, scenes[split], image_size)
            num_objects[task] += len(coco["annotations"])
            paths[task] = out / task / f"{split}.json"
            atomic_write_json(paths[task], coco, indent=None, trailing_newline=False)  # compact, no final newline
    return SynthSummary(
        out_dir=out,
        images_dir=images_dir,
        tasks=TASKS,
        classes=dict(CLASSES),
        train_json=train_json,
        val_json=val_json,
        unlabeled_dir=images_dir / "unlabeled" if num_unlabeled else None,
        num_train=num_train,
        num_val=num_val,
        num_unlabeled=num_unlabeled,
        num_objects=num_objects,
        seconds=time.perf_counter() - start,
    )


def render_scene(
    rng: np.random.Generator, size: int, with_objects: bool = True
) -> tuple[np.ndarray, list[SynthObject]]:
    """Draw one scene.

    Args:
        rng: Source of randomness (one per image).
        size: Image side in pixels.
        with_objects: ``False`` still draws the objects (unlabelled images look like the rest) but
            the caller discards the annotations; kept for symmetry of the random stream.

    Returns:
        ``[size, size, 3]`` uint8 RGB image and the visible objects (full-object boxes).
    """
    bg = background(rng, size)  # (S, S, 3)
    # Three or four tasks per image; one to three objects each, in random depth order.
    present = list(TASKS) if rng.random() < 0.55 else [str(t) for t in rng.permutation(TASKS)[:3]]
    wanted: list[tuple[str, int]] = []
    for task in present:
        for _ in range(int(rng.integers(1, 4))):
            wanted.append((task, int(rng.integers(len(PAINTERS[task])))))
    order = rng.permutation(len(wanted))
    placed: list[tuple[SynthObject, np.ndarray, Image.Image]] = []  # object, mask (h, w), RGBA patch
    for k in order:
        task, label = wanted[k]
        _, painter, (lo, hi) = PAINTERS[task][label]
        longest = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * size / 256
        patch = painter(rng, longest)
        angle = _angle(rng, task)
        if angle:
            patch = patch.rotate(angle, resample=Image.BICUBIC, expand=True)
        alpha = np.asarray(patch.getchannel("A"))
        ys, xs = np.nonzero(alpha >= 128)
        if len(xs) == 0:
            continue
        patch = patch.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        mask = np.asarray(patch.getchannel("A")) >= 128  # (h, w)
        spot = _find_spot(rng, mask.shape, [p[0].bbox for p in placed], size)
        if spot is not None:
            obj = SynthObject(task, label, (spot[0], spot[1], mask.shape[1], mask.shape[0]))
            placed.append((obj, mask, patch))

    owner = np.full((size, size), -1, dtype=np.int32)  # (S, S) index of the top-most object
    for i, (obj, mask, _) in enumerate(placed):
        x, y, w, h = obj.bbox
        owner[y : y + h, x : x + w][mask] = i
    visible = [(owner == i).sum() / max(int(mask.sum()), 1) for i, (_, mask, _) in enumerate(placed)]
    kept = [p for p, v in zip(placed, visible, strict=True) if v >= MIN_VISIBLE]

    canvas = Image.fromarray(bg)
    for obj, _, patch in kept:
        canvas.paste(patch, obj.bbox[:2], patch)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * rng.uniform(2.0, 7.0)  # sensor noise
    image = np.asarray(canvas, np.float32) + noise
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return image, [obj for obj, _, _ in kept] if with_objects else []


def _angle(rng: np.random.Generator, task: str) -> float:
    """Rotation in degrees: shapes spin freely, signs tilt, vehicles and people barely."""
    spread = {"shapes": 180.0, "signs": 15.0, "vehicles": 5.0, "people": 8.0}[task]
    return float(rng.uniform(-spread, spread))


def _find_spot(
    rng: np.random.Generator, shape: tuple[int, int], boxes: list[tuple[int, int, int, int]], size: int
) -> tuple[int, int] | None:
    """A top-left corner keeping the object inside and overlapping placed boxes only a little."""
    h, w = shape
    if w > size or h > size:
        return None
    for _ in range(30):
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        ok = True
        for bx, by, bw, bh in boxes:
            iw = min(x + w, bx + bw) - max(x, bx)
            ih = min(y + h, by + bh) - max(y, by)
            if iw > 0 and ih > 0 and iw * ih > MAX_OVERLAP * min(w * h, bw * bh):
                ok = False
                break
        if ok:
            return x, y
    return None


def _to_coco(task: str, scenes: list[tuple[int, str, list[SynthObject]]], size: int) -> dict:
    """One task's COCO dict: every image, that task's objects, categories 1..C."""
    images = [{"id": i, "file_name": f, "width": size, "height": size} for i, f, _ in scenes]
    annotations = []
    for image_id, _, objects in scenes:
        for obj in objects:
            if obj.task != task:
                continue
            x, y, w, h = obj.bbox
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.label + 1,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": name, "supercategory": task} for k, name in enumerate(CLASSES[task])]
    return {
        "info": {"description": f"polyhead synthetic scenes: {task}", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
