"""`polyhead add-task`: train only a new head on the frozen reference trunk, export it, hot-load it.

The whole command is one transaction on the workspace. Every input is checked before any work;
the head is exported and evaluated on every admitted trunk variant inside a hidden staging
directory; only then is ``heads/<name>`` renamed into place and each ``variant.json`` given the
new task's mAP. Any failure (bad input, an exception, Ctrl-C, a failed hot load) removes what was
added and restores the files it changed, so the workspace is left as it was.

A run killed outright (SIGKILL, OOM killer, power loss) cannot clean up: its staging directory
``.add-task-<name>-<host>-<pid>-<random>`` stays hidden in the workspace (nothing reads it), and the
next ``add_task`` removes every such directory whose process is gone (:func:`remove_stale_staging`).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from heads.head import DetectionHead, HeadArchitecture
from shared import task_names
from shared.artifact_records import (
    VARIANT_FILE,
    VariantRecord,
    read_variant_json,
    read_variant_record,
    record_map_result,
)
from shared.artifacts import atomic_write_bytes
from shared.errors import ArtifactError, ConfigError, DataError
from shared.workspace import Workspace
from transfer.compression.catalogue import DEFAULT_TOLERANCE_POINTS, head_drops_over_tolerance
from transfer.compression.measure import admission_rule
from transfer.config import PolyheadConfig, load_config
from transfer.data.coco import CocoTask, load_coco
from transfer.export.publish import REFERENCE, evaluate_head, publish_head
from transfer.train import post_config
from transfer.training.devices import plan_device
from transfer.training.feature_cache import (
    DEFAULT_VIEWS,
    DeviceTrunk,
    HeadOnlyTrainConfig,
    OnnxTrunk,
    build_feature_cache,
    check_trunk_matches_onnx,
    find_trunk_checkpoint,
    iter_images,
    load_frozen_trunk,
    train_head_on_cache,
)
from transfer.training.multitask_model import TaskInfo

#: ``.add-task-<name>-<host>-<pid>-<mkdtemp suffix>``: none of the parts can hold a '-'.
_STAGE = re.compile(rf"\.add-task-{task_names.TASK_NAME_PATTERN}-(?P<host>[a-z0-9_]+)-(?P<pid>\d+)-[a-z0-9_]+")
#: ``heads/.<name>.rollback.<pid>``: a head being removed by a rollback that was killed.
_ROLLBACK = re.compile(rf"\.{task_names.TASK_NAME_PATTERN}\.rollback\.(?P<pid>\d+)")


class LiveTarget(Protocol):
    """Where a new head goes live after it is committed (implemented by ``serving.triton.hot_add``)."""

    def check(self, repo: Path, name: str) -> None:
        """Fail early (before training) if the task cannot be hot-added."""

    def add(self, repo: Path, workdir: Path, name: str) -> None:
        """Write the task into ``repo`` and load it; on failure undo and raise."""


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
        tolerance_points: The catalogue's admission tolerance the new head was checked against.
        over_tolerance: Variant -> mAP points the new head loses there against the reference, for
            the variants that lose more than ``tolerance_points`` (worst first; a
            :class:`HeadAccuracyWarning` names them).
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
    tolerance_points: float = DEFAULT_TOLERANCE_POINTS
    over_tolerance: dict[str, float] = field(default_factory=dict)


class HeadAccuracyWarning(UserWarning):
    """A new head loses more than the catalogue's tolerance on admitted trunk variants; the line names them."""


@dataclass(frozen=True)
class _Inputs:
    """Everything validated before work starts."""

    ws: Workspace
    cfg: PolyheadConfig
    train: CocoTask
    val: CocoTask
    reference: VariantRecord
    checkpoint: Path
    variants: tuple[str, ...]


