"""A small workspace with something for every figure of ``polyhead report``, made by the project's own code.

:func:`build_report_workspace`: synthetic data for two tasks; a nano trunk trained one epoch (so
``checkpoints/nano.history.json`` exists) and published as ``reference``; ``pruned-r1`` pruned from
it by torch-pruning, exported and evaluated like ``polyhead compress`` does, with distillation
rounds and a ``robustness`` entry in its ``variant.json``; ``copy``, the reference copied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shared.artifacts import atomic_write_bytes
from shared.workspace import Workspace
from transfer.compression.prune import PruneSettings, prune_trunk
from transfer.config import DataConfig, HeadSection, PolyheadConfig, TrainConfig, dump_config
from transfer.data.synth import generate
from transfer.export.publish import evaluate_head, publish_trunk, sample_images
from transfer.train import publish_model
from transfer.training.loop import load_tasks, train

SIZE = 64
TASKS = ("signs", "vehicles")
#: What the corruption benchmark would record (the report draws whatever the entry holds).
ROBUSTNESS = {"clean_map": 0.40, "mpc": 0.25, "rpc": 0.625,
              "per_corruption": {"gaussian_noise": {"1": 0.35, "3": 0.2, "5": 0.1},
                                 "motion_blur": {"1": 0.38, "3": 0.3, "5": 0.2}}}
DISTILL_ROUNDS = [{"step": "prune", "method": "torch-pruning BNScalePruner", "ratio": 0.5},
                  {"step": "distill", "target": "reference", "steps": 4, "images": 8, "final_loss": 1.5,
                   "holdout_feature_error": 0.8}]


def build_report_workspace(root: Path) -> Path:
    """Data under ``root/data``, the workspace at ``root/work`` (returned)."""
    generate(root / "data", seed=0, num_train=8, num_val=6, image_size=128)
    ws = Workspace.at(root / "work")
    cfg = PolyheadConfig(
        input_size=SIZE, trunk="nano", data=DataConfig(root=str(root / "data"), tasks=TASKS),
        train=TrainConfig(epochs=1, batch_size=4, warmup_steps=0, threads=2),
        head=HeadSection(width=16, depth=1, max_dets=20),
    )
    atomic_write_bytes(ws.config, dump_config(cfg).encode())
    model = train(cfg, root / "data", ws.checkpoints / "nano.pt", resume=False, progress=False, device="cpu").model
    val = load_tasks(cfg, root / "data", "val")
    publish_model(ws, cfg, model, val=val)
    pruned = prune_trunk(model.trunk, PruneSettings(ratio=0.5))
    publish_trunk(ws, pruned, "pruned-r1", SIZE, sample_images(val[TASKS[0]], SIZE, 4),
                  {"role": "variant", "parent": "reference", "compression": DISTILL_ROUNDS, "robustness": ROBUSTNESS})
    for task in TASKS:
        evaluate_head(ws, task, "pruned-r1", val[task], SIZE)
    meta = json.loads((ws.variant("pruned-r1") / "variant.json").read_text())
    (ws.variant("pruned-r1") / "variant.json").write_text(json.dumps({**meta, "admitted": False}))
    shutil.copytree(ws.variant("reference"), ws.variant("copy"))
    meta = json.loads((ws.variant("copy") / "variant.json").read_text())
    (ws.variant("copy") / "variant.json").write_text(json.dumps({**meta, "name": "copy", "role": "variant"}))
    return ws.root
