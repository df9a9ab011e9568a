"""Trunk + one head per task, and the checkpoint format that stores them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from heads.head import DetectionHead, HeadArchitecture, HeadOutput
from shared.artifacts import atomic_write_bytes
from shared.errors import ArtifactError
from shared.trunk import Trunk, TrunkConfig


@dataclass(frozen=True)
class TaskInfo:
    """What a head predicts: class names and their COCO category ids (index = label)."""

    classes: tuple[str, ...]
    category_ids: tuple[int, ...]


class MultiTaskModel(nn.Module):
    """One trunk feeding one head per task.

    ``forward(images (B,3,S,S) uint8) -> (features, {task: HeadOutput})``.
    """

    def __init__(self, trunk: Trunk, heads: dict[str, DetectionHead], tasks: dict[str, TaskInfo]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)
        self.tasks = dict(tasks)

    def forward(self, images: Tensor) -> tuple[dict[str, Tensor], dict[str, HeadOutput]]:  # noqa: D102
        feats = self.trunk(images)
        return feats, {name: head(feats) for name, head in self.heads.items()}

    def forward_with_taps(self, images: Tensor) -> tuple[dict[int, Tensor], dict[str, Tensor], dict[str, HeadOutput]]:
        """Like :meth:`forward`, also returning the backbone maps keyed by stride (8/16/32), before the neck."""
        taps = self.trunk.backbone(self.trunk.normalize(images))
        feats = self.trunk.neck(taps)
        return taps, feats, {name: head(feats) for name, head in self.heads.items()}


def build_model(trunk_cfg: TrunkConfig, tasks: dict[str, TaskInfo], width: int, depth: int) -> MultiTaskModel:
    """Fresh model: a trunk from ``trunk_cfg`` and one head per task."""
    trunk = Trunk(trunk_cfg)
    heads = {
        name: DetectionHead(trunk.feature_specs, HeadArchitecture(len(info.classes), width, depth))
        for name, info in tasks.items()
    }
    return MultiTaskModel(trunk, heads, tasks)


def save_checkpoint(path: str | Path, model: MultiTaskModel, extra: dict[str, Any] | None = None) -> None:
    """Atomically save weights + everything needed to rebuild (plain data only: loads with weights_only)."""
    import io

    heads = {n: h for n, h in model.heads.items()}
    state = {
        "trunk_config": model.trunk.cfg.to_dict(),
        "trunk": model.trunk.state_dict(),
        "heads": {n: h.state_dict() for n, h in heads.items()},
        "head_configs": {n: {"num_classes": h.cfg.num_classes, "width": h.cfg.width, "depth": h.cfg.depth}
                         for n, h in heads.items()},
        "tasks": {n: {"classes": list(i.classes), "category_ids": list(i.category_ids)}
                  for n, i in model.tasks.items()},
        **(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> tuple[MultiTaskModel, dict[str, Any]]:
    """Rebuild a model from :func:`save_checkpoint` output (``torch.load(weights_only=True)``)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"checkpoint {path} does not exist; run `polyhead train` first") from None
    except Exception as exc:  # corrupt or not a checkpoint
        raise ArtifactError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); retrain") from None
    trunk = Trunk(TrunkConfig.from_dict(state["trunk_config"]))
    trunk.load_state_dict(state["trunk"])
    tasks = {n: TaskInfo(tuple(t["classes"]), tuple(t["category_ids"])) for n, t in state["tasks"].items()}
    heads = {}
    for name, hc in state["head_configs"].items():
        head = DetectionHead(trunk.feature_specs, HeadArchitecture(hc["num_classes"], hc["width"], hc["depth"]))
        head.load_state_dict(state["heads"][name])
        heads[name] = head
    return MultiTaskModel(trunk, heads, tasks), state
