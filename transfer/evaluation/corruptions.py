"""Common image corruptions at three severities (COCO-C / ImageNet-C style), deterministic per image.

Five corruptions, each a function of one ``(H, W, 3)`` uint8 RGB image, a severity 1..3 and a numpy
generator (only the noise draws from it). The three severities are ImageNet-C's (Hendrycks &
Dietterich, 2019) severities 1, 3 and 5, as COCO-C (Michaelis et al., 2019) applies them:

========================  =================================================  ===============
name                      what                                               1 / 2 / 3
========================  =================================================  ===============
``gaussian_noise``        ``x + N(0, s)``, ``x`` in [0, 1], clipped          s .08 / .18 / .38
``gaussian_blur``         Gaussian blur (Pillow), standard deviation in px   1 / 3 / 6
``jpeg``                  JPEG re-encoding (Pillow) at this quality          25 / 15 / 7
``brightness``            HSV value ``+ c`` (hue, saturation kept), clipped  .1 / .3 / .5
``contrast``              ``(x - mean) * c + mean``, mean per channel        .4 / .2 / .05
========================  =================================================  ===============

They are applied to the **original** image, before letterboxing, because they model the camera and
the network (sensor noise, defocus, re-encoding, exposure), which act before the server letterboxes
the picture: the blur and the JPEG blocks are in the camera's pixels, and the padding stays the
clean grey serving adds. :func:`image_rng` seeds the noise from the seed, the file name, the
corruption and the severity, so a corrupted copy is the same in every run, variant and task.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from shared.errors import ConfigError, InputError
from transfer.config import pick_names

SEVERITIES = (1, 2, 3)
NOISE_STD = (0.08, 0.18, 0.38)
BLUR_SIGMA = (1.0, 3.0, 6.0)
JPEG_QUALITY = (25, 15, 7)
BRIGHTNESS_SHIFT = (0.1, 0.3, 0.5)
CONTRAST_FACTOR = (0.4, 0.2, 0.05)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, standard deviation ``NOISE_STD[severity - 1]`` of the full range."""
    x = image.astype(np.float32) / 255.0  # (H, W, 3)
    x += rng.normal(0.0, NOISE_STD[severity - 1], size=x.shape).astype(np.float32)
    return _to_uint8(x)


def gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur with standard deviation ``BLUR_SIGMA[severity - 1]`` pixels."""
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(BLUR_SIGMA[severity - 1]))
    return np.asarray(blurred, dtype=np.uint8).copy()


def jpeg(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG encode + decode at quality ``JPEG_QUALITY[severity - 1]`` (4:2:0 chroma, Pillow's default)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY[severity - 1])
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Raise the HSV value ``max(r, g, b)`` by ``BRIGHTNESS_SHIFT[severity - 1]``, keeping hue and saturation."""
    x = image.astype(np.float32) / 255.0  # (H, W, 3)
    value = x.max(axis=2, keepdims=True)  # (H, W, 1)
    brighter = np.clip(value + BRIGHTNESS_SHIFT[severity - 1], 0.0, 1.0)
    # scaling r, g, b by new/old value keeps hue and saturation; a black pixel becomes grey
    scaled = np.where(value > 0, x * (brighter / np.maximum(value, 1e-12)), brighter)
    return _to_uint8(scaled)


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink every channel towards its mean by ``CONTRAST_FACTOR[severity - 1]``."""
    x = image.astype(np.float32) / 255.0  # (H, W, 3)
    mean = x.mean(axis=(0, 1), keepdims=True)  # (1, 1, 3)
    return _to_uint8((x - mean) * CONTRAST_FACTOR[severity - 1] + mean)


#: Name -> corruption, in the order tables and ``per_corruption`` list them.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "jpeg": jpeg,
    "brightness": brightness,
    "contrast": contrast,
}


def check_corruptions(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``names`` in :data:`CORRUPTIONS` order (all when ``None``).

    Raises:
        ConfigError: If a name is not a known corruption (the message lists them), or none is given.
    """
    return tuple(pick_names("corruption", names, tuple(CORRUPTIONS)))


def image_rng(seed: int, file_name: str, name: str, severity: int) -> np.random.Generator:
    """The generator of one corrupted copy: from ``seed``, the image's file name, the corruption and severity.

    ``zlib.crc32`` (not ``hash``, which Python salts per process) keeps it the same in every run.
    """
    keys = (zlib.crc32(file_name.encode()), list(CORRUPTIONS).index(name), severity)
    return np.random.default_rng([seed, *keys])


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0, file_name: str = "") -> np.ndarray:
    """One corrupted copy of ``image``, the same for the same ``(seed, file_name, name, severity)``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, the original image (before letterboxing).
        name: A key of :data:`CORRUPTIONS`.
        severity: 1, 2 or 3.
        seed: Base seed of the noise.
        file_name: The image's name in its task (seeds the noise per image).

    Returns:
        ``(H, W, 3)`` uint8 RGB, a new array (``image`` is not modified).

    Raises:
        ConfigError: If ``name`` or ``severity`` is unknown (the message lists the choices).
        InputError: If ``image`` is not ``(H, W, 3)`` uint8.
    """
    check_corruptions([name])
    if severity not in SEVERITIES:
        raise ConfigError(f"unknown severity {severity!r}; choose from {', '.join(map(str, SEVERITIES))}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"corrupt expects an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    return CORRUPTIONS[name](image, severity, image_rng(seed, file_name, name, severity))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """``[0, 1]`` float -> uint8, clipped and rounded."""
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
