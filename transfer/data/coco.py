"""COCO-format annotation reader with validation (numpy only; the torch datasets live in datasets.py).

``load_coco`` reads one task's annotation file and checks it thoroughly; every problem raises
:class:`~shared.errors.DataError` naming the file, the entry (``annotations[17] (id=42)``) and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from shared.artifacts import read_json
from shared.errors import DataError

BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image before it is rejected
_MAX_LISTED = 5  # missing image files named in one error message


class CocoImage(NamedTuple):
    """One ``images`` entry: the file (relative to the images directory) and its size in pixels."""

    file_name: str
    width: int
    height: int


class CocoAnnotation(NamedTuple):
    """One non-crowd annotation: ``bbox`` is (x, y, w, h) in original image pixels."""

    bbox: tuple[float, float, float, float]
    category_id: int


@dataclass(frozen=True)
class CocoTask:
    """One task's validated COCO annotations.

    Attributes:
        name: Task name (e.g. ``"signs"``).
        path: The annotation JSON file.
        images_dir: Directory that ``file_name`` entries are relative to.
        categories: ``(category_id, name)`` pairs sorted by id; label ``i`` is ``categories[i]``.
        images: Image id -> :class:`CocoImage`.
        annotations: Image id -> training annotations (``iscrowd=0``); every image id has a list.
        crowd: Image id -> ``iscrowd=1`` boxes (kept out of training targets; evaluation ignores them).
    """

    name: str
    path: Path
    images_dir: Path
    categories: tuple[tuple[int, str], ...]
    images: dict[int, CocoImage] = field(repr=False)
    annotations: dict[int, list[CocoAnnotation]] = field(repr=False)
    crowd: dict[int, list[CocoAnnotation]] = field(repr=False, default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Category names in label order."""
        return tuple(name for _, name in self.categories)

    @property
    def num_classes(self) -> int:
        """Number of categories."""
        return len(self.categories)

    @property
    def cat_id_to_label(self) -> dict[int, int]:
        """COCO category id -> contiguous label ``0..C-1``."""
        return {cat_id: label for label, (cat_id, _) in enumerate(self.categories)}

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        """Contiguous label ``0..C-1`` -> COCO category id."""
        return {label: cat_id for label, (cat_id, _) in enumerate(self.categories)}

    def targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Training targets of one image in original pixels.

        Args:
            image_id: An id from :attr:`images`.

        Returns:
            ``boxes [N, 4]`` float32 x1, y1, x2, y2 and ``labels [N]`` int64 contiguous labels.
        """
        anns = self.annotations.get(image_id, [])
        mapping = self.cat_id_to_label
        boxes = np.array([a.bbox for a in anns], dtype=np.float32).reshape(-1, 4)  # (N, 4) xywh
        boxes[:, 2:] += boxes[:, :2]
        labels = np.array([mapping[a.category_id] for a in anns], dtype=np.int64)
        return boxes, labels


def load_coco(
    json_path: str | Path,
    images_dir: str | Path,
    name: str | None = None,
    verify_images: bool = False,
) -> CocoTask:
    """Read and validate a COCO-format detection annotation file.

    Args:
        json_path: The annotation file (``images``, ``annotations``, ``categories``).
        images_dir: Directory that each image's ``file_name`` is relative to.
        name: Task name; defaults to the parent directory name for ``train.json`` / ``val.json``
            (the ``<task>/train.json`` layout), else the file stem.
        verify_images: Also open every image header with PIL (slower) to catch corrupt files.

    Returns:
        The validated :class:`CocoTask`.

    Raises:
        DataError: If the file or any entry is malformed, or image files are missing or unreadable.
    """
    path = Path(json_path)
    images_dir = Path(images_dir)
    if name is None:
        name = path.parent.name if path.stem in ("train", "val", "test") and path.parent.name else path.stem
    data = _read_json(path)
    categories = _parse_categories(path, data["categories"])
    images = _parse_images(path, data["images"])
    annotations, crowd = _parse_annotations(path, data["annotations"], images, {c for c, _ in categories})
    _check_image_files(path, images_dir, images, verify_images)
    return CocoTask(name, path, images_dir, categories, images, annotations, crowd)


def _read_json(path: Path) -> dict[str, Any]:
    """Load the file as a JSON object holding the three COCO lists."""
    data = read_json(path, "COCO annotation", error=DataError, fix="fix the file or re-export it as COCO JSON",
                     missing_fix="check the path")
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: top level must be a JSON object with images, annotations, categories; "
            f"got a {type(data).__name__}"
        )
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(
            f"{path}: missing top-level key(s) {missing}; a COCO file needs images, annotations and "
            "categories (use an empty list for no annotations)"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(f"{path}: top-level '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def _where(path: Path, section: str, index: int, entry: object) -> str:
    """Name an entry for messages: ``file: annotations[17] (id=42)``."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{path}: {section}[{index}]" + (f" (id={ident!r})" if ident is not None else "")


