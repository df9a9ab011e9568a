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
from serving.model_configs import HEADS_MODEL
from serving.repository import add_task_to_repository, hot_add_models, live_heads_version, read_options
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
        """Write ``name``'s head and ``detect_<name>`` into ``repo``, load them and reload ``detect``.

        Per-task layout: loads ``head_<name>``; shared layout: reloads ``heads`` (a new version
        holding every head). The server never restarts and the trunk is not reloaded. If a load
        fails, what was loaded is unloaded (or reloaded from the restored files) and the
        repository files are restored.

        Raises:
            ServingError: A load failed (after the repository was restored).
        """
        shared = read_options(repo).heads_layout == "shared"
        kept = (repo / "detect" / "config.pbtxt", repo / "build.json", repo / HEADS_MODEL / "config.pbtxt")
        saved = {p: p.read_bytes() for p in kept if p.is_file()}
        new_leaf = repo / HEADS_MODEL / str(live_heads_version(repo) + 1) if shared else repo / f"head_{name}"
        added, loaded = (new_leaf, repo / f"detect_{name}"), []
        with ModelControl(self.server, self.key, self.timeout_s) as control:
            try:
                summary = add_task_to_repository(repo, workdir, name)
                for model in hot_add_models(summary.options, name):
                    control.load(model)
                    loaded.append(model)
            except BaseException as exc:
                _undo(control, repo, added, loaded, saved)
                if isinstance(exc, ServingError):
                    raise ServingError(
                        f"hot load of task {name!r} into {self.server} failed ({exc}); the live repository "
                        "was restored and the existing tasks keep serving"
                    ) from None
                raise


def _undo(
    control: ModelControl, repo: Path, added: tuple[Path, ...], loaded: list[str], saved: dict[Path, bytes]
) -> None:
    """Put ``repo`` and the server back: remove ``added``, restore ``saved``, unload or reload ``loaded``.

    ``heads``, which served before the hot add, is reloaded from the restored files, the new
    task's models are unloaded, and ``detect`` is reloaded last.
    """
    for path in added:
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}-undo-", dir=repo.parent))
            os.rename(path, trash / path.name)
            shutil.rmtree(trash, ignore_errors=True)
    for path, data in saved.items():
        tmp = path.with_name(f".{path.name}.restore")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    for model in reversed(loaded):
        if model == "detect":
            continue  # reloaded below in every case
        try:
            if model == HEADS_MODEL:
                control.load(model)
            else:
                control.unload(model)
        except ServingError:
            pass
    try:
        control.load("detect")  # back to the restored fan-out
    except ServingError:
        pass
