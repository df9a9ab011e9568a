"""Multi-task training of the trunk and one head per task (optionally distilled from a teacher)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from heads.head import HeadOutput
from heads.loss import DetectionLoss
from shared.artifacts import atomic_write_json
from shared.backbone import bn_scale_l1
from shared.errors import ConfigError
from shared.trunk import trunk_config
from transfer.config import PolyheadConfig
from transfer.data.augment import Augment
from transfer.data.coco import CocoTask, load_coco
from transfer.data.datasets import MultiTaskDataset, collate_multitask
from transfer.training.devices import DevicePlan, cpu_cores, cpu_module, plan_device, scaled_step, to_cpu
from transfer.training.distillation import FeatureDistiller, ImageNetTeacher, response_distillation, stride_keys
from transfer.training.distributed import DistContext
from transfer.training.multitask_model import MultiTaskModel, TaskInfo, build_model, load_checkpoint, save_checkpoint
from transfer.training.schedule import warmup_cosine_lr


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the model, where it was saved, time, last losses and every step's loss."""

    model: MultiTaskModel
    checkpoint: Path
    seconds: float
    epochs_run: int
    losses: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)  # total loss of every step run (this rank's)


def history_path(checkpoint: str | Path) -> Path:
    """``<checkpoint stem>.history.json`` beside the checkpoint: the loss of every step of the last run."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.history.json")


def load_tasks(cfg: PolyheadConfig, root: Path, split: str) -> dict[str, CocoTask]:
    """Load ``<root>/<task>/<split>.json`` for every configured task."""
    images = root / cfg.data.images
    return {t: load_coco(root / t / f"{split}.json", images, name=t) for t in cfg.data.tasks}


def task_infos(tasks: dict[str, CocoTask]) -> dict[str, TaskInfo]:
    """Class names and category ids of every task (label order = category id order)."""
    return {n: TaskInfo(t.class_names, tuple(c for c, _ in t.categories)) for n, t in tasks.items()}


def _distiller(model: MultiTaskModel, teacher: MultiTaskModel | ImageNetTeacher) -> FeatureDistiller:
    """Adapters from the student's maps to the teacher's: backbone taps for ImageNet, else the contract."""
    teacher.eval()
    if isinstance(teacher, ImageNetTeacher):
        return FeatureDistiller(stride_keys(model.trunk.backbone.out_channels), teacher.channels)
    return FeatureDistiller.for_contract(model.trunk.feature_specs, teacher.trunk.feature_specs)


def _distill_loss(
    distiller: FeatureDistiller, teacher: MultiTaskModel | ImageNetTeacher, images: Tensor,
    taps: dict[int, Tensor], feats: dict[str, Tensor], outs: dict[str, HeadOutput],
) -> Tensor:
    """Feature (+ response, for a task model teacher) distillation loss of one batch."""
    with torch.no_grad():
        target = teacher(images)
    if isinstance(teacher, ImageNetTeacher):
        return distiller(stride_keys(taps), target)
    t_feats, t_outs = target
    kd = distiller(feats, t_feats)
    return kd + sum(response_distillation(outs[n], t_outs[n]) for n in outs if n in t_outs)


class _TrainStep(nn.Module):
    """The model (and distiller) with the loss, as one ``forward``: what DistributedDataParallel wraps.

    DDP synchronises the gradients of what runs inside its ``forward``; the loop needs
    ``forward_with_taps`` and the distiller's adapters, so both run here. The teacher is frozen and
    kept outside the module tree (DDP neither broadcasts nor reduces it).
    """

    def __init__(self, cfg: PolyheadConfig, model: MultiTaskModel, distiller: FeatureDistiller | None,
                 teacher: MultiTaskModel | ImageNetTeacher | None) -> None:
        super().__init__()
        self.model, self.distiller = model, distiller
        self._teacher = [teacher]  # a list: not registered as a submodule
        self.cfg, self.loss_fn = cfg.train, DetectionLoss()
        self.tie_heads = False  # set under DDP: every head's parameters get a (maybe zero) gradient

    def forward(self, images: Tensor, targets: dict[str, list]) -> tuple[Tensor, dict[str, Tensor]]:  # noqa: D102
        taps, feats, outs = self.model.forward_with_taps(images)
        losses = {n: self.loss_fn(outs[n], targets[n])["total"] for n in outs}
        loss = sum(losses.values())
        if self.distiller is not None:
            kd = _distill_loss(self.distiller, self._teacher[0], images, taps, feats, outs)
            loss = loss + self.cfg.distill_weight * kd
            losses["distill"] = kd
        if self.cfg.bn_l1 > 0:
            loss = loss + self.cfg.bn_l1 * bn_scale_l1(self.model.trunk.backbone)
        if self.tie_heads:  # a head whose task has no target in this batch would leave DDP waiting for it
            loss = loss + sum(0.0 * (o.logits.sum() + o.distances.sum()) for o in outs.values())
        return loss, losses


def _loader(cfg: PolyheadConfig, ds: MultiTaskDataset, epoch: int, ctx: DistContext, plan: DevicePlan) -> DataLoader:
    """One epoch's batches: shuffled by the seed; with several ranks, each gets its share (DistributedSampler)."""
    common = {"collate_fn": collate_multitask, "num_workers": 1, "drop_last": True, "pin_memory": plan.is_cuda}
    if not ctx.is_distributed:
        g = torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch)
        return DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, generator=g, **common)
    sampler = DistributedSampler(ds, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.train.seed)
    sampler.set_epoch(epoch)
    return DataLoader(ds, batch_size=cfg.train.batch_size // ctx.world_size, sampler=sampler, **common)


def _place(modules: tuple[nn.Module | None, ...], device: torch.device, memory_format: torch.memory_format) -> None:
    """Move the modules given (``None``: skipped) to ``device`` in ``memory_format``."""
    for module in modules:
        if module is not None:
            module.to(device, memory_format=memory_format)


def param_groups(cfg: PolyheadConfig, model: MultiTaskModel, distiller: nn.Module | None) -> list[dict]:
    """AdamW groups, each with its ``lr_scale``: a pretrained backbone at ``train.backbone_lr_scale``, the rest at 1."""
    backbone = list(model.trunk.backbone.parameters()) if trunk_config(cfg.trunk).pretrained else []
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids] + (list(distiller.parameters()) if distiller else [])
    groups = [{"params": rest, "lr_scale": 1.0}]
    if backbone:
        groups.append({"params": backbone, "lr_scale": cfg.train.backbone_lr_scale})
    return groups


