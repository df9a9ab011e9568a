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

from shared.errors import ArtifactError


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


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path, what: str = "metadata") -> Any:
    """Read a JSON file with an error naming the file when it is missing or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{what} file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{what} file {path} is not valid JSON ({exc}); regenerate it") from None


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
