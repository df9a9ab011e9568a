"""COCO-format annotation reader with validation (numpy only; the torch datasets live in datasets.py).

``load_coco`` reads one task's annotation file and checks it thoroughly; every problem raises
:class:`~shared.errors.DataError` naming the file, the entry (``annotations[17] (id=42)``) and the fix.
It also opens every image header (:mod:`transfer.data.images`) and fits boxes to their images, counting
the fixes in one :class:`DataWarning` line per file (``strict=True`` refuses them instead).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from shared.artifacts import read_json
from shared.errors import DataError
from transfer.data.images import check_image_files, listed

BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image before clipping it counts as a fix


class DataWarning(UserWarning):
    """A dataset was loaded with fixes (clipped or dropped boxes, corrected sizes); the line counts them."""


class CocoImage(NamedTuple):
    """One ``images`` entry: the file (relative to the images directory) and its size in pixels."""

    file_name: str
    width: int
    height: int


class CocoAnnotation(NamedTuple):
    """One annotation: ``bbox`` is (x, y, w, h) in displayed image pixels, inside the image, w, h > 0."""

    bbox: tuple[float, float, float, float]
    category_id: int
    id: int = -1


@dataclass(frozen=True)
class LoadFixes:
    """What :func:`load_coco` corrected (all empty for a clean file, and always under ``strict``).

    Attributes:
        reoriented: Image ids whose width/height were declared unrotated (the displayed size is used).
        clipped: Annotation ids whose box stuck out of the image by more than :data:`BOX_TOLERANCE`.
        dropped: Annotation ids whose box had no area inside the image (left out of the task).
    """

    reoriented: tuple[int, ...] = ()
    clipped: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()

    def summary(self, path: Path) -> str | None:
        """One line counting the fixes (``None`` if there were none)."""
        parts = [f"{n} {one if n == 1 else many} {what}" for n, one, many, what in (
            (len(self.clipped), "box", "boxes", "clipped to their image"),
            (len(self.dropped), "degenerate box", "degenerate boxes", "dropped"),
            (len(self.reoriented), "image", "images", "declared unrotated (EXIF-oriented size used)"),
        ) if n]
        if not parts:
            return None
        ids = [*self.clipped, *self.dropped]
        shown = ("annotation", ids) if ids else ("image", list(self.reoriented))
        where = f"{shown[0]} id{'s' if len(shown[1]) > 1 else ''} {listed(shown[1])}"
        return f"{path}: {', '.join(parts)} ({where}); strict=True (--strict) refuses such files"


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
        fixes: What loading corrected (see :class:`LoadFixes`).
    """

    name: str
    path: Path
    images_dir: Path
    categories: tuple[tuple[int, str], ...]
    images: dict[int, CocoImage] = field(repr=False)
    annotations: dict[int, list[CocoAnnotation]] = field(repr=False)
    crowd: dict[int, list[CocoAnnotation]] = field(repr=False, default_factory=dict)
    fixes: LoadFixes = field(default_factory=LoadFixes)

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
    strict: bool = False,
) -> CocoTask:
    """Read and validate a COCO-format detection annotation file and the headers of its images.

    Every listed image file is opened lazily (size and EXIF, no pixels). Fixes are counted in
    :attr:`CocoTask.fixes` and one :class:`DataWarning` line: boxes sticking out of their image are
    clipped to it, boxes with no area inside it dropped, and sizes declared unrotated (the raw sensor
    size of an EXIF-rotated photo) replaced by the displayed size.

    Args:
        json_path: The annotation file (``images``, ``annotations``, ``categories``).
        images_dir: Directory that each image's ``file_name`` is relative to (sub-folders allowed).
        name: Task name; defaults to the parent directory name for ``train.json`` / ``val.json``
            (the ``<task>/train.json`` layout), else the file stem.
        verify_images: Also decode every image (slow) to catch truncated files.
        strict: Refuse the file instead of fixing boxes or sizes (the error names the first entries).

    Returns:
        The validated :class:`CocoTask`; its boxes lie inside their images.

    Raises:
        DataError: If the file or any entry is malformed, image files are missing or unreadable (one
            error listing them), a declared size disagrees with its file, or ``strict`` and a fix is needed.
    """
    path = Path(json_path)
    images_dir = Path(images_dir)
    if name is None:
        name = path.parent.name if path.stem in ("train", "val", "test") and path.parent.name else path.stem
    data = _read_json(path)
    categories = _parse_categories(path, data["categories"])
    images = _parse_images(path, data["images"])
    entries = _parse_annotations(path, data["annotations"], images, {c for c, _ in categories})
    reoriented: list[int] = []
    declared = {i: (im.file_name, im.width, im.height) for i, im in images.items()}
    for image_id, (w, h) in check_image_files(path, images_dir, declared, strict, verify_images).items():
        images[image_id] = images[image_id]._replace(width=w, height=h)
        reoriented.append(image_id)
    annotations, crowd, fixes = _fit_boxes(path, entries, images, strict)
    fixes = LoadFixes(tuple(reoriented), fixes.clipped, fixes.dropped)
    line = fixes.summary(path)
    if line is not None:
        warnings.warn(line, DataWarning, stacklevel=1)  # one location: a split loaded twice warns once
    return CocoTask(name, path, images_dir, categories, images, annotations, crowd, fixes)


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


