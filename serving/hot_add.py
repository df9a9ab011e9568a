"""Hot-adding a task to a running Triton: write its models into the live repository and load them.

Used by ``polyhead add-task --server``: the transfer layer trains and commits the head, then calls
:class:`TritonHotAdd` (its ``LiveTarget``). Loads go through :class:`serving.admin.ModelControl`,
so they carry the model-control key when the server restricts the repository protocol.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from serving.admin import ModelControl
from serving.repository import add_task_to_repository, precompile_backend
from shared.errors import ArtifactError, ConfigError, ServingError

SERVER_ADDRESS = re.compile(r"[^\s:/]+:\d{1,5}")
LOAD_TIMEOUT_S = 120.0


class TritonHotAdd:
    """A ``transfer.add_task.LiveTarget`` for a Triton server at ``server`` (gRPC ``HOST:PORT``).

    Args:
        server: gRPC address of the running server.
        key: Model-control key (default ``$POLYHEAD_ADMIN_KEY``).
        timeout_s: Deadline of one load.
    """

    def __init__(self, server: str, key: str | None = None, timeout_s: float = LOAD_TIMEOUT_S):
        if not isinstance(server, str) or not SERVER_ADDRESS.fullmatch(server):
            raise ConfigError(
                f"server address {server!r} must be HOST:PORT of Triton's gRPC endpoint, e.g. 127.0.0.1:8001"
            )
        self.server, self.key, self.timeout_s = server, key, timeout_s

    def check(self, repo: Path, name: str) -> None:
        """Before training: ``server`` runs Triton with a ready ``trunk`` and ``repo`` is a repository.

        Raises:
            ArtifactError: ``repo`` is not a polyhead repository, or already has ``head_<name>``.
            ServingError: Nothing answers at ``server``, or it serves no ready ``trunk``/``detect``.
        """
        if not (repo / "build.json").is_file():
            raise ArtifactError(f"{repo} is not a model repository; build it (`polyhead export`) and serve it first")
        for model in (f"head_{name}", f"detect_{name}"):
            if (repo / model).exists():
                raise ArtifactError(f"{repo / model} already exists; remove it or choose another task name")
        with ModelControl(self.server, self.key, self.timeout_s) as control:
            try:
                states = {m.name: m.state for m in control.index()}
            except ServingError as exc:
                raise ServingError(f"{exc}; is `polyhead serve` running at {self.server}?") from None
        if states.get("trunk") != "READY" or "detect" not in states:
            raise ServingError(
                f"the server at {self.server} has no ready 'trunk' and 'detect' (models: {sorted(states)}); "
                f"is it serving {repo}?"
            )

    def add(self, repo: Path, workdir: Path, name: str) -> None:
        """Write ``head_<name>``/``detect_<name>`` into ``repo``, load them and reload ``detect``.

        The server never restarts and the trunk is not reloaded. If a load fails, what was loaded
        is unloaded and the repository files are restored.

        Raises:
            ServingError: A load failed (after the repository was restored).
        """
        saved = {p: p.read_bytes() for p in (repo / "detect" / "config.pbtxt", repo / "build.json") if p.is_file()}
        added, loaded = (f"head_{name}", f"detect_{name}"), []
        with ModelControl(self.server, self.key, self.timeout_s) as control:
            try:
                add_task_to_repository(repo, workdir, name)
                precompile_backend(repo / added[0])
                for model in added:
                    control.load(model)
                    loaded.append(model)
                control.load("detect")
            except BaseException as exc:
                _undo(control, repo, added, loaded, saved)
                if isinstance(exc, ServingError):
                    raise ServingError(
                        f"hot load of task {name!r} into {self.server} failed ({exc}); the live repository "
                        "was restored and the existing tasks keep serving"
                    ) from None
                raise


def _undo(
    control: ModelControl, repo: Path, added: tuple[str, ...], loaded: list[str], saved: dict[Path, bytes]
) -> None:
    """Unload ``loaded``, remove the ``added`` directories, restore ``saved`` files, reload ``detect``."""
    for model in reversed(loaded):
        try:
            control.unload(model)
        except ServingError:
            pass
    for model in added:
        if (repo / model).exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{model}-undo-", dir=repo.parent))
            os.rename(repo / model, trash / model)
            shutil.rmtree(trash, ignore_errors=True)
    for path, data in saved.items():
        tmp = path.with_name(f".{path.name}.restore")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    try:
        control.load("detect")  # back to the restored fan-out
    except ServingError:
        pass
