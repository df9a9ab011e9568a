"""Training augmentation on the letterbox canvas: flip, scale jitter, colour jitter.

Works on an already letterboxed ``[S, S, 3]`` uint8 image and boxes in canvas pixels, so every
task's boxes for one image go through the same geometric transform (pass them all at once and
use ``labels`` to carry their identity). Deterministic for a given ``np.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.errors import ConfigError, InputError


@dataclass(frozen=True)
class Augment:
    """Augmentation settings.

    Attributes:
        hflip_prob: Probability of a horizontal flip.
        scale_range: (min, max) uniform zoom factor; < 1 shrinks the content and pads, > 1 zooms in
            and crops back to the canvas.
        color_jitter: Strength ``s`` of brightness / contrast / saturation jitter; each factor is
            drawn from ``U(1 - s, 1 + s)``. 0 disables it.
        pad_value: Grey level of the area uncovered when the content shrinks.
        min_box_size: Boxes narrower or shorter than this (canvas pixels, after clipping) are dropped.
        min_visible: Boxes keeping less than this fraction of their area after cropping are dropped.
    """

    hflip_prob: float = 0.5
    scale_range: tuple[float, float] = (0.6, 1.4)
    color_jitter: float = 0.3
    pad_value: int = 114
    min_box_size: float = 2.0
    min_visible: float = 0.4

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ConfigError(f"Augment.hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if not 0.0 < lo <= hi:
            raise ConfigError(f"Augment.scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ConfigError(f"Augment.color_jitter must be in [0, 1), got {self.color_jitter}")
        if not 0.0 <= self.min_visible <= 1.0:
            raise ConfigError(f"Augment.min_visible must be in [0, 1], got {self.min_visible}")


def apply_augment(
    config: Augment,
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply ``config`` to one image and its boxes.

    Args:
        config: The augmentation settings.
        image: ``[H, W, 3]`` uint8 RGB (normally the letterbox canvas).
        boxes: ``[N, 4]`` x1, y1, x2, y2 in image pixels.
        labels: ``[N]`` integer labels (or any per-box ids), filtered together with ``boxes``.
        rng: Source of randomness; the same generator state gives the same result.

    Returns:
        ``(image [H, W, 3] uint8, boxes [M, 4] float32, labels [M])`` with ``M <= N``; boxes are
        clipped to the image.

    Raises:
        InputError: If shapes or dtypes are wrong.
    """
    _check_inputs(image, boxes, labels)
    boxes = boxes.astype(np.float32).reshape(-1, 4)  # (N, 4)
    # Draw every random number up front, in a fixed order, so the stream never depends on data.
    flip = rng.random() < config.hflip_prob
    zoom = float(rng.uniform(*config.scale_range))
    offset_u = rng.random(2)  # where the crop / paste lands, as fractions of the free room
    jitter = rng.uniform(1.0 - config.color_jitter, 1.0 + config.color_jitter, size=3)

    if flip:
        image, boxes = hflip(image, boxes)
    image, boxes, keep = _zoom(config, image, boxes, zoom, offset_u)
    if config.color_jitter > 0:
        image = _color_jitter(image, *jitter)
    return image, boxes, labels[keep]


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror ``image`` left-right and its ``[N, 4]`` xyxy boxes (``x -> W - x``)."""
    w = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def _zoom(
    config: Augment, image: np.ndarray, boxes: np.ndarray, zoom: float, offset_u: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize by ``zoom`` then crop or pad back to the original size; filter the boxes."""
    h, w = image.shape[:2]
    new_w, new_h = max(1, round(w * zoom)), max(1, round(h * zoom))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    # Signed shift of the resized image's origin on the output canvas.
    dx = round((w - new_w) * offset_u[0])  # <= 0 when zooming in (crop), >= 0 when shrinking (pad)
    dy = round((h - new_h) * offset_u[1])
    out = np.full_like(image, config.pad_value)
    src_x0, src_y0 = max(0, -dx), max(0, -dy)
    dst_x0, dst_y0 = max(0, dx), max(0, dy)
    cw = min(new_w - src_x0, w - dst_x0)
    ch = min(new_h - src_y0, h - dst_y0)
    out[dst_y0 : dst_y0 + ch, dst_x0 : dst_x0 + cw] = resized[src_y0 : src_y0 + ch, src_x0 : src_x0 + cw]

    scale_x, scale_y = new_w / w, new_h / h
    moved = boxes * np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)
    moved += np.array([dx, dy, dx, dy], dtype=np.float32)
    clipped = moved.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, w)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, h)
    cw_box = clipped[:, 2] - clipped[:, 0]
    ch_box = clipped[:, 3] - clipped[:, 1]
    full_area = np.maximum((moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1]), 1e-6)
    keep = (
        (cw_box >= config.min_box_size)
        & (ch_box >= config.min_box_size)
        & (cw_box * ch_box / full_area >= config.min_visible)
    )
    return out, clipped[keep], np.flatnonzero(keep)


def _color_jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Scale brightness, contrast (around the mean grey) and saturation (around per-pixel grey)."""
    img = image.astype(np.float32) * brightness  # (H, W, 3)
    grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W)
    img = (img - grey.mean()) * contrast + grey.mean()
    grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = grey[..., None] + (img - grey[..., None]) * saturation
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _check_inputs(image: object, boxes: object, labels: object) -> None:
    """Raise :class:`InputError` unless the arguments have the documented shapes and dtypes."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"apply_augment expects an [H, W, 3] uint8 image, got {desc}")
    if not isinstance(boxes, np.ndarray) or boxes.ndim != 2 or boxes.shape[1] != 4:
        desc = str(boxes.shape) if isinstance(boxes, np.ndarray) else type(boxes).__name__
        raise InputError(f"apply_augment expects boxes [N, 4] x1, y1, x2, y2, got {desc}")
    if not isinstance(labels, np.ndarray) or labels.shape != (boxes.shape[0],):
        desc = str(labels.shape) if isinstance(labels, np.ndarray) else type(labels).__name__
        raise InputError(f"apply_augment expects labels [N] with N={boxes.shape[0]}, got {desc}")
