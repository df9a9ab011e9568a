"""What ``polyhead predict SOURCE`` reads: one image file, a folder of images or a glob, in sorted order.

- a file: that file, whatever its suffix;
- a folder: its files (not sub-folders) whose suffix is one of :data:`IMAGE_SUFFIXES`;
- a glob (``*``, ``?``, ``[``; ``**`` recurses): every file it matches, whatever its suffix.

Files are listed, not opened: an unreadable one is found (and skipped) when it is read.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from shared.errors import InputError

#: Suffixes a folder's images may have (those of ``transfer.data.datasets``, which imports torch).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_GLOB_CHARS = ("*", "?", "[")


def list_images(source: str | Path) -> list[Path]:
    """The image files ``source`` names, sorted by path.

    Args:
        source: An image file, a folder or a glob pattern.

    Returns:
        The files, sorted (their position is the ``image_id`` of :mod:`serving.client.predict`).

    Raises:
        InputError: ``source`` does not exist, or names no file.
    """
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise InputError(f"folder {text} holds no image file ({', '.join(IMAGE_SUFFIXES)}); "
                             "pass the folder of the images, a file or a glob such as 'photos/*.jpg'")
        return sorted(files)
    if path.is_file():
        return [path]
    if any(c in text for c in _GLOB_CHARS):
        files = [Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p)]
        if not files:
            raise InputError(f"glob {text!r} matches no file; check the pattern (quote it so the shell keeps it)")
        return sorted(files)
    raise InputError(f"{text}: no such file or folder; pass an image, a folder of images or a glob")


def output_names(paths: list[Path]) -> list[str]:
    """Each file's name relative to the deepest folder holding them all (unique, ``/``-separated).

    Drawings are saved under these names and the COCO results record them as ``file_name``.
    A suffix Pillow cannot write back (:data:`IMAGE_SUFFIXES` it can) gets ``.png`` appended.
    """
    if not paths:
        return []
    root = Path(os.path.commonpath([str(p.absolute().parent) for p in paths]))
    names = []
    for p in paths:
        name = p.absolute().relative_to(root).as_posix()
        names.append(name if p.suffix.lower() in IMAGE_SUFFIXES else f"{name}.png")
    return names
