"""Reproduce the compression benchmark end to end on this machine (docs/benchmarks.md, "Compression").

    .venv/bin/python -m bench.compress --workdir polyhead-compress [--epochs 6] [--device auto|cpu|cuda] [--json OUT]

Steps: synthetic data (400 train / 100 val / 200 unlabelled, 256 px), a short sparse training of the
student trunk (``bn_l1``), `polyhead compress` (2 prune rounds with distillation fine-tuning, INT8,
FP16; every head evaluated on every variant), then `polyhead bench compress`. Each step is skipped
when its output already exists, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from transfer.training.devices import DEVICE_CHOICES


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="polyhead-compress")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--tolerance", type=float, default=1.0)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where training and the distillation fine-tune run (default: cuda when available)")
    p.add_argument("--json", help="write the bench result here")
    args = p.parse_args()

    from serving.cli.compress_commands import format_catalogue
    from transfer.compress import run_compress, run_compress_bench
    from transfer.data.synth import generate
    from transfer.train import run_train

    ws = Path(args.workdir)
    ws.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not (ws / "data" / "signs" / "val.json").exists():
        generate(ws / "data", seed=0, num_train=400, num_val=100, num_unlabeled=200, image_size=256)
        print(f"data: {time.time() - t0:.0f} s", flush=True)
    if not (ws / "trunk" / "reference" / "variant.json").exists():
        cfg = {"input_size": 192, "trunk": "student", "data": {"root": "data"},
               "train": {"epochs": args.epochs, "bn_l1": 1e-4}}
        (ws / "polyhead.yaml").write_text(yaml.safe_dump(cfg))
        report = run_train(ws, ws / "polyhead.yaml", progress=False, device=args.device)
        print(f"train: {report.seconds:.0f} s, mAP {({t: round(m['map'], 4) for t, m in report.maps.items()})}",
              flush=True)
    t1 = time.time()
    report = run_compress(ws, tolerance=args.tolerance, progress=False, log=lambda m: print(m, flush=True),
                          device=args.device)
    print(f"compress: {time.time() - t1:.0f} s (built {report.built})")
    print("\n".join(format_catalogue(report.catalogue)))
    result = run_compress_bench(ws)
    keys = ("best_variant", "baseline", "size_ratio", "latency_ratio_b1", "latency_ratio_b8", "max_map_drop",
            "map_drop_baseline")
    print(json.dumps({k: result[k] for k in keys} | {"vs_reference": result["vs_reference"]}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
