"""Head-only `add-task` vs full fine-tuning of trunk + head, on a 500-image new task, in one run.

    .venv/bin/python -m bench.add_task --workdir polyhead-work [--task shapes|photos] [--epochs 10]
        [--device auto|cpu|cuda] [--json OUT]

``--workdir`` is a trained workspace (``polyhead train`` or ``make demo``); it is not modified:
both contenders work on a copy under ``<workdir>-bench-add-task``. The new task (500 train / 100
val images, a seed the trunk never saw) is the synthetic ``shapes`` task, or with ``--task photos``
real photographed objects (:mod:`transfer.data.photo_task`). Contenders:

* head-only: ``polyhead add-task`` (frozen reference trunk, features cached once, head trained
  on the cache, exported and evaluated in ONNX on the reference variant);
* full fine-tuning: the reference trunk + a fresh head (``head.depth``, the jointly trained heads'
  depth; head-only uses ``head.transfer_depth``: each contender with its default) trained end to end
  on the same images with the trunk training loop (augmentation, AdamW, cosine), ``--epochs``
  epochs, evaluated in torch.

Both are timed wall clock, in the same run, one after the other; mAP@[.5:.95] on the same val set.
The result goes to ``--json`` and ``<workdir>-bench-add-task/report.json`` (read by
``polyhead bench compress --add-task-report``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from transfer.training.devices import DEVICE_CHOICES

TASKS = ("shapes", "photos")


def head_only(ws: Path, data: Path, epochs: int, task: str = "shapes", device: str = "auto") -> dict:
    """`add-task` on a copy of the workspace; wall time and mAP on the reference variant."""
    from transfer.add_task import add_task

    t0 = time.perf_counter()
    report = add_task(ws, f"bench_{task}", data / task / "train.json", data / task / "val.json", data / "images",
                      epochs=epochs, progress=False, device=device)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 1), "map": round(report.maps["reference"]["map"], 4),
            "map50": round(report.maps["reference"]["map50"], 4), "phases_s": report.seconds,
            "trainable_params": report.head_params, "epochs": report.epochs}


def full_finetune(ws: Path, data: Path, epochs: int, task: str = "shapes", device: str = "auto") -> dict:
    """Reference trunk + fresh head trained end to end on the new task; wall time and mAP."""
    from shared.artifacts import read_json
    from shared.workspace import Workspace
    from transfer.evaluation.coco_map import coco_map
    from transfer.evaluation.predict import detect_split, torch_detector
    from transfer.train import post_config, resolve_config
    from transfer.training.feature_cache import find_trunk_checkpoint, load_frozen_trunk
    from transfer.training.loop import load_tasks, task_infos, train
    from transfer.training.multitask_model import build_model, save_checkpoint

    w = Workspace.at(ws)
    base = resolve_config(w, None)
    cfg = replace(base, data=replace(base.data, root=str(data), tasks=(task,)),
                  train=replace(base.train, epochs=epochs, distill_weight=0.0, bn_l1=0.0))
    t0 = time.perf_counter()
    ref = read_json(w.variant("reference") / "variant.json")
    trunk = load_frozen_trunk(find_trunk_checkpoint(w.checkpoints, f"{base.trunk}.pt", ref.get("trunk_config")))
    tasks = load_tasks(cfg, data, "train")
    model = build_model(trunk.cfg, task_infos(tasks), cfg.head.width, cfg.head.depth)
    model.trunk.load_state_dict(trunk.state_dict())
    ckpt = ws / "finetune.pt"
    save_checkpoint(ckpt, model, {"epoch": 0})  # train() resumes from here: trunk pretrained, head fresh
    result = train(cfg, data, ckpt, resume=True, progress=False, device=device)
    seconds = time.perf_counter() - t0
    val = load_tasks(cfg, data, "val")[task]
    m = coco_map(val, detect_split(val, cfg.input_size, torch_detector(result.model.eval(), task, post_config(cfg))))
    return {"seconds": round(seconds, 1), "map": round(m["map"], 4), "map50": round(m["map50"], 4),
            "epochs": epochs, "trainable_params": sum(p.numel() for p in result.model.parameters())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="polyhead-work")
    p.add_argument("--task", choices=TASKS, default="shapes", help="the new task (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="full fine-tuning epochs")
    p.add_argument("--head-epochs", type=int, default=14, help="head-only epochs (add-task's default: %(default)s)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where both contenders train (default: cuda when available)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()

    from transfer.config import load_config
    from transfer.data.photo_task import generate_photo_task
    from transfer.data.synth import generate

    src = Path(args.workdir)
    if not (src / "trunk" / "reference" / "variant.json").exists():
        print(f"{src} has no trained reference trunk; run `polyhead train --workdir {src}` first", file=sys.stderr)
        return 2
    task = args.task
    out = Path(f"{src}-bench-add-task")
    data = out / "data"
    if not (data / task / "val.json").exists():
        if task == "photos":
            generate_photo_task(data, task=task, seed=11, num_train=500, num_val=100, image_size=256)
        else:
            generate(data, seed=11, num_train=500, num_val=100, num_unlabeled=0, image_size=256)
    ws = out / "work"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(src, ws, ignore=shutil.ignore_patterns("model_repository", "data", ".add-task-*"))
    heads = head_only(ws, data, args.head_epochs, task, args.device)
    print(f"head-only add-task: {heads['seconds']:.0f} s, mAP {heads['map']:.3f} (mAP50 {heads['map50']:.3f})",
          flush=True)
    full = full_finetune(ws, data, args.epochs, task, args.device)
    print(f"full fine-tuning:   {full['seconds']:.0f} s, mAP {full['map']:.3f} (mAP50 {full['map50']:.3f})", flush=True)
    result = {
        "task": task, "trunk": load_config(src / "polyhead.yaml").trunk, "train_images": 500, "val_images": 100,
        "device": args.device,
        "head_only": heads, "full_finetune": full,
        "speedup": round(full["seconds"] / heads["seconds"], 2),
        "map_gap_points": round(100 * (full["map"] - heads["map"]), 2),
    }
    print(f"speed-up {result['speedup']:.1f}x, mAP gap {result['map_gap_points']:+.2f} points (full - head-only)")
    text = json.dumps(result, indent=2) + "\n"
    (out / "report.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
