"""The one image reader of training, evaluation and add-task, and the header checks run at load time.

:func:`read_rgb` decodes any file PIL opens to uint8 RGB ``[H, W, 3]`` in display orientation (the EXIF
``Orientation`` tag applied). Modes:

- ``L``, ``LA``, ``1``, ``P`` (palette, with or without transparency), ``PA``, ``CMYK``, ``YCbCr``:
  PIL's conversion to RGB.
- ``RGBA`` / ``LA`` / ``PA`` / transparent palettes: the alpha channel is **dropped** (the stored
  colours are kept, not composited), the same as the serving client's ``.convert("RGB")``, so a
  model sees the same pixels in training and in serving.
- ``I;16`` (16-bit grayscale) and ``I`` (read as 16-bit): scaled ``round(v / 257)`` to 0..255, not
  clipped. 16-bit RGB PNGs arrive from PIL as 8-bit RGB already (most significant byte).

:func:`check_image_files` opens every listed file lazily (header and EXIF only, no pixel decoding), so a
load reports all missing or unreadable files at once and reconciles declared sizes with the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps

from shared.errors import DataError

MAX_LISTED = 5  # files or entries named in one error message
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
_READERS = 8  # threads opening headers (I/O bound)
# What PIL raises for broken files (a decompression bomb: over 2x Image.MAX_IMAGE_PIXELS pixels)
_BROKEN = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as displayed: EXIF orientation applied, converted to RGB.

    Args:
        path: An image file PIL can open.

    Returns:
        uint8 ``[H, W, 3]`` RGB, ``H, W`` the displayed (oriented) size.

    Raises:
        DataError: If the file is missing, not an image, truncated or in a mode with no RGB conversion.
    """
    try:
        with Image.open(path) as pil:
            ImageOps.exif_transpose(pil, in_place=True)  # decodes; turns only if the tag says so
            return to_rgb(pil)
    except _BROKEN as e:
        raise DataError(f"{path}: cannot read image ({e}); re-export or remove it") from e