def _require(path: Path, section: str, index: int, entry: object, keys: tuple[str, ...]) -> dict[str, Any]:
    """Check ``entry`` is an object holding ``keys``; return it."""
    where = _where(path, section, index, entry)
    if not isinstance(entry, dict):
        raise DataError(f"{where}: must be a JSON object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}; every {section} entry needs {list(keys)}")
    return entry


def _int_id(where: str, key: str, value: object) -> int:
    """Return ``value`` as an int id or raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: '{key}' must be an integer, got {value!r}")
    return value


def _parse_categories(path: Path, entries: list[Any]) -> tuple[tuple[int, str], ...]:
    """Validate ``categories``; return ``(id, name)`` sorted by id."""
    if not entries:
        raise DataError(f"{path}: 'categories' is empty; list at least one {{'id': 1, 'name': ...}}")
    seen: dict[int, int] = {}
    out = []
    for i, entry in enumerate(entries):
        entry = _require(path, "categories", i, entry, ("id", "name"))
        where = _where(path, "categories", i, entry)
        cat_id = _int_id(where, "id", entry["id"])
        if not isinstance(entry["name"], str) or not entry["name"]:
            raise DataError(f"{where}: 'name' must be a non-empty string, got {entry['name']!r}")
        if cat_id in seen:
            raise DataError(
                f"{where}: duplicate category id {cat_id} (also categories[{seen[cat_id]}]); "
                "give every category a unique id"
            )
        seen[cat_id] = i
        out.append((cat_id, entry["name"]))
    return tuple(sorted(out))


def _parse_images(path: Path, entries: list[Any]) -> dict[int, CocoImage]:
    """Validate ``images``; return id -> :class:`CocoImage`."""
    images: dict[int, CocoImage] = {}
    index_of: dict[int, int] = {}
    files: dict[str, int] = {}
    for i, entry in enumerate(entries):
        entry = _require(path, "images", i, entry, ("id", "file_name", "width", "height"))
        where = _where(path, "images", i, entry)
        image_id = _int_id(where, "id", entry["id"])
        if image_id in images:
            raise DataError(
                f"{where}: duplicate image id {image_id} (also images[{index_of[image_id]}]); "
                "give every image a unique id"
            )
        file_name = entry["file_name"]
        if not isinstance(file_name, str) or not file_name:
            raise DataError(f"{where}: 'file_name' must be a non-empty string, got {file_name!r}")
        if file_name.startswith(("/", "\\")) or ".." in file_name.replace("\\", "/").split("/"):
            raise DataError(
                f"{where}: file_name {file_name!r} leaves the images directory; use a path relative to it"
            )
        if file_name in files:
            raise DataError(
                f"{where}: file_name {file_name!r} already used by images[{files[file_name]}]; "
                "list each image file once"
            )
        size = []
        for key in ("width", "height"):
            value = entry[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
                or value != int(value)
            ):
                raise DataError(
                    f"{where}: '{key}' must be a positive integer, got {value!r}; "
                    "write the image's size in pixels"
                )
            size.append(int(value))
        images[image_id] = CocoImage(file_name, size[0], size[1])
        index_of[image_id] = i
        files[file_name] = i
    return images


def _parse_bbox(where: str, value: object, image: CocoImage) -> tuple[float, float, float, float]:
    """Validate one ``bbox`` ([x, y, w, h], inside the image up to :data:`BOX_TOLERANCE`)."""
    ok = isinstance(value, (list, tuple)) and len(value) == 4
    ok = ok and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not ok:
        raise DataError(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height], got {value!r}")
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        raise DataError(
            f"{where}: bbox {list(value)} has non-positive width or height; "
            "remove the annotation or fix its size (COCO bbox is [x, y, width, height])"
        )
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > image.width + tol or y + h > image.height + tol:
        raise DataError(
            f"{where}: bbox {list(value)} lies outside its image {image.file_name!r} "
            f"({image.width}x{image.height}) by more than {tol:g} px; clip it to the image or check "
            "that bbox is [x, y, width, height] (not x1, y1, x2, y2)"
        )
    return x, y, w, h


def _parse_annotations(
    path: Path, entries: list[Any], images: dict[int, CocoImage], cat_ids: set[int]
) -> tuple[dict[int, list[CocoAnnotation]], dict[int, list[CocoAnnotation]]]:
    """Validate ``annotations``; return (training annotations, crowd boxes) per image id."""
    train: dict[int, list[CocoAnnotation]] = {image_id: [] for image_id in images}
    crowd: dict[int, list[CocoAnnotation]] = {image_id: [] for image_id in images}
    seen: dict[int, int] = {}
    for i, entry in enumerate(entries):
        entry = _require(path, "annotations", i, entry, ("id", "image_id", "category_id", "bbox"))
        where = _where(path, "annotations", i, entry)
        ann_id = _int_id(where, "id", entry["id"])
        if ann_id in seen:
            raise DataError(
                f"{where}: duplicate annotation id {ann_id} (also annotations[{seen[ann_id]}]); "
                "give every annotation a unique id"
            )
        seen[ann_id] = i
        image_id = _int_id(where, "image_id", entry["image_id"])
        if image_id not in images:
            raise DataError(
                f"{where}: image_id {image_id} is not in 'images'; add the image entry or "
                "remove the annotation"
            )
        cat_id = _int_id(where, "category_id", entry["category_id"])
        if cat_id not in cat_ids:
            raise DataError(
                f"{where}: unknown category_id {cat_id} (known: {sorted(cat_ids)}); "
                "add it to 'categories' or fix the id"
            )
        iscrowd = entry.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, float):
            raise DataError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
        ann = CocoAnnotation(_parse_bbox(where, entry["bbox"], images[image_id]), cat_id)
        (crowd if iscrowd else train)[image_id].append(ann)
    return train, crowd


def _check_image_files(path: Path, images_dir: Path, images: dict[int, CocoImage], verify: bool) -> None:
    """Every image file must exist (and, if ``verify``, have a readable header)."""
    if not images_dir.is_dir():
        raise DataError(
            f"{path}: images directory {images_dir} does not exist; pass the folder that "
            "file_name entries are relative to"
        )
    missing = [(i, im.file_name) for i, im in images.items() if not (images_dir / im.file_name).is_file()]
    if missing:
        listed = ", ".join(f"id={i} {f!r}" for i, f in missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise DataError(
            f"{path}: {len(missing)} image file(s) missing under {images_dir}: {listed}{more}; "
            "check images_dir or the file_name entries"
        )
    if not verify:
        return
    for image_id, im in images.items():
        file = images_dir / im.file_name
        try:
            with Image.open(file) as pil:
                size = pil.size
                pil.verify()
        except Exception as e:  # PIL raises many exception types for corrupt files
            raise DataError(
                f"{path}: images entry id={image_id}: {file} is not a readable image ({e}); "
                "re-export or remove it"
            ) from e
        if size != (im.width, im.height):
            raise DataError(
                f"{path}: images entry id={image_id}: {file} is {size[0]}x{size[1]} but the "
                f"entry says {im.width}x{im.height}; fix width/height"
            )


def __getattr__(name: str) -> Any:
    """Lazily re-export the torch datasets so ``from transfer.data.coco import MultiTaskDataset`` works."""
    if name in ("MultiTaskDataset", "ImageFolderDataset", "collate_multitask"):
        from transfer.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
