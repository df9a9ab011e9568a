"""Detections drawn onto their image: one box and one ``class score`` label each, one colour per task.

The drawing is made on the image as the client read it (EXIF orientation applied), so it has the
displayed size and the boxes land where the server put them (original pixels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from serving.client.protocol import Detection

#: Task colours (RGB) in the order of the tasks (a tenth task reuses the first colour).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip
_JPEG_QUALITY = 95


def task_colours(tasks: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Each task's colour: :data:`PALETTE` in the order of ``tasks``."""
    return {task: PALETTE[i % len(PALETTE)] for i, task in enumerate(tasks)}


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(10, height // 40)
    try:
        return ImageFont.load_default(size)  # scalable from Pillow 10.1
    except TypeError:
        return ImageFont.load_default()


def draw_detections(
    image: np.ndarray,
    detections: Mapping[str, Sequence[Detection]],
    colours: Mapping[str, tuple[int, int, int]],
) -> Image.Image:
    """Draw every detection onto a copy of ``image``.

    Args:
        image: ``[H, W, 3]`` uint8 RGB, as the client sent it.
        detections: Task -> its detections (boxes ``x1, y1, x2, y2`` in ``image``'s pixels).
        colours: Task -> RGB colour (:func:`task_colours`).

    Returns:
        An RGB image of ``image``'s size; labels read ``class score`` (``task:class score`` when
        several tasks are drawn).
    """
    out = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(out)
    h, w = image.shape[:2]
    line = max(2, round(min(h, w) / 250))
    font = _font(min(h, w))
    several = len(detections) > 1
    for task, dets in detections.items():
        colour = colours[task]
        for d in reversed(dets):  # the best-scored box drawn last, on top
            x1, y1, x2, y2 = d.box
            draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
            label = f"{task}:{d.class_name} {d.score:.2f}" if several else f"{d.class_name} {d.score:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            tw, th = right - left + 2 * line, bottom - top + 2 * line
            tx = min(max(x1, 0), max(w - tw, 0))
            ty = y1 - th if y1 - th >= 0 else min(max(y1, 0), max(h - th, 0))  # above the box, else inside
            draw.rectangle((tx, ty, tx + tw, ty + th), fill=colour)
            draw.text((tx + line - left, ty + line - top), label, fill=(255, 255, 255), font=font)
    return out


def save_drawing(drawing: Image.Image, path: Path) -> None:
    """Write ``drawing`` to ``path`` (folders made; format from the suffix, JPEG at quality 95)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        drawing.save(path, quality=_JPEG_QUALITY)
    else:
        drawing.save(path)
