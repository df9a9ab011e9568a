"""Sandwich training of the supernet with in-place distillation (no labels).

Every step runs four sub-networks on one batch and sums their gradients before one optimiser step
(the sandwich rule): the largest, the smallest and two random ones. The largest learns to keep the
trained trunk's features (precomputed, eval mode) and, through the workspace's frozen heads, their
responses; the other three learn the largest's features and head responses of the same step
(in-place distillation, detached). The contract maps keep their channels, so the frozen heads run
on every sub-network. The run is short (minutes on a CPU) and saved as a plain checkpoint.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from shared.artifacts import atomic_write_bytes
from shared.errors import ArtifactError, ConfigError
from shared.trunk import Trunk, TrunkConfig
from transfer.elastic.space import ElasticSpace, SubnetArch
from transfer.elastic.supernet import ElasticTrunk
from transfer.training.distillation import FeatureDistiller, response_distillation
from transfer.training.schedule import warmup_cosine_lr


@dataclass(frozen=True)
class SandwichSettings:
    """One supernet training run.

    Attributes:
        steps: Optimiser steps (each runs 4 sub-networks).
        batch_size: Images per step.
        lr: Peak AdamW learning rate (cosine decay, warm-up over the first tenth).
        random_subnets: Random sub-networks per step besides the largest and the smallest.
        response_weight: Weight of head-response distillation (0: features only).
        seed: Seed of the batch order and the sub-network draws.
    """

    steps: int = 240
    batch_size: int = 8
    lr: float = 5e-5
    random_subnets: int = 2
    response_weight: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 2 or self.lr <= 0 or self.random_subnets < 0:
            raise ConfigError(f"sandwich steps >= 0, batch_size >= 2, lr > 0, random_subnets >= 0; got {self}")

    def to_dict(self) -> dict:  # noqa: D102
        return asdict(self)


def _loss(distiller: FeatureDistiller, feats: dict[str, Tensor], target: dict[str, Tensor],
          heads: Sequence[nn.Module], weight: float) -> Tensor:
    """Feature distillation towards ``target`` plus ``weight`` x head-response distillation."""
    loss = distiller(feats, target)
    if weight > 0 and heads:
        with torch.no_grad():
            ref = [head(target) for head in heads]
        loss = loss + weight * sum(response_distillation(head(feats), r) for head, r in zip(heads, ref))
    return loss


def train_supernet(
    supernet: ElasticTrunk, images: Tensor, target: dict[str, Tensor], heads: Sequence[nn.Module],
    settings: SandwichSettings, progress: bool = False,
) -> list[float]:
    """Sandwich-train ``supernet`` in place; returns the summed loss of every step.

    Args:
        supernet: The elastic trunk (trained in train mode, left in eval mode).
        images: ``(N, 3, S, S)`` uint8 training images.
        target: The trained trunk's eval-mode features of ``images``: ``{name: (N, C, S/stride, S/stride)}``.
        heads: Frozen task heads (``features -> HeadOutput``).
        settings: Steps, batch, learning rate, seed.
        progress: Show a progress bar.
    """
    if settings.steps == 0:
        return []
    space = supernet.space
    distiller = FeatureDistiller.for_contract(supernet.feature_specs, supernet.feature_specs)
    opt = torch.optim.AdamW(supernet.parameters(), lr=settings.lr, weight_decay=0.0)
    rng, g = random.Random(settings.seed), torch.Generator().manual_seed(settings.seed)
    order, pos, losses = torch.randperm(len(images), generator=g), 0, []
    for head in heads:
        head.eval().requires_grad_(False)
    supernet.train()
    bar = tqdm(range(settings.steps), desc="sandwich", disable=not progress, leave=False)
    for step in bar:
        if pos + settings.batch_size > len(order):
            order, pos = torch.randperm(len(images), generator=g), 0
        idx = order[pos : pos + settings.batch_size]
        pos += settings.batch_size
        batch = images[idx]  # (B, 3, S, S) uint8
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, settings.steps, settings.lr, max(1, settings.steps // 10))
        opt.zero_grad(set_to_none=True)
        feats = supernet(batch, space.largest())
        loss = _loss(distiller, feats, {n: t[idx] for n, t in target.items()}, heads, settings.response_weight)
        loss.backward()
        teacher, total = {n: f.detach() for n, f in feats.items()}, float(loss.detach())
        archs: list[SubnetArch] = [space.smallest()] + [space.sample(rng) for _ in range(settings.random_subnets)]
        for arch in archs:
            loss = _loss(distiller, supernet(batch, arch), teacher, heads, settings.response_weight)
            loss.backward()
            total += float(loss.detach())
        opt.step()
        losses.append(total)
        bar.set_postfix(loss=f"{total:.3f}")
    supernet.eval()
    return losses


def save_supernet(path: str | Path, supernet: ElasticTrunk, extra: dict | None = None) -> None:
    """Atomically save ``{"trunk_config", "space", "trunk", **extra}`` (plain data, loads with weights_only)."""
    buf = io.BytesIO()
    space = supernet.space
    torch.save({"trunk_config": supernet.trunk.cfg.to_dict(),
                "space": {"width_choices": list(space.width_choices), "max_drop": space.max_drop,
                          "round_to": space.round_to},
                "trunk": supernet.trunk.state_dict(), **(extra or {})}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_supernet(path: str | Path) -> tuple[ElasticTrunk, dict]:
    """Inverse of :func:`save_supernet`.

    Raises:
        ArtifactError: If the file is missing or not a supernet checkpoint (naming the command that makes one).
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        cfg = TrunkConfig.from_dict(state["trunk_config"])
        trunk = Trunk(cfg)
        trunk.load_state_dict(state["trunk"])
        s = state["space"]
        space = ElasticSpace(cfg, tuple(s["width_choices"]), int(s["max_drop"]), int(s["round_to"]))
    except FileNotFoundError:
        raise ArtifactError(f"supernet checkpoint {path} does not exist; run `polyhead search`") from None
    except (KeyError, RuntimeError, TypeError) as exc:
        raise ArtifactError(f"supernet checkpoint {path} is unusable ({exc}); delete it and rerun "
                            "`polyhead search`") from None
    return ElasticTrunk(trunk, space).eval(), state