def rank_threads(cfg: PolyheadConfig, ctx: DistContext) -> int:
    """CPU threads of one rank: ``train.threads`` alone, else this machine's cores shared by its ranks."""
    return cfg.train.threads if not ctx.is_distributed else max(1, cpu_cores() // ctx.local_world_size)


def train(
    cfg: PolyheadConfig,
    data_root: str | Path,
    checkpoint: str | Path,
    teacher: MultiTaskModel | ImageNetTeacher | None = None,
    resume: bool = True,
    progress: bool = True,
    device: str | DevicePlan = "auto",
    ctx: DistContext | None = None,
    tasks: dict[str, CocoTask] | None = None,
) -> TrainResult:
    """Train trunk + heads on ``cfg.data.tasks``; resumable from ``checkpoint`` (saved every epoch).

    Args:
        cfg: Validated configuration.
        data_root: Dataset directory (``images/``, ``<task>/train.json``).
        checkpoint: Checkpoint path; if it exists and ``resume``, training continues from it.
        teacher: Optional teacher the student imitates with weight ``cfg.train.distill_weight``:
            a trained :class:`MultiTaskModel` (contract maps + heads, for tasks it has) or an
            :class:`ImageNetTeacher` (the student's backbone maps against its ImageNet features).
        resume: Continue from an existing checkpoint.
        progress: Show a progress bar (rank 0 only).
        device: ``auto``/``cpu``/``cuda`` (see :func:`plan_device`) or a plan. CUDA trains under
            autocast (bf16, or fp16 with a loss scaler); the CPU in fp32 with ``train.threads``.
        ctx: This rank's place in a data-parallel job whose process group is initialised
            (:func:`transfer.training.distributed.process_group`); ``None``: one process. Ranks
            split each epoch (``train.batch_size`` is the global batch), the model runs in
            DistributedDataParallel, and rank 0 alone writes the checkpoint.
        tasks: The ``train`` splits already loaded (:func:`load_tasks`); ``None`` loads them.

    Returns:
        The trained model (on the CPU), the checkpoint path, time, and the losses. Rank 0 also
        writes every step's loss to :func:`history_path` (``{"start_epoch", "steps_per_epoch", "loss"}``).

    Raises:
        ConfigError: If ``train.batch_size`` is not a multiple of the number of ranks.
    """
    ctx = ctx or DistContext()
    plan = device if isinstance(device, DevicePlan) else plan_device(device, ctx.local_rank)
    if cfg.train.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} does not split over {ctx.world_size} "
                          f"processes; set it to a multiple of {ctx.world_size} or change --nproc")
    torch.manual_seed(cfg.train.seed)
    plan.set_threads(rank_threads(cfg, ctx))
    data_root, checkpoint = Path(data_root), Path(checkpoint)
    tasks = tasks if tasks is not None else load_tasks(cfg, data_root, "train")
    ds = MultiTaskDataset(tasks, data_root / cfg.data.images, cfg.input_size, Augment(), seed=cfg.train.seed)
    if ctx.broadcast(resume and checkpoint.exists()):  # rank 0 decides: every rank resumes, or none
        model, state = load_checkpoint(checkpoint)
    else:
        model, state = build_model(trunk_config(cfg.trunk), task_infos(tasks), cfg.head.width, cfg.head.depth), {}
    start_epoch = int(state.get("epoch", 0))
    distiller = _distiller(model, teacher) if teacher is not None and cfg.train.distill_weight > 0 else None
    # Channels-last: the trunk's depthwise convolutions train ~1.4x faster a step on CPU (oneDNN, measured).
    _place((model, distiller, teacher), plan.device, torch.channels_last)
    groups = param_groups(cfg, model, distiller)
    params = [p for group in groups for p in group["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if "optimizer" in state:
        opt.load_state_dict(state["optimizer"])  # moves the state to the parameters' device
    step_fn: nn.Module = _TrainStep(cfg, model, distiller, teacher)
    if ctx.is_distributed:  # broadcasts rank 0's weights and buffers, then averages the gradients
        step_fn.tie_heads = True
        step_fn = DistributedDataParallel(step_fn, device_ids=[plan.device.index] if plan.is_cuda else None)
    scaler = plan.grad_scaler()
    steps_per_epoch = math.ceil(len(ds) / cfg.train.batch_size)
    total = steps_per_epoch * cfg.train.epochs
    t0, last, history = time.time(), {}, []
    for epoch in range(start_epoch, cfg.train.epochs):
        ds.set_epoch(epoch)
        model.train()
        bar = tqdm(_loader(cfg, ds, epoch, ctx, plan), desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not (progress and ctx.is_main), leave=False)
        for i, (images, targets, _) in enumerate(bar):
            lr = warmup_cosine_lr(epoch * steps_per_epoch + i, total, cfg.train.lr, cfg.train.warmup_steps)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            images = plan.move(images).contiguous(memory_format=torch.channels_last)
            with plan.autocast():
                loss, losses = step_fn(images, plan.move(targets))
            scaled_step(scaler, opt, loss, clip=params)
            last = {k: float(v.detach()) for k, v in losses.items()}
            history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        if ctx.is_main:  # CPU tensors: the checkpoint loads on any machine
            save_checkpoint(checkpoint, cpu_module(model), {"epoch": epoch + 1, "optimizer": to_cpu(opt.state_dict())})
    _place((model, distiller, teacher), torch.device("cpu"), torch.contiguous_format)
    if ctx.is_main:  # the loss curve `polyhead report` draws (a resumed run records its own steps)
        atomic_write_json(history_path(checkpoint), {"start_epoch": start_epoch, "steps_per_epoch": steps_per_epoch,
                                                     "loss": history})
    ctx.barrier()  # every rank has finished its steps (rank 0: and its last checkpoint)
    return TrainResult(model, checkpoint, time.time() - t0, cfg.train.epochs - start_epoch, last, history)
