"""Training speed at each input size: images/s and seconds per 500-image epoch, the sizes interleaved.

    .venv/bin/python -m bench.train_speed [--trunk mobilenet_v2] [--sizes 320,640] [--images 64]
        [--batch-size 16] [--blocks 2] [--device auto|cpu|cuda] [--json OUT]

What it times is ``polyhead train``'s own loop (:func:`transfer.training.loop.train`: data loading
with augmentation, forward, loss, backward, AdamW; autocast in bf16 or fp16 on CUDA) on the real-photo
task (:mod:`transfer.data.photo_task`, ``--images`` scenes of ``max(--sizes)`` px, letterboxed to each
size). Each timed epoch resumes a checkpoint after one untimed warm-up epoch, so kernel selection and
first-touch allocation are not counted. Sizes run one after another inside each of ``--blocks``
blocks; the median per size is reported, with its ratio to the first size beside the FLOPs ratio
(the ceiling of what a bigger input can cost: ``(S / S0)^2`` for a fully convolutional trunk).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from transfer.training.devices import DEVICE_CHOICES

EPOCH_IMAGES = 500  # the add-task size: seconds per epoch are quoted for this many images


def epoch_seconds(data: Path, size: int, trunk: str, batch_size: int, device: str, work: Path) -> float:
    """Wall seconds of one steady-state training epoch over ``data``'s photos task at ``size`` px."""
    from transfer.config import DataConfig, PolyheadConfig, TrainConfig
    from transfer.training.loop import train

    cfg = PolyheadConfig(input_size=size, trunk=trunk, data=DataConfig(root=str(data), tasks=("photos",)),
                         train=TrainConfig(epochs=1, batch_size=batch_size, warmup_steps=5))
    ckpt = work / f"{trunk}-{size}.pt"
    ckpt.unlink(missing_ok=True)
    train(cfg, data, ckpt, resume=False, progress=False, device=device)  # warm-up epoch, saves the checkpoint
    cfg = replace(cfg, train=replace(cfg.train, epochs=2))  # the timed epoch resumes after the warm-up one
    return train(cfg, data, ckpt, resume=True, progress=False, device=device).seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trunk", default="mobilenet_v2")
    p.add_argument("--sizes", default="320,640", help="comma-separated input sizes, multiples of 32")
    p.add_argument("--images", type=int, default=64, help="training scenes per epoch (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--blocks", type=int, default=2, help="interleaved repetitions of every size")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--data", help="data root to reuse (default: a temporary directory)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()

    import torch

    from shared.trunk import Trunk, trunk_config
    from transfer.compression.prune import count_flops
    from transfer.data.photo_task import generate_photo_task
    from transfer.training.devices import cpu_cores, plan_device

    sizes = [int(s) for s in args.sizes.split(",")]
    if args.images < args.batch_size:
        p.error(f"--images {args.images} must be at least --batch-size {args.batch_size} (one step per epoch)")
    plan = plan_device(args.device)
    with tempfile.TemporaryDirectory(prefix="polyhead-train-speed-") as tmp:
        data = Path(args.data or Path(tmp) / "data")
        if not (data / "photos" / "train.json").exists():
            generate_photo_task(data, seed=3, num_train=args.images, num_val=1, image_size=max(sizes))
        runs: dict[int, list[float]] = {s: [] for s in sizes}
        for block in range(args.blocks):
            for size in sizes:
                seconds = epoch_seconds(data, size, args.trunk, args.batch_size, args.device, Path(tmp))
                runs[size].append(seconds)
                print(f"block {block + 1}/{args.blocks}: {size} px {args.images / seconds:6.1f} img/s "
                      f"({seconds:.1f} s)", flush=True)
    arch = replace(trunk_config(args.trunk), pretrained=None)  # the shapes only: no weights file read
    flops = {s: count_flops(Trunk(arch), s) for s in sizes}
    device_name = torch.cuda.get_device_name(plan.device) if plan.is_cuda else (platform.processor() or "cpu")
    rows = []
    for size in sizes:
        sec = statistics.median(runs[size])
        base = statistics.median(runs[sizes[0]])
        rows.append({"size": size, "images_per_s": round(args.images / sec, 2),
                     "epoch_500_s": round(EPOCH_IMAGES * sec / args.images, 1),
                     "time_ratio": round(sec / base, 2), "flops_ratio": round(flops[size] / flops[sizes[0]], 2),
                     "runs_s": [round(r, 2) for r in runs[size]]})
    result = {"trunk": args.trunk, "device": str(plan.device), "device_name": device_name,
              "precision": str(plan.amp_dtype).replace("torch.", "") if plan.amp_dtype else "float32",
              "threads": torch.get_num_threads() if not plan.is_cuda else None, "cores": cpu_cores(),
              "batch_size": args.batch_size, "images": args.images, "rows": rows}
    print(f"{'size':>5s} {'img/s':>7s} {'s/500-img epoch':>16s} {'time x':>7s} {'FLOPs x':>8s}")
    for r in rows:
        print(f"{r['size']:5d} {r['images_per_s']:7.1f} {r['epoch_500_s']:16.1f} {r['time_ratio']:7.2f} "
              f"{r['flops_ratio']:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
