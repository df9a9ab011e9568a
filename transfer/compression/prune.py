"""Cyclic structured pruning of the trunk's expanded channels, with feature-distillation fine-tuning.

Only the expanded (hidden) channels inside :class:`~shared.blocks.InvertedResidual` blocks are
pruned: every block keeps its input/output widths, the neck and the contract maps are untouched,
so the pruned trunk still satisfies the contract and existing heads stay valid once it has been
fine-tuned to reproduce the reference trunk's ``p3, p4, p5`` (no labels needed).

A pruned trunk is plain data: its :class:`~shared.trunk.TrunkConfig` (with
``BackboneConfig.hidden`` set) plus a state_dict, saved with :func:`save_trunk` and reloaded with
``torch.load(weights_only=True)`` by :func:`load_trunk`.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from shared.artifacts import atomic_write_bytes
from shared.blocks import InvertedResidual
from shared.errors import ArtifactError, ConfigError
from shared.trunk import Trunk, TrunkConfig
from transfer.data.datasets import ImageFolderDataset
from transfer.training.devices import CPU_PLAN, DevicePlan, scaled_step
from transfer.training.distillation import FeatureDistiller, response_distillation
from transfer.training.schedule import warmup_cosine_lr


@dataclass(frozen=True)
class PruneSettings:
    """One prune -> fine-tune round.

    Attributes:
        ratio: Fraction of the current hidden channels of every prunable block removed this round.
        round_to: Hidden widths are rounded to a multiple of this (SIMD-friendly on CPUs/GPUs).
        global_pruning: Rank channels across blocks (network slimming) instead of per block.
        steps: Fine-tune optimiser steps (feature distillation towards the reference trunk).
        batch_size: Images per fine-tune step.
        lr: Peak AdamW learning rate of the fine-tune (cosine decay).
        seed: Seed of the fine-tune's shuffling.
        freeze_bn: Fine-tune with BatchNorm in eval mode (running statistics frozen; affine terms and
            convs still learn), so the loss is computed on exactly the function that is exported.
        response_weight: Weight of response distillation through the workspace's frozen jointly
            trained heads (their outputs on the pruned features imitate their outputs on the
            reference features; still no labels). 0 = feature distillation only.
    """

    ratio: float = 0.15
    round_to: int = 8
    global_pruning: bool = False
    steps: int = 600  # 200 left a distilled student's pruned variants 4-5 mAP points down; 600: <= 0.7 (measured)
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    freeze_bn: bool = True
    response_weight: float = 1.0  # teacher pruned 2 x 45 %: -0.44 / -0.82 points vs -1.10 / -1.94 without (measured)

    def __post_init__(self):
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"prune ratio must be in (0, 1), got {self.ratio}")
        if self.steps < 0 or self.batch_size < 1 or self.round_to < 1 or self.response_weight < 0:
            raise ConfigError(f"prune steps/batch_size/round_to must be positive and response_weight >= 0, got {self}")

    def to_dict(self) -> dict:
        """JSON form recorded in ``variant.json`` (a resumed run redoes a round whose settings differ)."""
        return dict(self.__dict__)


def prunable_convs(trunk: Trunk) -> list[nn.Conv2d]:
    """The expand 1x1 and depthwise 3x3 convs of every block that has an expand conv (in order)."""
    convs: list[nn.Conv2d] = []
    for block in trunk.backbone.blocks:
        assert isinstance(block, InvertedResidual)
        layers = list(block.conv)
        if len(layers) == 3:  # expand, depthwise, project; without expand, hidden == block input
            convs += [layers[0][0], layers[1][0]]
    return convs


def hidden_widths(trunk: Trunk) -> tuple[int, ...]:
    """Current expanded width of every block, read from its depthwise conv."""
    return tuple(int(list(block.conv)[-2][0].out_channels) for block in trunk.backbone.blocks)


def prune_trunk(trunk: Trunk, settings: PruneSettings, example_size: int = 64) -> Trunk:
    """Remove ``settings.ratio`` of the hidden channels by BN-scale importance; return a rebuilt trunk.

    Uses torch-pruning's :class:`~torch_pruning.pruner.BNScalePruner` with every conv except the
    blocks' expand/depthwise convs in ``ignored_layers``, so a group is pruned only when all its
    out-channel members are hidden channels. The result is rebuilt from
    ``TrunkConfig(backbone.with_hidden(...))`` and the pruned weights are loaded into it.

    Args:
        trunk: Trunk to prune (not modified).
        settings: Ratio, rounding and ranking.
        example_size: Side of the dummy image used to trace the dependency graph.

    Returns:
        A new :class:`Trunk` (eval mode) with the pruned config; its contract is checked on construction.
    """
    import torch_pruning as tp

    work = copy.deepcopy(trunk).eval()
    keep = set(prunable_convs(work))
    ignored = [m for m in work.modules() if isinstance(m, nn.Conv2d) and m not in keep]
    example = torch.zeros(1, 3, example_size, example_size, dtype=torch.uint8)
    pruner = tp.pruner.BNScalePruner(
        work, example, importance=tp.importance.BNScaleImportance(), pruning_ratio=settings.ratio,
        global_pruning=settings.global_pruning, max_pruning_ratio=0.9, ignored_layers=ignored,
        round_to=settings.round_to,
    )
    pruner.step()
    cfg = TrunkConfig(trunk.cfg.backbone.with_hidden(hidden_widths(work)), trunk.cfg.channels)
    rebuilt = Trunk(cfg)
    rebuilt.load_state_dict(work.state_dict())
    return rebuilt.eval()


def load_images(paths: Sequence[str | Path], size: int) -> Tensor:
    """Letterbox image files into one ``(N, 3, S, S)`` uint8 tensor (fine-tune and calibration set)."""
    loader = DataLoader(ImageFolderDataset(list(paths), size), batch_size=64, num_workers=0)
    return torch.cat(list(loader))


@torch.no_grad()
def trunk_features(
    trunk: Trunk, images: Tensor, batch_size: int = 64, plan: DevicePlan | None = None
) -> dict[str, Tensor]:
    """Eval-mode features of ``images (N,3,S,S)``: ``{name: (N, C, S/stride, S/stride)}`` float32 CPU tensors.

    ``plan``: where to compute them (fp32 even on CUDA: they are a distillation target); the trunk
    comes back on the CPU.
    """
    device = (plan or CPU_PLAN).device
    trunk.eval().to(device)
    parts = [{n: f.cpu() for n, f in trunk(images[i : i + batch_size].to(device)).items()}
             for i in range(0, len(images), batch_size)]
    trunk.cpu()
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def feature_error(student: Trunk, target: dict[str, Tensor], images: Tensor) -> float:
    """Mean over maps of MSE / var(target): 0 is a perfect copy, 1 is as bad as predicting the mean."""
    got = trunk_features(student, images)
    return float(sum(float(((got[n] - t) ** 2).mean() / t.var().clamp(min=1e-6)) for n, t in target.items())
                 / len(target))


def distill_finetune(
    student: Trunk, images: Tensor, target: dict[str, Tensor], settings: PruneSettings, progress: bool = False,
    heads: Sequence[nn.Module] = (),
    plan: DevicePlan | None = None,
) -> list[float]:
    """Fine-tune ``student`` in place to reproduce ``target`` features of ``images`` (feature distillation).

    Args:
        student: The pruned trunk (trained in train mode, left in eval mode).
        images: ``(N, 3, S, S)`` uint8 task and unlabelled images.
        target: Reference features of ``images`` (:func:`trunk_features` of the reference trunk).
        settings: Steps, batch size, learning rate, seed, response weight.
        progress: Show a progress bar.
        heads: Frozen task heads (``features -> HeadOutput``) for response distillation, used when
            ``settings.response_weight > 0``.

    Returns:
        The loss of every step.
    """
    if settings.steps == 0:
        return []
    plan = plan or CPU_PLAN
    distiller = FeatureDistiller.for_contract(student.feature_specs, student.feature_specs).to(plan.device)
    # channels-last: faster depthwise convs on CPU (see transfer/training/loop.py)
    student.to(plan.device, memory_format=torch.channels_last)
    for head in heads:
        head.to(plan.device)
    opt = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=0.0)
    scaler = plan.grad_scaler()
    g = torch.Generator().manual_seed(settings.seed)
    order, pos, losses = torch.randperm(len(images), generator=g), 0, []
    student.train()
    if settings.freeze_bn:
        for m in student.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    for step in tqdm(range(settings.steps), desc="distil", disable=not progress, leave=False):
        if pos + settings.batch_size > len(order):
            order, pos = torch.randperm(len(images), generator=g), 0
        idx = order[pos : pos + settings.batch_size]
        pos += settings.batch_size
        batch = plan.move(images[idx]).contiguous(memory_format=torch.channels_last)  # (B, 3, S, S) uint8
        tgt = plan.move({n: t[idx] for n, t in target.items()})
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, settings.steps, settings.lr)
        with plan.autocast():
            feats = student(batch)
            loss = distiller(feats, tgt)
            if settings.response_weight > 0 and heads:
                with torch.no_grad():
                    reference_out = [head(tgt) for head in heads]
                loss = loss + settings.response_weight * sum(
                    response_distillation(head(feats), ref) for head, ref in zip(heads, reference_out)
                )
        scaled_step(scaler, opt, loss)
        losses.append(float(loss.detach()))
    student.to("cpu", memory_format=torch.contiguous_format).eval()
    for head in heads:
        head.cpu()
    return losses


class _FlopCounter:
    """Forward hooks summing multiply-accumulates of convs and linears."""

    def __init__(self, module: nn.Module):
        self.macs = 0
        self.handles = [m.register_forward_hook(self._hook) for m in module.modules()
                        if isinstance(m, (nn.Conv2d, nn.Linear))]

    def _hook(self, m: nn.Module, _inputs, output: Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            self.macs += output.numel() * k
        else:
            self.macs += output.numel() * m.in_features


@torch.no_grad()
def count_flops(trunk: Trunk, input_size: int) -> int:
    """FLOPs (2 x multiply-accumulates of convs/linears) of one ``(1, 3, S, S)`` image."""
    counter = _FlopCounter(trunk)
    try:
        trunk.eval()(torch.zeros(1, 3, input_size, input_size, dtype=torch.uint8))
    finally:
        for h in counter.handles:
            h.remove()
    return 2 * counter.macs


def save_trunk(path: str | Path, trunk: Trunk, extra: dict | None = None) -> None:
    """Atomically save ``{"trunk_config", "trunk", **extra}`` (plain data, loads with weights_only)."""
    buf = io.BytesIO()
    torch.save({"trunk_config": trunk.cfg.to_dict(), "trunk": trunk.state_dict(), **(extra or {})}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_trunk(path: str | Path) -> tuple[Trunk, dict]:
    """Inverse of :func:`save_trunk`: rebuild from the recorded config, then load the weights."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        trunk = Trunk(TrunkConfig.from_dict(state["trunk_config"]))
        trunk.load_state_dict(state["trunk"])
    except FileNotFoundError:
        raise ArtifactError(f"pruned trunk checkpoint {path} does not exist; rerun `polyhead compress`") from None
    except (KeyError, RuntimeError) as exc:
        raise ArtifactError(f"pruned trunk checkpoint {path} is unusable ({exc}); delete it and rerun") from None
    return trunk.eval(), state