def _parse_bbox(where: str, value: object) -> tuple[float, float, float, float]:
    """Validate one ``bbox`` as 4 finite numbers [x, y, w, h] (:func:`_fit_boxes` checks it against the image)."""
    ok = isinstance(value, (list, tuple)) and len(value) == 4
    ok = ok and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not ok:
        raise DataError(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height], got {value!r}")
    return float(value[0]), float(value[1]), float(value[2]), float(value[3])


class _Entry(NamedTuple):
    """One structurally valid annotation, its box not yet fitted to the image."""

    ann_id: int
    image_id: int
    iscrowd: int
    bbox: tuple[float, float, float, float]
    category_id: int


def _parse_annotations(
    path: Path, entries: list[Any], images: dict[int, CocoImage], cat_ids: set[int]
) -> list[_Entry]:
    """Validate ``annotations`` (ids, references, iscrowd, bbox numbers)."""
    out: list[_Entry] = []
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
        out.append(_Entry(ann_id, image_id, int(iscrowd), _parse_bbox(where, entry["bbox"]), cat_id))
    return out


def _fit_boxes(
    path: Path, entries: list[_Entry], images: dict[int, CocoImage], strict: bool
) -> tuple[dict[int, list[CocoAnnotation]], dict[int, list[CocoAnnotation]], LoadFixes]:
    """Clip every box to its image and drop those with no area inside it (or refuse, if ``strict``).

    Boxes within :data:`BOX_TOLERANCE` of the border are clipped silently; further out they are
    clipped and counted. Returns (training annotations, crowd boxes) per image id and the counts.
    """
    train: dict[int, list[CocoAnnotation]] = {image_id: [] for image_id in images}
    crowd: dict[int, list[CocoAnnotation]] = {image_id: [] for image_id in images}
    clipped: list[int] = []
    dropped: list[int] = []
    offences: list[str] = []
    tol = BOX_TOLERANCE
    for e in entries:
        im = images[e.image_id]
        x, y, w, h = e.bbox
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(im.width)), min(y + h, float(im.height))
        box = f"bbox [{x:g}, {y:g}, {w:g}, {h:g}]"
        if x2 <= x1 or y2 <= y1:
            dropped.append(e.ann_id)
            offences.append(f"id={e.ann_id} {box} has no area inside {im.file_name!r} ({im.width}x{im.height})")
            continue
        if x < -tol or y < -tol or x + w > im.width + tol or y + h > im.height + tol:
            clipped.append(e.ann_id)
            offences.append(f"id={e.ann_id} {box} sticks out of {im.file_name!r} ({im.width}x{im.height})")
        ann = CocoAnnotation((x1, y1, x2 - x1, y2 - y1), e.category_id, e.ann_id)
        (crowd if e.iscrowd else train)[e.image_id].append(ann)
    if strict and offences:
        raise DataError(
            f"{path}: {len(offences)} annotation(s) do not fit their image: {listed(offences, '; ')}; clip "
            "the boxes to the image and remove empty ones (COCO bbox is [x, y, width, height], not x1, y1, "
            "x2, y2), or load without strict (--strict) to clip and drop them automatically"
        )
    return train, crowd, LoadFixes(clipped=tuple(clipped), dropped=tuple(dropped))


def __getattr__(name: str) -> Any:
    """Lazily re-export the torch datasets so ``from transfer.data.coco import MultiTaskDataset`` works."""
    if name in ("MultiTaskDataset", "ImageFolderDataset", "collate_multitask"):
        from transfer.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
