"""Locate the tritonserver binary that nvidia-pytriton bundles and prepare what it needs to run.

The wheel ships ``pytriton/tritonserver/bin/tritonserver``, the python backend
(``backends/python/libtriton_python.so``) and one stub per Python version under
``python_backend_stubs/<major.minor>/``. Triton expects the stub next to the backend library, so
:func:`triton_environment` builds a backend directory in a cache (atomically, once per install)
and the process environment the platform notes require: this interpreter's ``LIBDIR`` first on
``LD_LIBRARY_PATH`` (else the stub loads the system's older libpython) and the venv's ``bin``
first on ``PATH`` (so the stub imports the venv's numpy and onnxruntime).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ServingError

_INSTALL_HINT = "install nvidia-pytriton==0.7.0: pip install -e '.[serve]'"
_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


@dataclass(frozen=True)
class TritonEnvironment:
    """Everything needed to launch the bundled tritonserver.

    Attributes:
        binary: Path of the ``tritonserver`` executable.
        backend_dir: Directory to pass as ``--backend-directory`` (holds ``python/`` with the stub).
        cache_dir: Directory to pass as ``--cache-directory`` (response-cache implementations).
        env: Complete process environment for the server.
    """

    binary: Path
    backend_dir: Path
    cache_dir: Path
    env: dict[str, str]


def pytriton_root() -> Path:
    """Return the directory of the installed ``pytriton`` package without importing it.

    Raises:
        ServingError: If nvidia-pytriton is not installed.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServingError(f"nvidia-pytriton is not installed in {sys.prefix}; {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def triton_environment(root: Path | None = None, cache_root: Path | None = None) -> TritonEnvironment:
    """Find the binary and stub, build the backend directory if needed, and return the environment.

    Args:
        root: The ``pytriton`` package directory (default: the installed one).
        cache_root: Where to build backend directories (default ``$POLYHEAD_CACHE`` or
            ``~/.cache/polyhead``).

    Returns:
        The :class:`TritonEnvironment`.

    Raises:
        ServingError: If the binary, the python backend or the stub for this Python is missing.
    """
    root = pytriton_root() if root is None else Path(root)
    server_dir = root / "tritonserver"
    binary = server_dir / "bin" / "tritonserver"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ServingError(f"tritonserver binary not found at {binary}; {_INSTALL_HINT}")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServingError(f"no python backend stub for Python {version} at {stub}; {_INSTALL_HINT}")
    backend_src = server_dir / "backends" / "python"
    for name in _BACKEND_FILES:
        if not (backend_src / name).is_file():
            raise ServingError(f"python backend file {backend_src / name} is missing; {_INSTALL_HINT}")
    backend_dir = _ensure_backend_dir(backend_src, stub, cache_root)
    return TritonEnvironment(
        binary=binary,
        backend_dir=backend_dir,
        cache_dir=server_dir / "caches",
        env=_server_env(root.parent / "nvidia_pytriton.libs"),
    )


def _ensure_backend_dir(backend_src: Path, stub: Path, cache_root: Path | None) -> Path:
    """Return ``<cache>/<key>/backends`` holding ``python/{lib, utils, stub}``; build it atomically."""
    if cache_root is None:
        cache_root = Path(os.environ.get("POLYHEAD_CACHE", Path.home() / ".cache" / "polyhead"))
    sources = [backend_src / n for n in _BACKEND_FILES] + [stub]
    key_src = "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    target = Path(cache_root) / f"triton-backends-{key}"
    if (target / "python" / "triton_python_backend_stub").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=target.parent))
    try:
        (tmp / "python").mkdir()
        for name in _BACKEND_FILES:
            shutil.copy2(backend_src / name, tmp / "python" / name)
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: theirs is identical
            if not (target / "python" / "triton_python_backend_stub").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _server_env(libs_dir: Path) -> dict[str, str]:
    """Environment with this interpreter's libpython and the wheel's libs first on the search paths."""
    env = dict(os.environ)
    lib_paths = [sysconfig.get_config_var("LIBDIR") or "", str(libs_dir)]
    old = env.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = ":".join(p for p in [*lib_paths, old] if p)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"
    env.setdefault("PYTHONNOUSERSITE", "1")
    return env
