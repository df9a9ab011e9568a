"""`polyhead add-task`: train only a new head on the frozen reference trunk, export it, hot-load it.

The whole command is one transaction on the workspace. Every input is checked before any work;
the head is exported and evaluated on every admitted trunk variant inside a hidden staging
directory; only then is ``heads/<name>`` renamed into place and each ``variant.json`` given the
new task's mAP. Any failure (bad input, an exception, Ctrl-C, a failed hot load) removes what was
added and restores the files it changed, so the workspace is left as it was.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from heads.head import DetectionHead, HeadConfig
from shared.artifacts import atomic_write_json, read_json
from shared.errors import ArtifactError, ConfigError, DataError, ServingError
from shared.workspace import Workspace
from transfer.coco import CocoTask, load_coco
from transfer.config import PolyheadConfig, load_config
from transfer.feature_cache import (
    HeadTrainConfig,
    build_feature_cache,
    check_trunk_matches_onnx,
    find_trunk_checkpoint,
    iter_images,
    load_frozen_trunk,
    train_head_on_cache,
)
from transfer.model import TaskInfo
from transfer.pipeline import post_config
from transfer.publish import REFERENCE, evaluate_head, publish_head

TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
SERVER_ADDRESS = re.compile(r"[^\s:/]+:\d{1,5}")
LOAD_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class AddTaskReport:
    """What `add-task` did.

    Attributes:
        task: The new task's name.
        head_dir: ``heads/<task>``.
        classes: Class names in label order.
        maps: Trunk variant -> ``{"map": mAP@[.5:.95], "map50": ...}`` of the new head.
        num_images: Training images.
        num_views: Cached views (images x views per image).
        epochs: Head training epochs.
        head_params: Parameters of the new head.
        cache_mb: Size of the feature cache.
        losses: Mean training loss per epoch.
        seconds: Wall time per phase (``validate, cache, train, export, evaluate, hot_add, total``).
        hot_added: Whether the task was loaded into a running server.
    """

    task: str
    head_dir: Path
    classes: tuple[str, ...]
    maps: dict[str, dict[str, float]]
    num_images: int
    num_views: int
    epochs: int
    head_params: int
    cache_mb: float
    losses: list[float]
    seconds: dict[str, float]
    hot_added: bool


@dataclass(frozen=True)
class _Inputs:
    """Everything validated before work starts."""

    ws: Workspace
    cfg: PolyheadConfig
    train: CocoTask
    val: CocoTask
    reference: dict
    checkpoint: Path
    variants: tuple[str, ...]


def check_task_name(ws: Workspace, name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a valid, unused task name."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ConfigError(
            f"task name {name!r} is invalid: use 1-32 characters, a lowercase letter then lowercase "
            "letters, digits or '_' (it becomes Triton model and tensor names)"
        )
    if ws.head(name).exists():
        raise ConfigError(
            f"task {name!r} already exists ({ws.head(name)}); choose another name or remove that directory"
        )


def admitted_variants(ws: Workspace) -> tuple[str, ...]:
    """Names of trunk variants whose ``variant.json`` says ``admitted`` (the reference first)."""
    names = [v for v in ws.variants() if read_json(ws.variant(v) / "variant.json").get("admitted", False)]
    return tuple(sorted(names, key=lambda v: (v != REFERENCE, v)))


def _validate(
    workdir: str | Path, name: str, train_json: str | Path, val_json: str | Path, images: str | Path
) -> _Inputs:
    """Check every input and workspace artifact; nothing is written."""
    ws = Workspace.at(workdir)
    if not ws.root.is_dir():
        raise ArtifactError(f"workspace {ws.root} does not exist; run `polyhead train --workdir {ws.root}` first")
    check_task_name(ws, name)
    images = Path(images)
    if not images.is_dir():
        raise DataError(f"images directory {images} does not exist; pass the folder file_name entries are relative to")
    train = load_coco(train_json, images, name=name)
    val = load_coco(val_json, images, name=name)
    if not train.images or not any(train.annotations.values()):
        raise DataError(f"{train.path}: no annotated image; a new task needs labelled training images")
    if not val.images:
        raise DataError(f"{val.path}: lists no images; the head cannot be evaluated")
    if train.categories != val.categories:
        raise DataError(
            f"{val.path}: categories {list(val.categories)} differ from {train.path}: {list(train.categories)}; "
            "both files must list the same category ids and names"
        )
    ref_dir = ws.require(ws.variant(REFERENCE), "export the reference trunk first (`polyhead train`)")
    reference = read_json(ref_dir / "variant.json", "trunk variant")
    ws.require(ref_dir / "model.onnx", "re-export the reference trunk (`polyhead train`)")
    cfg = load_config(ws.config) if ws.config.is_file() else PolyheadConfig()
    checkpoint = find_trunk_checkpoint(ws.checkpoints, f"{cfg.trunk}.pt", reference.get("trunk_config"))
    return _Inputs(ws, cfg, train, val, reference, checkpoint, admitted_variants(ws))


def add_task(
    workdir: str | Path,
    name: str,
    train_json: str | Path,
    val_json: str | Path,
    images: str | Path,
    epochs: int = HeadTrainConfig.epochs,
    server: str | None = None,
    progress: bool = True,
    views: int = 2,
    train_cfg: HeadTrainConfig | None = None,
) -> AddTaskReport:
    """Train a head for a new task on the frozen reference trunk and publish it (optionally hot-load it).

    Args:
        workdir: The workspace (needs ``trunk/reference`` and its checkpoint).
        name: New task name, ``[a-z][a-z0-9_]{0,31}``, not yet under ``heads/``.
        train_json: COCO training annotations.
        val_json: COCO validation annotations (same categories).
        images: Directory that ``file_name`` entries are relative to.
        epochs: Head training epochs (ignored when ``train_cfg`` is given).
        server: ``HOST:PORT`` of a running embedded Triton (gRPC) to hot-load the task into.
        progress: Show progress bars.
        views: Cached views per training image (1 plain, 2 with a flip, more with random augmentation).
        train_cfg: Full head-training settings.

    Returns:
        An :class:`AddTaskReport`.

    Raises:
        ConfigError: Bad or existing task name, bad settings or server address.
        DataError: Missing images directory, malformed/empty annotation files (the message names the file).
        ArtifactError: Missing reference trunk or checkpoint, or a checkpoint that no longer matches it.
        ServingError: The server is unreachable or the hot load failed (everything added is removed).
    """
    t0 = time.perf_counter()
    cfg = train_cfg if train_cfg is not None else HeadTrainConfig(epochs=epochs)
    inputs = _validate(workdir, name, train_json, val_json, images)
    if server is not None:
        check_server(server, inputs.ws.repository, name)
    ws, size = inputs.ws, int(inputs.reference["input_size"])
    trunk = load_frozen_trunk(inputs.checkpoint, inputs.reference.get("trunk_config"))
    probe = next(iter_images(inputs.val, size, 4))  # (4, 3, S, S) uint8
    check_trunk_matches_onnx(trunk, ws.variant(REFERENCE) / "model.onnx", probe)
    seconds = {"validate": time.perf_counter() - t0}
    stage = Path(tempfile.mkdtemp(dir=ws.root, prefix=f".add-task-{name}-"))
    committed: _Commit | None = None
    try:
        t = time.perf_counter()
        cache = build_feature_cache(trunk, inputs.train, size, views, cfg.batch_size, seed=cfg.seed, progress=progress)
        with cache:
            seconds["cache"] = time.perf_counter() - t
            t = time.perf_counter()
            info = TaskInfo(inputs.train.class_names, tuple(c for c, _ in inputs.train.categories))
            torch.manual_seed(cfg.seed)
            head = DetectionHead(trunk.feature_specs, HeadConfig(len(info.classes), inputs.cfg.head.width,
                                                                 inputs.cfg.head.depth))
            losses = train_head_on_cache(head, cache, cfg, progress=progress)
            seconds["train"] = time.perf_counter() - t
            num_views, cache_mb = len(cache), cache.nbytes / 2**20
        t = time.perf_counter()
        staged = _stage_workspace(ws, stage, inputs.variants)
        with torch.inference_mode():
            check_feats = [trunk(probe)]
        publish_head(staged, name, head, info, size, post_config(inputs.cfg), check_feats, {
            "reference_trunk": REFERENCE, "trained_by": "add-task", "frozen_trunk": True,
            "train_json": str(Path(train_json).resolve()), "epochs": cfg.epochs, "views": views,
            "command": f"polyhead add-task --name {name} --train-json {train_json} --val-json {val_json} "
                       f"--images {images} --epochs {cfg.epochs}",
        })
        seconds["export"] = time.perf_counter() - t
        t = time.perf_counter()
        maps = {v: evaluate_head(staged, name, v, inputs.val, size) for v in inputs.variants}
        seconds["evaluate"] = time.perf_counter() - t
        committed = _commit(ws, staged, name, maps)
        t = time.perf_counter()
        if server is not None:
            hot_add_task(server, ws.repository, ws.root, name)
        seconds["hot_add"] = time.perf_counter() - t
    except BaseException:
        if committed is not None:
            committed.rollback()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    seconds["total"] = time.perf_counter() - t0
    return AddTaskReport(
        name, ws.head(name), info.classes, maps, len(inputs.train.images), num_views, cfg.epochs,
        sum(p.numel() for p in head.parameters()), cache_mb, losses, seconds, server is not None,
    )


def _stage_workspace(ws: Workspace, stage: Path, variants: tuple[str, ...]) -> Workspace:
    """A scratch workspace in ``stage`` with symlinks to the admitted variants' ONNX files (json copied).

    Symlinks, not hard links: a new hard link changes the file's ctime, and Triton reloads a model
    whose files' ctime changed (the repository hard-links the workspace's trunk files).
    """
    staged = Workspace.at(stage)
    for v in variants:
        dst = staged.variant(v)
        dst.mkdir(parents=True)
        (dst / "model.onnx").symlink_to((ws.variant(v) / "model.onnx").resolve())
        shutil.copy2(ws.variant(v) / "variant.json", dst / "variant.json")
    return staged


@dataclass
class _Commit:
    """What :func:`_commit` changed in the workspace, to undo it."""

    head_dir: Path
    originals: dict[Path, bytes]

    def rollback(self) -> None:
        """Remove the head and restore every changed ``variant.json``."""
        if self.head_dir.exists():
            trash = self.head_dir.with_name(f".{self.head_dir.name}.rollback.{os.getpid()}")
            os.replace(self.head_dir, trash)
            shutil.rmtree(trash, ignore_errors=True)
        for path, data in self.originals.items():
            tmp = path.with_name(f".{path.name}.restore")
            tmp.write_bytes(data)
            os.replace(tmp, path)


def _commit(ws: Workspace, staged: Workspace, name: str, maps: dict[str, dict[str, float]]) -> _Commit:
    """Rename the staged head into ``heads/<name>`` and record its mAP in every variant's json."""
    final = ws.head(name)
    if final.exists():
        raise ConfigError(f"task {name!r} appeared under {ws.heads_dir} while training; nothing was changed")
    ws.heads_dir.mkdir(parents=True, exist_ok=True)
    commit = _Commit(final, {})
    os.rename(staged.head(name), final)
    try:
        for variant, result in maps.items():
            path = ws.variant(variant) / "variant.json"
            commit.originals[path] = path.read_bytes()
            meta = read_json(path, "trunk variant")
            meta.setdefault("map", {})[name] = result
            atomic_write_json(path, meta)
    except BaseException:
        commit.rollback()
        raise
    return commit


