"""A detection task on real photographs, from the photos scikit-image ships (no download).

Each object is a real photographed object cut from one of scikit-image's photos (a cat's face,
an espresso cup, an astronaut's face, a motorcycle, a rocket and a model shuttle); each scene
places one to three of them, rescaled, flipped and colour-jittered, on a crop of another real
photo (brick, grass, gravel, the Hubble deep field, a retina, stained tissue, coins, a street
camera shot...). Pixels are real; only the composition is made up. A tenth of the images hold no
object (true negatives). Category ids are not ``1..K`` (``CATEGORY_IDS``), as in real datasets.

Layout (like :mod:`transfer.data.synth`, so it can share a data root with the synthetic tasks)::

    out_dir/images/<task>/{train,val}/<id>.jpg
    out_dir/<task>/{train,val}.json          # file_name relative to out_dir/images
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from tqdm import tqdm

from shared.artifacts import atomic_write_json
from shared.errors import ConfigError

#: Class -> (scikit-image loader name, ``(x1, y1, x2, y2)`` box of the object in that photo), one row per source.
SOURCES: dict[str, tuple[tuple[str, tuple[int, int, int, int]], ...]] = {
    "cat": (("chelsea", (40, 10, 400, 300)),),
    "cup": (("coffee", (170, 18, 425, 310)),),
    "face": (("astronaut", (150, 15, 305, 180)),),
    "motorcycle": (("stereo_motorcycle", (90, 95, 690, 450)),),
    "rocket": (("rocket", (300, 125, 345, 410)), ("astronaut", (355, 0, 470, 285))),
}
CLASSES: tuple[str, ...] = tuple(SOURCES)
#: COCO category id of each class (deliberately not 1..K).
CATEGORY_IDS: dict[str, int] = {"cat": 17, "cup": 47, "face": 91, "motorcycle": 4, "rocket": 5}
#: Photos used as backgrounds (none holds an object of :data:`CLASSES`).
BACKGROUNDS: tuple[str, ...] = (
    "brick", "grass", "gravel", "hubble_deep_field", "retina", "immunohistochemistry", "coins", "camera",
    "moon", "page", "clock", "cell",
)  # fmt: skip
EMPTY_FRACTION = 0.1  # scenes without objects
_SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class PhotoTaskSummary:
    """What :func:`generate_photo_task` wrote.

    Attributes:
        task: Task name.
        images_dir: Directory the ``file_name`` entries are relative to (``out_dir/images``).
        train_json: Train annotation file.
        val_json: Val annotation file.
        num_train: Train images.
        num_val: Val images.
        num_objects: Annotated objects over train + val.
        seconds: Wall time of the generation.
    """

    task: str
    images_dir: Path
    train_json: Path
    val_json: Path
    num_train: int
    num_val: int
    num_objects: int
    seconds: float


@cache
def _photo(name: str) -> np.ndarray:
    """scikit-image photo ``name`` as uint8 RGB ``[H, W, 3]``."""
    try:
        import skimage.data
    except ImportError as err:
        raise ConfigError("the photo task needs scikit-image's photos: pip install 'scikit-image>=0.22'") from err

    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        image = image[0]  # (left, right, disparity): the left view
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (255 * (image.astype(np.float64) / max(float(image.max()), 1e-9))).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A random square crop of a background photo, resized to ``size`` and maybe flipped."""
    photo = _photo(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.5, 1.0) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def _instance(rng: np.random.Generator, label: int, size: int) -> Image.Image:
    """One augmented view of class ``label``: its box jittered by up to 6 %, rescaled, flipped, recoloured."""
    name, (x1, y1, x2, y2) = SOURCES[CLASSES[label]][rng.integers(len(SOURCES[CLASSES[label]]))]
    photo = _photo(name)
    bw, bh = x2 - x1, y2 - y1
    jx, jy = (rng.uniform(-0.06, 0.06, 2) * [bw, bh]).astype(int), (rng.uniform(-0.06, 0.06, 2) * [bw, bh]).astype(int)
    h, w = photo.shape[:2]
    box = (max(0, x1 + jx[0]), max(0, y1 + jy[0]), min(w, x2 + jx[1]), min(h, y2 + jy[1]))
    crop = Image.fromarray(photo).crop(box)
    long_side = rng.uniform(0.22, 0.6) * size
    scale = long_side / max(crop.size) * np.exp(rng.uniform(-0.1, 0.1, 2))  # slight aspect jitter
    crop = crop.resize((max(8, int(crop.width * scale[0])), max(8, int(crop.height * scale[1]))), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Color(crop).enhance(rng.uniform(0.6, 1.4))


def render_photo_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One scene: uint8 RGB ``[size, size, 3]`` and its objects as ``(label, [x, y, w, h])``.

    Objects overlap each other by at most a third of the smaller box (placement retries, then skips).
    """
    canvas = _background(rng, size)
    objects: list[tuple[int, list[float]]] = []
    count = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, 4))
    for _ in range(count):
        label = int(rng.integers(len(CLASSES)))
        inst = _instance(rng, label, size)
        w, h = min(inst.width, size), min(inst.height, size)
        for _attempt in range(20):
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if all(_overlap((x, y, w, h), b) <= 1 / 3 for _, b in objects):
                canvas.paste(inst.crop((0, 0, w, h)), (x, y))
                objects.append((label, [float(x), float(y), float(w), float(h)]))
                break
    return np.asarray(canvas), objects


def _overlap(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    """Intersection of two ``[x, y, w, h]`` boxes over the smaller one's area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return 0.0 if iw <= 0 or ih <= 0 else iw * ih / min(a[2] * a[3], b[2] * b[3])


def generate_photo_task(
    out_dir: str | Path, task: str = "photos", seed: int = 0, num_train: int = 400, num_val: int = 100,
    image_size: int = 320,
) -> PhotoTaskSummary:
    """Write the real-photo detection task ``task`` under ``out_dir`` (byte-identical for a seed).

    Args:
        out_dir: Data root (created); its ``images/`` may already hold other tasks' images.
        task: Task name (directory of its json files and of its images).
        seed: Master seed; image ``i`` of split ``s`` uses ``default_rng((seed, s, i))``.
        num_train: Training images.
        num_val: Validation images.
        image_size: Side of the square images (objects are 22-60 % of it on their long side).

    Returns:
        A :class:`PhotoTaskSummary`.

    Raises:
        ConfigError: A count below 1 (train) or 0 (val), or ``image_size`` below 96.
    """
    if num_train < 1 or num_val < 0:
        raise ConfigError(f"photo task counts must be num_train >= 1 and num_val >= 0; got {num_train}, {num_val}")
    if image_size < 96:
        raise ConfigError(f"photo task image_size must be >= 96 (objects need room), got {image_size}")
    start = time.perf_counter()
    out = Path(out_dir)
    images_dir = out / "images"
    paths, num_objects = {}, 0
    with tqdm(total=num_train + num_val, desc=f"photos ({task})", unit="img", disable=None) as bar:
        for split, n in (("train", num_train), ("val", num_val)):
            (images_dir / task / split).mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
            for i in range(n):
                image, objects = render_photo_scene(np.random.default_rng((seed, _SPLITS[split], i)), image_size)
                image_id, file_name = i + 1, f"{task}/{split}/{i + 1:06d}.jpg"
                Image.fromarray(image).save(images_dir / file_name, quality=92)
                images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
                for label, bbox in objects:
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": bbox,
                                        "category_id": CATEGORY_IDS[CLASSES[label]], "area": bbox[2] * bbox[3],
                                        "iscrowd": 0})
                bar.update()
            categories = [{"id": CATEGORY_IDS[c], "name": c, "supercategory": "photo"} for c in CLASSES]
            paths[split] = out / task / f"{split}.json"
            atomic_write_json(paths[split], {
                "info": {"description": f"polyhead real-photo objects: {task}", "version": "1"},
                "images": images, "annotations": annotations, "categories": categories})
            num_objects += len(annotations)
    return PhotoTaskSummary(task, images_dir, paths["train"], paths["val"], num_train, num_val, num_objects,
                            time.perf_counter() - start)
