"""The `polyhead train` job: train trunk + heads, export them, and record their mAP in the workspace."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from heads.postprocess import PostprocessConfig
from shared.artifacts import atomic_write_bytes
from shared.errors import ConfigError
from shared.workspace import Workspace
from transfer.config import PolyheadConfig, dump_config, load_config
from transfer.data.coco import CocoTask, DataWarning, load_coco
from transfer.export.publish import REFERENCE, evaluate_head, publish_head, publish_trunk, sample_images
from transfer.training.devices import plan_device, resolve_device
from transfer.training.distillation import ImageNetTeacher
from transfer.training.distributed import env_context, launch, launched, process_group
from transfer.training.loop import load_tasks, train
from transfer.training.multitask_model import MultiTaskModel, load_checkpoint


@dataclass
class TrainReport:
    """What `polyhead train` did: per-task mAP on the reference trunk, sizes and time."""

    maps: dict[str, dict[str, float]]
    trunk_params: int
    head_params: dict[str, int]
    seconds: float


def resolve_config(ws: Workspace, config: str | Path | None, write: bool = True) -> PolyheadConfig:
    """Use ``config`` (copied into the workspace) or the workspace's own ``polyhead.yaml``, or defaults.

    ``write=False`` only reads: nothing is copied (:func:`save_config` does it once the data is checked).
    """
    if config is None and ws.config.exists():
        return load_config(ws.config)
    cfg = load_config(config) if config is not None else PolyheadConfig()
    if write:
        save_config(ws, cfg)
    return cfg


def save_config(ws: Workspace, cfg: PolyheadConfig) -> None:
    """Write ``cfg`` as the workspace's ``polyhead.yaml`` (atomically)."""
    atomic_write_bytes(ws.config, dump_config(cfg).encode())


def data_root(ws: Workspace, cfg: PolyheadConfig) -> Path:
    """Dataset directory (``data.root`` relative to the workspace)."""
    root = Path(cfg.data.root)
    return root if root.is_absolute() else ws.root / root


def check_data(cfg: PolyheadConfig, root: Path, strict: bool = False) -> dict[str, dict[str, CocoTask]]:
    """Load every task's ``train`` and ``val`` file and image headers before anything trains.

    Missing or unreadable images, wrong sizes and (with ``strict``) boxes that need clipping or
    dropping raise here, not mid-epoch or after training; fixes are counted once per file
    (:func:`transfer.data.coco.load_coco`).

    Returns:
        ``{"train": {task: CocoTask}, "val": {...}}``, for training and evaluation to use as loaded.

    Raises:
        DataError: From :func:`~transfer.data.coco.load_coco`, naming the file and the fix.
    """
    return {split: {task: load_coco(root / task / f"{split}.json", root / cfg.data.images, name=task, strict=strict)
                    for task in cfg.data.tasks} for split in ("train", "val")}


def post_config(cfg: PolyheadConfig) -> PostprocessConfig:
    """Detection thresholds from the config."""
    return PostprocessConfig(cfg.head.score_threshold, cfg.head.iou_threshold, cfg.head.max_dets)


def publish_model(
    ws: Workspace, cfg: PolyheadConfig, model: MultiTaskModel, variant: str = REFERENCE,
    val: dict[str, CocoTask] | None = None,
) -> dict:
    """Export ``model``'s trunk as ``variant`` and its heads, then evaluate every head on it.

    ``val``: the ``val`` splits already loaded (:func:`check_data`); ``None`` loads them.
    """
    val = val if val is not None else load_tasks(cfg, data_root(ws, cfg), "val")
    images = sample_images(next(iter(val.values())), cfg.input_size, 4)
    model.eval()
    publish_trunk(ws, model.trunk, variant, cfg.input_size, images, {"role": "reference"})
    with torch.no_grad():
        feats = model.trunk(images)
    maps = {}
    for name, head in model.heads.items():
        publish_head(ws, name, head, model.tasks[name], cfg.input_size, post_config(cfg), [feats],
                     {"reference_trunk": variant})
        maps[name] = evaluate_head(ws, name, variant, val[name], cfg.input_size)
    return maps