# --- hot add: the serving layer is imported lazily, only when a server is given ----------------


def _triton_client(server: str):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server)


def check_server(server: str, repo: Path, name: str) -> None:
    """Check before training that ``server`` runs Triton with a ready ``trunk`` and ``repo`` is its repository.

    Raises:
        ConfigError: Malformed address.
        ArtifactError: ``repo`` is not a polyhead repository, or already has ``head_<name>``.
        ServingError: Nothing answers at ``server``, or it serves no ready ``trunk``.
    """
    from tritonclient.utils import InferenceServerException

    if not isinstance(server, str) or not SERVER_ADDRESS.fullmatch(server):
        raise ConfigError(f"server address {server!r} must be HOST:PORT of Triton's gRPC endpoint, e.g. 127.0.0.1:8001")
    if not (repo / "build.json").is_file():
        raise ArtifactError(f"{repo} is not a model repository; build it (`polyhead export`) and serve it first")
    for model in (f"head_{name}", f"detect_{name}"):
        if (repo / model).exists():
            raise ArtifactError(f"{repo / model} already exists; remove it or choose another task name")
    try:
        index = _triton_client(server).get_model_repository_index(as_json=True).get("models", [])
    except InferenceServerException as exc:
        raise ServingError(f"no Triton server answers at {server} ({exc.message()}); start `polyhead serve`") from None
    states = {m["name"]: m.get("state") for m in index}
    if states.get("trunk") != "READY" or "detect" not in states:
        raise ServingError(
            f"the server at {server} has no ready 'trunk' and 'detect' (models: {sorted(states)}); "
            f"is it serving {repo}?"
        )


