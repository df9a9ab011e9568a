"""A few validation images with each variant's detections drawn side by side (Pillow)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from transfer.data.coco import CocoTask
from transfer.evaluation.coco_map import ImageDetections
from transfer.report.section import Missing, Section

SCORE = 0.3  # detections drawn: score at least this
PANEL = 224  # px side of one image panel
IMAGES_PER_SPLIT = 2  # first images of each distinct validation split
MAX_IMAGES = 4
HEADER = 22  # px of the row of variant names
TASK_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def pick_images(vals: Mapping[str, CocoTask]) -> list[Path]:
    """The first :data:`IMAGES_PER_SPLIT` images of each split (shared images once), at most :data:`MAX_IMAGES`."""
    picked: list[Path] = []
    for val in vals.values():
        for im in list(val.images.values())[:IMAGES_PER_SPLIT]:
            path = val.images_dir / im.file_name
            if path not in picked:
                picked.append(path)
    return picked[:MAX_IMAGES]


Box = tuple[list[float], str, float | None]  # x1, y1, x2, y2 in original pixels, class name, score (None: truth)


def _boxes_of(path: Path, task: CocoTask, dets: list[ImageDetections] | None) -> list[Box]:
    """The boxes of ``task`` on image ``path``: its ground truth when ``dets`` is None, else detections >= SCORE."""
    ids = [i for i, im in task.images.items() if task.images_dir / im.file_name == path]
    if not ids:
        return []
    if dets is None:
        boxes, labels = task.targets(ids[0])
        return [(list(map(float, b)), task.class_names[int(c)], None) for b, c in zip(boxes, labels)]
    found = next((d for d in dets if d.image_id == ids[0]), None)
    if found is None:
        return []
    return [(list(map(float, b)), task.class_names[int(c)], float(s))
            for b, s, c in zip(found.boxes, found.scores, found.labels) if s >= SCORE]


def _panel(path: Path, boxes: Mapping[str, list[Box]], colours: Mapping[str, str],
           font: ImageFont.ImageFont) -> Image.Image:
    """One image scaled to :data:`PANEL` px with every task's boxes in its colour."""
    with Image.open(path) as src:
        image = src.convert("RGB")
    scale = PANEL / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    canvas = Image.new("RGB", (PANEL, PANEL), "white")
    canvas.paste(image)
    draw = ImageDraw.Draw(canvas)
    for task, items in boxes.items():
        for box, name, score in items:
            x1, y1, x2, y2 = (v * scale for v in box)
            draw.rectangle((x1, y1, x2, y2), outline=colours[task], width=2)
            draw.text((x1 + 2, y1 + 1), name if score is None else f"{name} {score:.2f}", fill=colours[task], font=font)
    return canvas


def detections_section(vals: Mapping[str, CocoTask], detections: Mapping[str, Mapping[str, list[ImageDetections]]]
                       ) -> Section:
    """Rows: validation images; columns: the ground truth, then every variant's detections (every task).

    Args:
        vals: Task -> validation split.
        detections: Variant -> task -> detections of that split's images (original pixels).
    """
    paths = pick_images(vals)
    caption = (f"Ground truth, then each variant's detections with score >= {SCORE} (onnxruntime trunk + every "
               "head), one colour per task: " + ", ".join(vals) + ".")
    if not paths or not detections:
        return Section("detections", "Detections side by side", caption, data={},
                       missing=(Missing("validation images and variant detections",
                                        "a validation split for a head and an exported trunk (`polyhead train`)"),))
    colours = {task: TASK_COLOURS[i % len(TASK_COLOURS)] for i, task in enumerate(vals)}
    columns = {"ground truth": None, **detections}
    font = ImageFont.load_default(size=11)
    sheet = Image.new("RGB", (PANEL * len(columns), HEADER + PANEL * len(paths)), "white")
    draw = ImageDraw.Draw(sheet)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for j, (column, per_task) in enumerate(columns.items()):
        draw.text((j * PANEL + 4, 4), column, fill="black", font=ImageFont.load_default(size=14))
        for i, path in enumerate(paths):
            boxes = {task: _boxes_of(path, val, None if per_task is None else per_task.get(task, []))
                     for task, val in vals.items()}
            sheet.paste(_panel(path, boxes, colours, font), (j * PANEL, HEADER + i * PANEL))
            counts.setdefault(column, {})[path.name] = {t: len(b) for t, b in boxes.items() if b}
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    data = {"score_threshold": SCORE, "images": [p.name for p in paths], "boxes_drawn": counts,
            "colours": colours}
    return Section("detections", "Detections side by side", caption, (("detections.png", buf.getvalue()),), data)