def run_train(
    workdir: str | Path, config: str | Path | None = None, teacher_checkpoint: str | Path | None = None,
    resume: bool = True, progress: bool = True, teacher_weights: str | Path | None = None,
    device: str = "auto", nproc: int = 1, strict: bool = False,
) -> TrainReport:
    """Train (resumable), export, evaluate. The checkpoint is ``checkpoints/<trunk>.pt``.

    A teacher is either a trained checkpoint (``teacher_checkpoint``: contract maps + heads) or the
    ImageNet MobileNetV2 (``teacher_weights``, or ``teacher_weights`` in the config: backbone maps).

    ``device`` is ``auto`` (CUDA when available), ``cpu`` or ``cuda``. With ``nproc`` > 1 the job
    starts ``nproc`` data-parallel processes on this machine (see
    :func:`transfer.training.distributed.launch`) and returns rank 0's report. A process that
    torchrun started (``RANK``/``WORLD_SIZE`` set, e.g. ``torchrun --nnodes ...``) is one rank of
    such a job whatever ``nproc`` says: rank 0 alone writes the checkpoint, exports and evaluates,
    the others wait for it. Several machines need one workspace on shared storage.

    Every split is loaded first (:func:`check_data`); ``strict`` refuses data that would need
    clipped or dropped boxes or corrected image sizes instead of fixing it.
    """
    ws = Workspace.at(workdir)
    if nproc > 1 and not launched():
        resolve_device(device, nproc - 1)  # a clear error (no CUDA, too few GPUs) before any process starts
        resolve_config(ws, config, write=False)  # a bad config fails here, before any process starts
        return launch(nproc, run_train, ws.root, config, teacher_checkpoint, resume, progress, teacher_weights,
                      device, nproc, strict)[0]
    ctx = env_context()
    plan = plan_device(device, ctx.local_rank)
    cfg = resolve_config(ws, config, write=False)  # every rank reads it; rank 0 writes it once the data is checked
    if teacher_checkpoint and (teacher_weights or cfg.teacher_weights):
        raise ConfigError("give one teacher: --teacher CKPT or --teacher-weights FILE, not both")
    with warnings.catch_warnings():
        if not ctx.is_main:  # rank 0 prints the data's warnings for the job
            warnings.simplefilter("ignore", DataWarning)
        splits = check_data(cfg, data_root(ws, cfg), strict)  # before any teacher is loaded or epoch run
    if ctx.is_main:
        save_config(ws, cfg)
    teacher = load_checkpoint(teacher_checkpoint)[0] if teacher_checkpoint else None
    if teacher_weights:  # a command-line path: relative to the current directory
        teacher = ImageNetTeacher.from_weights(teacher_weights)
    elif cfg.teacher_weights:  # a config path: relative to the workspace
        path = Path(cfg.teacher_weights)
        teacher = ImageNetTeacher.from_weights(path if path.is_absolute() else ws.root / path)
    if teacher is not None and cfg.train.distill_weight <= 0:
        cfg = replace(cfg, train=replace(cfg.train, distill_weight=1.0))  # --teacher implies distillation
    with process_group(plan.device) as ctx:
        result = train(cfg, data_root(ws, cfg), ws.checkpoints / f"{cfg.trunk}.pt", teacher, resume, progress,
                       plan, ctx, tasks=splits["train"])
        maps = publish_model(ws, cfg, result.model, val=splits["val"]) if ctx.is_main else {}
        ctx.barrier()  # the other ranks wait for rank 0's exports
    return TrainReport(
        maps,
        sum(p.numel() for p in result.model.trunk.parameters()),
        {n: sum(p.numel() for p in h.parameters()) for n, h in result.model.heads.items()},
        result.seconds,
    )