def hot_add_task(server: str, repo: Path, workdir: Path, name: str, timeout_s: float = LOAD_TIMEOUT_S) -> None:
    """Write ``head_<name>``/``detect_<name>`` into the live ``repo``, load them and reload ``detect``.

    Uses Triton's model-control API, so the server never restarts and the trunk is not reloaded.
    If any load fails, what was loaded is unloaded and the repository files are restored.

    Raises:
        ServingError: If a load fails (after the repository was restored).
    """
    from tritonclient.utils import InferenceServerException

    from serving.repository import add_task_to_repository

    client = _triton_client(server)
    saved = {p: p.read_bytes() for p in (repo / "detect" / "config.pbtxt", repo / "build.json") if p.is_file()}
    added, loaded = (f"head_{name}", f"detect_{name}"), []
    try:
        add_task_to_repository(repo, workdir, name)
        precompile_backend(repo / added[0])  # else the first load writes __pycache__ and the next one reloads it
        for model in added:
            client.load_model(model, client_timeout=timeout_s)
            loaded.append(model)
        client.load_model("detect", client_timeout=timeout_s)
    except BaseException as exc:
        _undo_hot_add(client, repo, added, loaded, saved, timeout_s)
        if isinstance(exc, InferenceServerException):
            raise ServingError(
                f"hot load of task {name!r} into {server} failed ({exc.message()}); the live repository "
                "was restored and the existing tasks keep serving"
            ) from None
        raise


def precompile_backend(model_dir: Path) -> None:
    """Write ``__pycache__`` for every python-backend ``model.py`` under ``model_dir`` now.

    The python backend imports ``<model>/<version>/model.py``, which writes ``__pycache__`` into the
    version directory after the load; Triton then sees the model as modified and reloads it on the
    next load request that touches it (e.g. loading an ensemble that uses it).
    """
    import py_compile

    for source in Path(model_dir).rglob("model.py"):
        py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)), doraise=True)


def _undo_hot_add(client, repo: Path, added: tuple[str, ...], loaded: list[str], saved: dict[Path, bytes],
                  timeout_s: float) -> None:
    """Unload ``loaded`` models, remove the ``added`` directories, restore ``saved`` files, reload ``detect``."""
    from tritonclient.utils import InferenceServerException

    for model in reversed(loaded):
        try:
            client.unload_model(model, client_timeout=timeout_s)
        except InferenceServerException:
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
        client.load_model("detect", client_timeout=timeout_s)  # back to the restored fan-out
    except InferenceServerException:
        pass
