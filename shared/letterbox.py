"""Letterbox resizing: fit an image into a square canvas keeping its aspect ratio.

The image is scaled by ``size / max(h, w)`` and centred on a ``size x size`` canvas filled with
``pad_value``. :class:`LetterboxInfo` records the transform so boxes can be mapped between the
original image and the canvas. numpy + PIL only (no torch): used by data loading and clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
from PIL import Image

from shared.errors import InputError


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image was placed on the letterbox canvas.

    Letterboxed pixel = original pixel * ``scale`` + (``pad_x``, ``pad_y``).

    Attributes:
        scale: Resize factor applied to the original image (``size / max(orig_w, orig_h)``).
        pad_x: Left padding in canvas pixels.
        pad_y: Top padding in canvas pixels.
        orig_w: Width of the original image in pixels.
        orig_h: Height of the original image in pixels.
    """

    scale: float
    pad_x: int
    pad_y: int
    orig_w: int
    orig_h: int

    def to_letterboxed(self, boxes: np.ndarray) -> np.ndarray:
        """Map boxes from original pixels to letterboxed (canvas) pixels.

        Args:
            boxes: ``[N, 4]`` x1, y1, x2, y2 in original image pixels.

        Returns:
            ``[N, 4]`` float32 x1, y1, x2, y2 in canvas pixels (not clipped).
        """
        b = _check_boxes(boxes)  # (N, 4) float64
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float64)
        return (b * self.scale + offset).astype(np.float32)

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map boxes from letterboxed (canvas) pixels back to original pixels, clipped to the image.

        Args:
            boxes: ``[N, 4]`` x1, y1, x2, y2 in canvas pixels (e.g. detector outputs).

        Returns:
            ``[N, 4]`` float32 x1, y1, x2, y2 in original pixels, clipped to
            ``[0, orig_w] x [0, orig_h]``.
        """
        b = _check_boxes(boxes)  # (N, 4) float64
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float64)
        out = (b - offset) / self.scale
        out[:, 0::2] = out[:, 0::2].clip(0.0, self.orig_w)
        out[:, 1::2] = out[:, 1::2].clip(0.0, self.orig_h)
        return out.astype(np.float32)


def letterbox(image: np.ndarray, size: int, pad_value: int = 114) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize ``image`` to fit a ``size x size`` canvas, keeping aspect ratio, centred.

    Args:
        image: ``[H, W, 3]`` uint8 RGB image.
        size: Side of the square output canvas in pixels.
        pad_value: Grey level (0-255) of the padding.

    Returns:
        The ``[size, size, 3]`` uint8 canvas and the :class:`LetterboxInfo` describing the transform.

    Raises:
        InputError: If ``image`` is not an ``[H, W, 3]`` uint8 numpy array, or ``size``/``pad_value``
            are out of range.
    """
    _check_image(image)
    if not isinstance(size, Integral) or isinstance(size, bool) or size <= 0:
        raise InputError(f"letterbox size must be a positive int, got {size!r}")
    if not isinstance(pad_value, Integral) or not 0 <= pad_value <= 255:
        raise InputError(f"letterbox pad_value must be an int in [0, 255], got {pad_value!r}")
    h, w = image.shape[:2]
    size, pad_value = int(size), int(pad_value)
    scale = size / max(h, w)
    new_w = min(size, max(1, round(w * scale)))
    new_h = min(size, max(1, round(h * scale)))
    if (new_w, new_h) == (w, h):
        resized = image
    else:
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    pad_x = (size - new_w) // 2
    pad_y = (size - new_h) // 2
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)  # (S, S, 3)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, LetterboxInfo(scale=scale, pad_x=pad_x, pad_y=pad_y, orig_w=w, orig_h=h)


def _check_image(image: object) -> None:
    """Raise :class:`InputError` unless ``image`` is a non-empty ``[H, W, 3]`` uint8 numpy array."""
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"letterbox expects a numpy array [H, W, 3] uint8 RGB, got {type(image).__name__}; "
            "convert with np.asarray(PIL.Image.open(path).convert('RGB'))"
        )
    if image.dtype != np.uint8:
        raise InputError(
            f"letterbox expects dtype uint8, got {image.dtype}; scale to 0-255 and use .astype(np.uint8)"
        )
    if image.ndim == 2:
        raise InputError(
            f"letterbox expects a colour image [H, W, 3], got grayscale shape {image.shape}; "
            "convert with np.repeat(image[..., None], 3, axis=2) or PIL .convert('RGB')"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            f"letterbox expects shape [H, W, 3] (RGB, channels last), got {image.shape}; "
            "drop alpha with image[..., :3] or transpose CHW with image.transpose(1, 2, 0)"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"letterbox got an empty image of shape {image.shape}")


def _check_boxes(boxes: object) -> np.ndarray:
    """Return ``boxes`` as a float64 ``[N, 4]`` array or raise :class:`InputError`."""
    if not isinstance(boxes, np.ndarray):
        raise InputError(f"boxes must be a numpy array [N, 4], got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"boxes must have shape [N, 4] (x1, y1, x2, y2), got {boxes.shape}")
    return boxes.astype(np.float64)
