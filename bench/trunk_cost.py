"""What each trunk costs: parameters, FLOPs and CPU latency, side by side in one run.

    .venv/bin/python -m bench.trunk_cost [--trunks student,mobilenet_v2,teacher] [--sizes 192,320]
                                         [--threads 1] [--seconds 20] [--json OUT]

Every trunk is exported to ONNX (the form Triton serves) and timed with onnxruntime at batch 1
(:func:`transfer.export.onnx_graphs.session`), the trunks of one input size in alternating blocks
of 20 calls (:func:`serving.bench.load_generator.interleaved`), so the machine's noise falls on
every side alike; medians are reported, and as ratios to the first trunk.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np


def measure(trunks: list[str], sizes: list[int], threads: int, seconds: float) -> dict:
    """``{size: {trunk: {params, gflops, b1_ms, vs_first}}}`` over ``trunks`` at each input side."""
    import torch

    from serving.bench.load_generator import interleaved
    from shared.backbone import count_parameters
    from shared.trunk import build_trunk
    from transfer.compression.prune import count_flops
    from transfer.export.onnx_graphs import export_trunk, session

    torch.manual_seed(0)
    models = {name: build_trunk(name).eval() for name in trunks}
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="polyhead-trunk-cost-") as tmp:
        for size in sizes:
            image = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
            runs = {}
            for name, model in models.items():
                path = Path(tmp) / f"{name}-{size}.onnx"
                export_trunk(model, path, size)
                runs[name] = lambda s=session(path, threads), x=image: s.run(None, {"images": x})
            latency = interleaved(runs, seconds)
            first = latency[trunks[0]]["p50_ms"]
            out[size] = {
                name: {"params": count_parameters(models[name]), "gflops": count_flops(models[name], size) / 1e9,
                       "b1_ms": latency[name]["p50_ms"], "vs_first": latency[name]["p50_ms"] / first,
                       "runs": latency[name]["runs"]}
                for name in trunks
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trunks", default="student,mobilenet_v2,teacher")
    p.add_argument("--sizes", default="192,320")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=20.0, help="timing per input size, all trunks together")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    trunks = args.trunks.split(",")
    result = measure(trunks, [int(s) for s in args.sizes.split(",")], args.threads, args.seconds)
    print(f"onnxruntime CPU, batch 1, {args.threads} thread(s), {platform.processor() or platform.machine()}")
    print(f"{'size':>5s} {'trunk':14s} {'params':>10s} {'GFLOPs':>7s} {'b1 ms':>7s} {'x ' + trunks[0]:>10s}")
    for size, rows in result.items():
        for name, r in rows.items():
            print(f"{size:5d} {name:14s} {r['params']:10,d} {r['gflops']:7.3f} {r['b1_ms']:7.2f} {r['vs_first']:10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
