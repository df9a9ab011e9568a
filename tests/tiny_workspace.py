"""A tiny workspace made by the project's own code: synthetic data, an untrained nano trunk, one head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from shared.artifacts import atomic_write_bytes
from shared.trunk import trunk_config
from shared.workspace import Workspace
from transfer.config import DataConfig, HeadSection, PolyheadConfig, dump_config
from transfer.data.synth import CLASSES, generate
from transfer.train import publish_model
from transfer.training.multitask_model import TaskInfo, build_model, save_checkpoint

TINY_SIZE = 64


def build_tiny_workspace(root: Path, num_train: int, num_val: int, variants: dict[str, bool]) -> Path:
    """Synthetic data under ``root/data`` and a workspace ``root/work``: an untrained nano trunk
    published as ``reference`` (64 px) with one head ``signs``, plus a copy of the reference per
    ``variants`` entry (name -> admitted). No training: tests stay fast."""
    generate(root / "data", seed=0, num_train=num_train, num_val=num_val, image_size=128)
    ws = Workspace.at(root / "work")
    cfg = PolyheadConfig(input_size=TINY_SIZE, trunk="nano",
                         data=DataConfig(root=str(root / "data"), tasks=("signs",)),
                         head=HeadSection(width=16, depth=1, max_dets=20))
    atomic_write_bytes(ws.config, dump_config(cfg).encode())
    torch.manual_seed(0)
    signs = TaskInfo(CLASSES["signs"], tuple(range(1, len(CLASSES["signs"]) + 1)))
    model = build_model(trunk_config("nano"), {"signs": signs}, 16, 1)
    save_checkpoint(ws.checkpoints / "nano.pt", model)
    publish_model(ws, cfg, model)
    for name, admitted in variants.items():
        shutil.copytree(ws.variant("reference"), ws.variant(name))
        meta = json.loads((ws.variant(name) / "variant.json").read_text())
        (ws.variant(name) / "variant.json").write_text(json.dumps({**meta, "name": name, "admitted": admitted}))
    return root
