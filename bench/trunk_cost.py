"""What each trunk costs: parameters, FLOPs and CPU latency, side by side in one run.

    .venv/bin/python -m bench.trunk_cost [--trunks student,mobilenet_v2,teacher] [--sizes 192,320]
                                         [--threads 1] [--blocks 10] [--json OUT]

Every trunk is exported to ONNX (the form Triton serves) and timed with onnxruntime at batch 1;
the trunks are timed in alternating blocks of 10 calls (after 5 warm-up calls each), so the
machine's noise falls on every side alike, and reported as medians and as ratios to the first.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _session(path: Path, threads: int):  # noqa: ANN202
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def measure(trunks: list[str], sizes: list[int], threads: int, blocks: int, block: int = 10) -> dict:
    """``{size: {trunk: {params, gflops, b1_ms, vs_first}}}`` over ``trunks`` at each input side."""
    import torch

    from shared.backbone import count_parameters
    from shared.trunk import build_trunk
    from transfer.compression.prune import count_flops
    from transfer.export.onnx_graphs import export_trunk

    torch.manual_seed(0)
    models = {name: build_trunk(name).eval() for name in trunks}
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="polyhead-trunk-cost-") as tmp:
        for size in sizes:
            image = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
            runs: dict[str, object] = {}
            for name, model in models.items():
                path = Path(tmp) / f"{name}-{size}.onnx"
                export_trunk(model, path, size)
                sess = _session(path, threads)
                runs[name] = lambda s=sess, x=image: s.run(None, {"images": x})
            for fn in runs.values():
                for _ in range(5):
                    fn()
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(blocks):
                for name, fn in runs.items():
                    for _ in range(block):
                        t = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t)
            first = float(np.median(times[trunks[0]]))
            out[size] = {
                name: {"params": count_parameters(models[name]), "gflops": count_flops(models[name], size) / 1e9,
                       "b1_ms": 1000 * float(np.median(times[name])), "vs_first": float(np.median(times[name])) / first}
                for name in trunks
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trunks", default="student,mobilenet_v2,teacher")
    p.add_argument("--sizes", default="192,320")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--blocks", type=int, default=10, help="alternating blocks of 10 timed calls per trunk")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    trunks = args.trunks.split(",")
    result = measure(trunks, [int(s) for s in args.sizes.split(",")], args.threads, args.blocks)
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
