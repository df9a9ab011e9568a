"""What a head costs next to the trunk (H/T), by head width and depth: the ceiling of sharing.

    .venv/bin/python -m bench.head_cost --workdir polyhead-work [--threads 1]

Serving N tasks on one image costs ``T + N*H`` shared against ``N*(T + H)`` independent, so the
speed-up is ``N(T+H)/(T+NH)``: 5x at N = 8 needs ``H/T <= 0.094``, 3x at N = 4 ``<= 0.125``.
This times, in one process with onnxruntime (median of 200 runs, batch 1), the workspace's
reference trunk, its first trained head, and freshly exported heads of other widths/depths (decode
+ NMS in the graph as in production; biases raised so NMS sees many candidates, like a trained head),
and prints H/T and the predicted speed-ups.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _session(path: Path, threads: int):  # noqa: ANN202
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _median_ms(fn, runs: int = 200) -> float:  # noqa: ANN001
    for _ in range(10):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def _speedup(ratio: float, n: int) -> float:
    return n * (1 + ratio) / (1 + n * ratio)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="polyhead-work")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    from heads.exportable import OUTPUT_NAMES, ExportableHead
    from heads.head import DetectionHead, HeadArchitecture
    from heads.postprocess import PostprocessConfig
    from shared.artifacts import read_json
    from shared.contract import default_contract
    from shared.workspace import Workspace
    from transfer.export.onnx_graphs import export_head, export_onnx_bytes

    ws = Workspace.at(args.workdir)
    size = int(read_json(ws.variant("reference") / "variant.json")["input_size"])
    trunk = _session(ws.variant("reference") / "model.onnx", args.threads)
    image = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    feed = {trunk.get_inputs()[0].name: image}
    feats = dict(zip(("p3", "p4", "p5"), trunk.run(None, feed)))
    t_ms = _median_ms(lambda: trunk.run(None, feed))
    rows = []
    task = ws.tasks()[0]
    trained = _session(ws.head(task) / "model.onnx", args.threads)
    rows.append((f"trained `{task}` (w96 d2), as exported in W", None, _median_ms(lambda: trained.run(None, feats))))
    specs = default_contract(feats["p3"].shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        for width, depth in ((96, 2), (64, 2), (64, 1), (48, 1), (32, 1)):
            head = DetectionHead(specs, HeadArchitecture(num_classes=3, width=width, depth=depth)).eval()
            with torch.no_grad():
                for m in head.modules():
                    if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                        m.bias.add_(3.0)
            path = Path(tmp) / f"w{width}d{depth}.onnx"
            export_head(head, path, size, PostprocessConfig(0.05, 0.6, 100))
            sess = _session(path, args.threads)
            params = sum(q.numel() for q in head.parameters())
            rows.append((f"fresh w{width} d{depth}", params, _median_ms(lambda s=sess: s.run(None, feats))))
            if (width, depth) == (96, 2):  # the export before fixed-size grids: every shape computed in-graph
                dyn = Path(tmp) / "dynamic.onnx"
                exportable = ExportableHead(head, PostprocessConfig(0.05, 0.6, 100)).eval()
                dummy = tuple(torch.from_numpy(feats[n]) for n in ("p3", "p4", "p5"))
                dyn.write_bytes(export_onnx_bytes(exportable, dummy, ["p3", "p4", "p5"], list(OUTPUT_NAMES)))
                sess = _session(dyn, args.threads)
                rows.append(("fresh w96 d2, shapes computed in the graph", params,
                             _median_ms(lambda s=sess: s.run(None, feats))))
    print(f"trunk (reference, {size} px, {args.threads} thread(s)): {t_ms:.2f} ms")
    print("| head | params | H ms | H/T | predicted N=4 | predicted N=8 |")
    print("|---|---|---|---|---|---|")
    for name, params, h_ms in rows:
        r = h_ms / t_ms
        print(f"| {name} | {params if params is not None else '-'} | {h_ms:.2f} | {r:.3f} | "
              f"{_speedup(r, 4):.2f}x | {_speedup(r, 8):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
