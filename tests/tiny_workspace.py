"""Tiny workspaces made by the project's own code.

:func:`build_tiny_workspace`: synthetic data, an untrained nano trunk, one head.
:func:`build_photo_workspace`: real photos, a nano trunk trained for one epoch at a given input size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from shared.artifacts import atomic_write_bytes
from shared.trunk import trunk_config
from shared.workspace import Workspace
from transfer.config import DataConfig, HeadSection, PolyheadConfig, TrainConfig, dump_config
from transfer.data.photo_task import generate_photo_task
from transfer.data.synth import CLASSES, generate
from transfer.export.publish import sample_images
from transfer.train import publish_model
from transfer.training.loop import load_tasks, train
from transfer.training.multitask_model import MultiTaskModel, TaskInfo, build_model, save_checkpoint

TINY_SIZE = 64
PHOTO_TASK = "photos"


def build_tiny_workspace(root: Path, num_train: int, num_val: int, variants: dict[str, bool]) -> Path:
    """Synthetic data under ``root/data`` and a workspace ``root/work``: an untrained nano trunk
    published as ``reference`` (64 px) with one head ``signs``, plus a copy of the reference per
    ``variants`` entry (name -> admitted). No training: tests stay fast."""
    generate(root / "data", seed=0, num_train=num_train, num_val=num_val, image_size=128)
    ws = Workspace.at(root / "work")
    cfg = PolyheadConfig(
        input_size=TINY_SIZE,
        trunk="nano",
        data=DataConfig(root=str(root / "data"), tasks=("signs",)),
        head=HeadSection(width=16, depth=1, max_dets=20),
    )
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


def build_photo_workspace(
    root: Path,
    input_size: int,
    num_train: int = 4,
    num_val: int = 2,
    image_size: int = 480,
    spread_scores: bool = True,
) -> Path:
    """Real-photo task ``photos`` under ``root/data`` (:func:`generate_photo_task`, ``image_size`` px
    squares) and a workspace ``root/work`` whose nano trunk and head were trained for one epoch at
    ``input_size`` by the project's training loop (one step: ``batch_size = num_train``), then
    exported and published as ``reference`` by :func:`publish_model` (parity checks and mAP included).

    One step leaves a degenerate model: BatchNorm's running statistics have moved a tenth of the
    way, so in eval mode the features are nearly constant, and every anchor scores the head's 0.01
    prior, under the 0.05 detection threshold. With ``spread_scores`` (before publishing) the
    running statistics are re-estimated on the training images (one pass, cumulative average) and
    the head's prediction layers get deterministic random weights: the exported head then detects
    boxes everywhere with varied scores (up to ~0.99), boxes and classes, and hardly any two equal."""
    generate_photo_task(
        root / "data", task=PHOTO_TASK, seed=0, num_train=num_train, num_val=num_val, image_size=image_size
    )
    ws = Workspace.at(root / "work")
    cfg = PolyheadConfig(
        input_size=input_size,
        trunk="nano",
        data=DataConfig(root=str(root / "data"), tasks=(PHOTO_TASK,)),
        train=TrainConfig(epochs=1, batch_size=num_train, warmup_steps=0, threads=2),
        head=HeadSection(width=16, depth=1, max_dets=20),
    )
    atomic_write_bytes(ws.config, dump_config(cfg).encode())
    result = train(cfg, root / "data", ws.checkpoints / f"{cfg.trunk}.pt", resume=False, progress=False, device="cpu")
    if result.epochs_run != 1 or not result.history:
        raise AssertionError(f"training ran {result.epochs_run} epoch(s), {len(result.history)} step(s)")
    if spread_scores:
        _spread_scores(
            result.model, sample_images(load_tasks(cfg, root / "data", "train")[PHOTO_TASK], input_size, num_train)
        )
    publish_model(ws, cfg, result.model)
    return root


def _spread_scores(model: MultiTaskModel, images: torch.Tensor) -> None:
    """Re-estimate every BatchNorm's running statistics on ``images``, then randomise the prediction layers."""
    norms = {m: m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one pass sets the statistics of `images`
    model.train()
    with torch.no_grad():
        model.forward_with_taps(images)
    for bn, momentum in norms.items():
        bn.momentum = momentum
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, head in model.heads.items():
            for pred in head.preds.values():
                pred.weight.normal_(0.0, 0.5)
                pred.bias[: len(model.tasks[name].classes)].fill_(-6.0)  # 1-3 % of (anchor, class) pairs over 0.05