def to_rgb(pil: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to uint8 RGB ``[H, W, 3]`` (see the module docstring for each mode)."""
    if pil.mode.startswith("I;16") or pil.mode == "I":
        wide = np.asarray(pil).astype(np.float64)  # (H, W) uint16 / int32
        gray = np.rint(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)  # (H, W, 3)
    if pil.mode == "RGB":
        return np.asarray(pil)
    return np.asarray(pil.convert("RGB"))  # drops alpha; palettes expand; CMYK/YCbCr convert


class ImageHeader(NamedTuple):
    """What an image file's header says: stored size in pixels and EXIF orientation (1..8)."""

    width: int
    height: int
    orientation: int

    @property
    def oriented(self) -> tuple[int, int]:
        """``(width, height)`` as displayed, i.e. after the EXIF orientation is applied."""
        return (self.height, self.width) if self.orientation in _SWAPS_SIDES else (self.width, self.height)


def read_header(path: str | Path, verify: bool = False) -> ImageHeader:
    """Open ``path`` lazily and return its size and orientation (pixels are decoded only if ``verify``).

    Args:
        path: An image file.
        verify: Also decode every pixel (catches truncated files; slow).

    Returns:
        The :class:`ImageHeader`.

    Raises:
        DataError: If the file is missing or not a readable image.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise DataError(f"{path}: missing ({e.strerror}); check the path") from e
    return _header(str(path), stat.st_mtime_ns, stat.st_size, verify)


@lru_cache(maxsize=1 << 17)
def _header(path: str, mtime_ns: int, size: int, verify: bool) -> ImageHeader:
    """Cached by file identity, so loading the same split twice reads each header once."""
    del mtime_ns, size  # only part of the cache key
    try:
        with Image.open(path) as pil:
            # Image.getexif reads the EXIF already parsed with the header; PngImageFile.getexif would
            # decode the whole image to look for an eXIf chunk after the pixels.
            orientation = Image.Image.getexif(pil).get(ExifTags.Base.Orientation, 1)
            if verify:
                pil.load()
            width, height = pil.size
    except _BROKEN as e:
        raise DataError(f"{path}: not a readable image ({e}); re-export or remove it") from e
    orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    return ImageHeader(width, height, orientation)


def listed(items: Sequence[object], sep: str = ", ") -> str:
    """``a, b, c and 4 more``: the first :data:`MAX_LISTED` items for a message."""
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return sep.join(map(str, items[:MAX_LISTED])) + more


def check_image_files(
    json_path: Path,
    images_dir: Path,
    declared: dict[int, tuple[str, int, int]],
    strict: bool = False,
    verify: bool = False,
) -> dict[int, tuple[int, int]]:
    """Check every listed image file at once and reconcile its declared size with the file.

    A declared ``width x height`` must equal the file's size after EXIF orientation. If it equals only
    the stored (unrotated) size, the dataset declared the raw sensor size: the oriented size is used
    (boxes are taken to be in displayed pixels, as annotation tools show them) unless ``strict``.

    Args:
        json_path: The annotation file (named in messages).
        images_dir: Directory ``file_name`` entries are relative to (sub-folders allowed).
        declared: Image id -> ``(file_name, width, height)`` from the ``images`` entries.
        strict: Refuse raw-size declarations instead of correcting them.
        verify: Decode every image fully (catches truncated files; slow).

    Returns:
        Image id -> oriented ``(width, height)`` for each image whose declared size was corrected.

    Raises:
        DataError: The directory is missing; files are missing or unreadable (one error listing them);
            declared sizes disagree with files (one error listing them); or, when ``strict``, sizes
            were declared unrotated.
    """
    if not images_dir.is_dir():
        raise DataError(
            f"{json_path}: images directory {images_dir} does not exist; pass the folder that "
            "file_name entries are relative to"
        )
    ids = list(declared)
    headers = _read_all([images_dir / declared[i][0] for i in ids], verify)
    bad = [f"id={i} {declared[i][0]!r} ({h})" for i, h in zip(ids, headers) if isinstance(h, str)]
    if bad:
        raise DataError(
            f"{json_path}: {len(bad)} of {len(ids)} image file(s) missing or unreadable under {images_dir}: "
            f"{listed(bad)}; check images_dir and the file_name entries, re-export or remove broken files"
        )
    fixed: dict[int, tuple[int, int]] = {}
    wrong = []
    for i, h in zip(ids, headers):
        name, w, ht = declared[i]
        assert isinstance(h, ImageHeader)
        if (w, ht) == h.oriented:
            continue
        if (w, ht) == (h.width, h.height):
            fixed[i] = h.oriented
        else:
            wrong.append(f"id={i} {name!r} declared {w}x{ht}, file is {h.oriented[0]}x{h.oriented[1]}"
                         + (f" (stored {h.width}x{h.height}, EXIF orientation {h.orientation})"
                            if h.orientation in _SWAPS_SIDES else ""))
    if wrong:
        raise DataError(
            f"{json_path}: {len(wrong)} image size(s) disagree with their file: {listed(wrong)}; "
            "fix width/height in those images entries (the displayed size, after EXIF orientation), "
            "or check the file_name points at the right image"
        )
    if strict and fixed:
        rotated = [f"id={i} {declared[i][0]!r} declared {declared[i][1]}x{declared[i][2]}, displayed "
                   f"{fixed[i][0]}x{fixed[i][1]}" for i in fixed]
        raise DataError(
            f"{json_path}: {len(fixed)} image(s) declare their unrotated size although EXIF rotates them: "
            f"{listed(rotated)}; write the displayed size as width/height (and check the boxes are in "
            "displayed pixels), or load without strict (--strict) to use the displayed size"
        )
    return fixed


def _read_all(paths: Iterable[Path], verify: bool) -> list[ImageHeader | str]:
    """Headers of ``paths`` in order; the reason as a string for each file that failed."""

    def one(path: Path) -> ImageHeader | str:
        if not path.is_file():
            return "missing"
        try:
            return read_header(path, verify)
        except DataError as e:
            return str(e.__cause__ or e)

    paths = list(paths)
    if len(paths) < 64:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(_READERS) as pool:
        return list(pool.map(one, paths))