def check_task_name(ws: Workspace, name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a valid (:mod:`shared.task_names`), unused task name."""
    task_names.check_task_name(name)
    if ws.head(name).exists():
        raise ConfigError(
            f"task {name!r} already exists ({ws.head(name)}); choose another name or remove that directory"
        )


def admitted_variants(ws: Workspace) -> tuple[str, ...]:
    """Names of trunk variants whose ``variant.json`` says ``admitted`` (the reference first)."""
    names = [v for v in ws.variants() if read_variant_json(ws.variant(v)).get("admitted", False)]
    return tuple(sorted(names, key=lambda v: (v != REFERENCE, v)))


def _validate(
    workdir: str | Path, name: str, train_json: str | Path, val_json: str | Path, images: str | Path,
    strict: bool = False,
) -> _Inputs:
    """Check every input and workspace artifact; nothing is written."""
    ws = Workspace.at(workdir)
    if not ws.root.is_dir():
        raise ArtifactError(f"workspace {ws.root} does not exist; run `polyhead train --workdir {ws.root}` first")
    check_task_name(ws, name)
    images = Path(images)
    if not images.is_dir():
        raise DataError(f"images directory {images} does not exist; pass the folder file_name entries are relative to")
    train = load_coco(train_json, images, name=name, strict=strict)
    val = load_coco(val_json, images, name=name, strict=strict)
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
    reference = read_variant_record(ref_dir)
    ws.require(ref_dir / "model.onnx", "re-export the reference trunk (`polyhead train`)")
    cfg = load_config(ws.config) if ws.config.is_file() else PolyheadConfig()
    checkpoint = find_trunk_checkpoint(ws.checkpoints, f"{cfg.trunk}.pt", reference.trunk_config)
    return _Inputs(ws, cfg, train, val, reference, checkpoint, admitted_variants(ws))


def add_task(
    workdir: str | Path,
    name: str,
    train_json: str | Path,
    val_json: str | Path,
    images: str | Path,
    epochs: int = HeadOnlyTrainConfig.epochs,
    live: LiveTarget | None = None,
    progress: bool = True,
    views: int = DEFAULT_VIEWS,
    train_cfg: HeadOnlyTrainConfig | None = None,
    strict: bool = False,
    device: str = "auto",
) -> AddTaskReport:
    """Train a head for a new task on the frozen reference trunk and publish it (optionally hot-load it).

    Args:
        workdir: The workspace (needs ``trunk/reference`` and its checkpoint).
        name: New task name (:data:`shared.task_names.TASK_NAME_PATTERN`), not yet under ``heads/``.
        train_json: COCO training annotations.
        val_json: COCO validation annotations (same categories).
        images: Directory that ``file_name`` entries are relative to.
        epochs: Head training epochs (ignored when ``train_cfg`` is given).
        live: Hot-add target (e.g. ``serving.triton.hot_add.TritonHotAdd(url)``): checked before training,
            called after the head is committed; if it fails, the workspace is rolled back.
        progress: Show progress bars.
        views: Cached views per training image (1 plain, 2 with a flip, more with random augmentation).
        train_cfg: Full head-training settings.
        strict: Refuse annotation files whose boxes need clipping or dropping, or whose image sizes need
            correcting (default: fix them and warn with one line per file).
        device: ``auto`` | ``cpu`` | ``cuda``: where the features are cached and the head trained.
            On the CPU the exported ONNX trunk computes the cache (the server's own features); on
            CUDA the PyTorch trunk does, under bf16/fp16 autocast (onnxruntime here is CPU-only).
            The head is evaluated in ONNX on the CPU either way.

    Returns:
        An :class:`AddTaskReport`.

    Raises:
        ConfigError: Bad or existing task name, bad settings or server address.
        DataError: Missing images directory, malformed/empty annotation files, missing or unreadable
            images, wrong image sizes, or with ``strict`` boxes that need fixing (the message names the file).
        ArtifactError: Missing reference trunk or checkpoint, or a checkpoint that no longer matches it.
        ServingError: From ``live``: the server is unreachable or the hot load failed (rolled back).
    """
    t0 = time.perf_counter()
    cfg = train_cfg if train_cfg is not None else HeadOnlyTrainConfig(epochs=epochs)
    plan = plan_device(device)  # a clear error (no CUDA) before anything is read
    inputs = _validate(workdir, name, train_json, val_json, images, strict)
    remove_stale_staging(inputs.ws)
    admission = admission_rule(inputs.ws)
    if live is not None:
        live.check(inputs.ws.repository, name)
    ws, size = inputs.ws, inputs.reference.input_size
    trunk = load_frozen_trunk(inputs.checkpoint, inputs.reference.trunk_config)
    probe = next(iter_images(inputs.val, size, 4))  # (4, 3, S, S) uint8
    onnx_trunk = OnnxTrunk(ws.variant(REFERENCE) / "model.onnx", trunk.feature_specs)  # also builds the cache
    check_trunk_matches_onnx(trunk, onnx_trunk, probe)
    seconds = {"validate": time.perf_counter() - t0}
    stage = Path(tempfile.mkdtemp(dir=ws.root, prefix=f".add-task-{name}-{_host_tag()}-{os.getpid()}-"))
    committed: _Commit | None = None
    try:
        t = time.perf_counter()
        cacher = DeviceTrunk(copy.deepcopy(trunk), plan) if plan.is_cuda else onnx_trunk
        cache = build_feature_cache(cacher, inputs.train, size, views, cfg.batch_size, seed=cfg.seed,
                                    progress=progress)
        with cache:
            seconds["cache"] = time.perf_counter() - t
            t = time.perf_counter()
            info = TaskInfo(inputs.train.class_names, tuple(c for c, _ in inputs.train.categories))
            torch.manual_seed(cfg.seed)
            arch = HeadArchitecture(len(info.classes), inputs.cfg.head.width, inputs.cfg.head.transfer_depth)
            head = DetectionHead(trunk.feature_specs, arch)
            losses = train_head_on_cache(head, cache, cfg, progress=progress, plan=plan)
            seconds["train"] = time.perf_counter() - t
            num_views, cache_mb = len(cache), cache.nbytes / 2**20
        t = time.perf_counter()
        staged = _stage_workspace(ws, stage, inputs.variants)
        with torch.inference_mode():
            check_feats = [trunk(probe)]
        publish_head(staged, name, head, info, size, post_config(inputs.cfg), check_feats, {
            "reference_trunk": REFERENCE, "trained_by": "add-task", "frozen_trunk": True,
            "train_json": str(Path(train_json).resolve()), "val_json": str(Path(val_json).resolve()),
            "images": str(Path(images).resolve()), "epochs": cfg.epochs, "views": views,
            "command": f"polyhead add-task --name {name} --train-json {train_json} --val-json {val_json} "
                       f"--images {images} --epochs {cfg.epochs}",
        })
        seconds["export"] = time.perf_counter() - t
        t = time.perf_counter()
        maps = {v: evaluate_head(staged, name, v, inputs.val, size) for v in inputs.variants}
        seconds["evaluate"] = time.perf_counter() - t
        committed = _commit(ws, staged, name, maps)
        t = time.perf_counter()
        if live is not None:
            live.add(ws.repository, ws.root, name)
        seconds["hot_add"] = time.perf_counter() - t
    except BaseException:
        if committed is not None:
            committed.rollback()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    seconds["total"] = time.perf_counter() - t0
    over = _check_variant_accuracy(name, maps, *admission)
    return AddTaskReport(
        name, ws.head(name), info.classes, maps, len(inputs.train.images), num_views, cfg.epochs,
        sum(p.numel() for p in head.parameters()), cache_mb, losses, seconds, live is not None, admission[0], over,
    )


def _check_variant_accuracy(name: str, maps: dict[str, dict[str, float]], tolerance: float,
                            tasks: list[str] | None) -> dict[str, float]:  # fmt: skip
    """Variant -> points the new head loses there; warns once, naming every variant beyond ``tolerance``.

    Variants are admitted on the tasks their catalogue was built with, so a head added later is not
    part of that check: a sub-network of a supernet distilled on other images can lose more on it
    than on them (docs/benchmarks.md, elastic trunk, eighth run).
    """
    over = head_drops_over_tolerance({v: m["map"] for v, m in maps.items()}, REFERENCE, tolerance)
    if over:
        worst = ", ".join(f"{v} -{d:.1f}" for v, d in over.items())
        warnings.warn(
            f"head {name!r} loses more than the catalogue's tolerance of {tolerance:g} mAP points on {len(over)} of "
            f"{len(maps) - 1} trunk variants ({worst}; {maps[REFERENCE]['map']:.3f} on the {REFERENCE}). They stay "
            f"admitted{f' (admission counts the tasks {tasks})' if tasks else ''}, so {name!r} answered by them "
            "loses that much. To fix it, rerun `polyhead search`: it distils its sub-networks on this head's "
            "training images too (a new supernet training); meanwhile `polyhead variant set` pins the served "
            "default to a variant within tolerance",
            HeadAccuracyWarning, stacklevel=3)
    return over


def _host_tag() -> str:
    """The machine's name reduced to ``[a-z0-9_]`` (staging names carry it: pids are per host)."""
    return re.sub(r"[^a-z0-9_]", "_", socket.gethostname().lower())[:24] or "host"


def _process_gone(pid: int) -> bool:
    """Whether no live process has ``pid`` on this machine (a zombie counts as gone)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    try:  # Linux: a killed child its parent has not reaped yet is a zombie ('Z')
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def remove_stale_staging(ws: Workspace) -> list[Path]:
    """Remove what killed ``add-task`` runs on this host left behind; return the removed paths.

    That is every ``.add-task-*`` staging directory in the workspace and every ``heads/.<name>.rollback.<pid>``
    directory whose owner process is gone. Directories of live runs (a concurrent add-task of
    another task), of other hosts sharing the workspace, and anything not matching these names are
    left alone.

    Args:
        ws: The workspace.

    Returns:
        The directories removed.
    """
    stale = []
    host = _host_tag()
    for path in ws.root.glob(".add-task-*"):
        match = _STAGE.fullmatch(path.name)
        if match and match["host"] == host and path.is_dir() and _process_gone(int(match["pid"])):
            stale.append(path)
    if ws.heads_dir.is_dir():
        for path in ws.heads_dir.glob(".*.rollback.*"):
            match = _ROLLBACK.fullmatch(path.name)
            if match and path.is_dir() and _process_gone(int(match["pid"])):
                stale.append(path)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


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
            atomic_write_bytes(path, data)


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
            path = ws.variant(variant) / VARIANT_FILE
            commit.originals[path] = path.read_bytes()
            record_map_result(path, name, result)
    except BaseException:
        commit.rollback()
        raise
    return commit
