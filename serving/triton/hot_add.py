"""Hot-adding a task to a running Triton: write its models into the live repository and load them.

Used by ``polyhead add-task --server``: the transfer layer trains and commits the head, then calls
:class:`TritonHotAdd` (its ``LiveTarget``). Loads go through :class:`serving.triton.model_control.ModelControl`,
so they carry the model-control key when the server restricts the repository protocol.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from serving.triton.model_configs import heads_host
from serving.triton.model_control import ModelControl
from serving.triton.model_names import (
    FANOUT_MODEL,
    TRUNK_MODEL,
    head_model,
    task_model,
    task_of_head_model,
    task_of_model,
)
from serving.triton.repository import (
    add_task_to_repository,
    heads_root,
    hot_add_models,
    live_heads_version,
    read_options,
)
from shared.artifacts import atomic_write_bytes
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
        for model in (head_model(name), task_model(name)):
            if (repo / model).exists():
                raise ArtifactError(f"{repo / model} already exists; remove it or choose another task name")
        with ModelControl(self.server, self.key, self.timeout_s) as control:
            try:
                states = {m.name: m.state for m in control.index()}
            except ServingError as exc:
                raise ServingError(f"{exc}; is `polyhead serve` running at {self.server}?") from None
        if states.get(TRUNK_MODEL) != "READY" or FANOUT_MODEL not in states:
            raise ServingError(
                f"the server at {self.server} has no ready 'trunk' and 'detect' (models: {sorted(states)}); "
                f"is it serving {repo}?"
            )

    def add(self, repo: Path, workdir: Path, name: str) -> None:
        """Write ``name``'s head and ``detect_<name>`` into ``repo``, load them and reload ``detect``.

        Per-task layout: loads ``head_<name>``; shared layout: reloads ``heads`` (a new version
        holding every head); neither reloads the trunk. In_trunk layout: reloads ``trunk`` onto a
        new generation of head files, with the config it serves (live variant and batching delay
        kept) plus the new head; its old process serves until the new one is ready. The server
        never restarts. If a load fails, what was loaded is unloaded (or reloaded from the restored
        files) and the repository files are restored.

        Raises:
            ServingError: A load failed (after the repository was restored).
        """
        opts = read_options(repo)
        host = heads_host(opts)
        kept = [repo / FANOUT_MODEL / "config.pbtxt", repo / "build.json"]
        if host is not None:
            kept.append(repo / host / "config.pbtxt")
        saved = {p: p.read_bytes() for p in kept if p.is_file()}
        new_leaf = heads_root(repo, opts) / str(live_heads_version(repo, opts) + 1) if host else repo / head_model(name)
        added, loaded = (new_leaf, repo / task_model(name)), []
        with ModelControl(self.server, self.key, self.timeout_s) as control:
            served_trunk = control.config(TRUNK_MODEL) if host == TRUNK_MODEL else None
            try:
                summary = add_task_to_repository(repo, workdir, name)
                for model in hot_add_models(summary.options, name):
                    if model == TRUNK_MODEL:
                        control.load(model, config=_with_heads(served_trunk, repo))
                    else:
                        control.load(model)
                    loaded.append(model)
            except BaseException as exc:
                _undo(control, repo, added, loaded, saved, served_trunk)
                if isinstance(exc, ServingError):
                    raise ServingError(
                        f"hot load of task {name!r} into {self.server} failed ({exc}); the live repository "
                        "was restored and the existing tasks keep serving"
                    ) from None
                raise


def _with_heads(served: object, repo: Path) -> str:
    """JSON override for loading ``trunk``: the ``served`` config with the repository's heads.

    Outputs and the ``heads`` / ``heads_dir`` parameters come from ``trunk/config.pbtxt`` (just
    rewritten by the hot add); everything else (the live version policy, the batching delay a
    controller set) stays as served.
    """
    from google.protobuf.json_format import MessageToJson

    from serving.triton.model_configs import read_config

    disk = read_config(repo / TRUNK_MODEL / "config.pbtxt")
    cfg = type(served)()
    cfg.CopyFrom(served)
    del cfg.output[:]
    cfg.output.extend(disk.output)
    for key in ("heads", "heads_dir"):
        cfg.parameters[key].CopyFrom(disk.parameters[key])
    return MessageToJson(cfg, preserving_proto_field_name=True)


def _undo(
    control: ModelControl, repo: Path, added: tuple[Path, ...], loaded: list[str], saved: dict[Path, bytes],
    served_trunk: object = None,
) -> None:
    """Put ``repo`` and the server back: remove ``added``, restore ``saved``, unload or reload ``loaded``.

    ``heads`` or ``trunk`` (in_trunk layout, with the config it served before), which served before
    the hot add, is reloaded from the restored files, the new task's models are unloaded, and
    ``detect`` is reloaded last.
    """
    for path in added:
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}-undo-", dir=repo.parent))
            os.rename(path, trash / path.name)
            shutil.rmtree(trash, ignore_errors=True)
    for path, data in saved.items():
        atomic_write_bytes(path, data)
    for model in reversed(loaded):
        if model == FANOUT_MODEL:
            continue  # reloaded below in every case
        try:
            if model == TRUNK_MODEL:
                control.load(model, config=_with_heads(served_trunk, repo))
            elif task_of_head_model(model) is None and task_of_model(model) is None:  # the shared ``heads`` model
                control.load(model)
            else:
                control.unload(model)
        except ServingError:
            pass
    try:
        control.load(FANOUT_MODEL)  # back to the restored fan-out
    except ServingError:
        pass
