"""Atomic writes and integrity: nothing half-written ever sits where another command looks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.errors import ArtifactError, PolyheadError


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` then rename over it (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(
    path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False, trailing_newline: bool = True
) -> None:
    """Atomically write ``obj`` as JSON (default: 2-space indent, keys in insertion order, final newline).

    The keyword arguments keep each file's existing byte format: workspace metadata uses the
    defaults, the model repository's ``build.json`` / ``versions.json`` ``sort_keys=True`` without a
    final newline, synthetic COCO files ``indent=None`` without one.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys)
    atomic_write_bytes(path, (text + "\n" if trailing_newline else text).encode())


def read_json(
    path: str | Path,
    what: str = "metadata",
    *,
    error: type[PolyheadError] = ArtifactError,
    fix: str = "regenerate it",
    missing_fix: str | None = None,
    expect: type | None = None,
) -> Any:
    """Read a JSON file; every failure raises ``error`` with a message naming the file and the fix.

    Args:
        path: The file.
        what: What it holds, e.g. ``"trunk variant metadata"`` (named in the messages).
        error: Exception class raised (:class:`ArtifactError` for workspace files,
            :class:`~shared.errors.DataError` for datasets).
        fix: What to do about an unreadable or corrupt file.
        missing_fix: What to do when it does not exist (``None``: no advice).
        expect: Type the top-level value must have (``dict``: a JSON object), or ``None`` for any.

    Raises:
        PolyheadError: ``error``, if the file is missing, unreadable, not UTF-8, not JSON or not ``expect``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} file {path} does not exist" + (f"; {missing_fix}" if missing_fix else "")) from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} file ({exc}); check the path") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read as {what}; {fix}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); {fix}") from None
    if expect is not None and not isinstance(data, expect):
        kind = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise error(f"{path}: {what} must be {kind}, got {type(data).__name__}; {fix}")
    return data


@contextlib.contextmanager
def atomic_directory(final: str | Path, replace: bool = False) -> Iterator[Path]:
    """Build a directory in a hidden sibling and rename it into place when the block succeeds.

    Args:
        final: Where the directory must appear.
        replace: Replace an existing directory (old one removed only after the new one is in place).

    Yields:
        The temporary directory to fill. On an exception it is removed and ``final`` is untouched.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise ArtifactError(f"{final} already exists; remove it or choose another name")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_sha256(path: str | Path, expected: str, fix: str) -> None:
    """Raise :class:`ArtifactError` if ``path``'s sha256 is not ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ArtifactError(
            f"{path}: sha256 {actual[:12]}... does not match its metadata "
            f"({str(expected)[:12]}...); the file changed after export; {fix}"
        )
