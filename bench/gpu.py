"""What the shared trunk buys on a GPU: the torch-eager counterpart of bench.head_cost.

    python3 -m bench.gpu [--device cuda] [--size 192] [--batches 1,8,32] [--runs 100] [--tasks 1,2,4,8]
                         [--precisions fp32,fp16] [--no-cuda-graphs] [--json gpu_bench.json]

Run from the repository root; it needs only torch and numpy (of the project: ``shared`` and ``heads``).

One process, random weights (latency does not depend on them), random uint8 images of ``--size``:

1. Trunk latency T of ``teacher``, ``student`` and ``student-pruned`` (the student with every expanded
   width cut by ``--prune-ratio``, 0.28 = two 15% rounds of ``polyhead compress``, rounded to 8 as
   transfer/compression/prune.py does), per precision and batch.
2. Head latency H of a ``DetectionHead`` (``--head-width/--head-depth``, default 96/2, 3 classes) on the
   student contract: forward
   alone, and forward + eager post-processing (decode + per-class NMS, heads/postprocess.py; class biases
   raised so NMS sees up to 1000 candidates, as in bench.head_cost).
3. N tasks per image at ``--share-batches``: shared (trunk once + N heads, each with its post-processing)
   against independent (N x (trunk + head)); images/s, the measured ratio and ``N(T+H)/(T+NH)`` from T
   and H measured next to them.
4. The same without post-processing (forward only), predicted from T and the head's forward alone, and
   on cuda (``--cuda-graphs``, default on) also as replayed ``torch.cuda.CUDAGraph`` captures (no launch
   overhead).

Timing: eval mode, ``torch.no_grad``, channels_last, ``cudnn.benchmark``; up to ``--warmup`` calls, then
the median of ``--runs`` calls, each synchronised (CUDA events on cuda, ``perf_counter`` on cpu), so a
number is the latency of one request including launch overhead; a measurement stops after
``--max-seconds`` of warm-up and again of runs (at least 3 warm-up calls and 5 runs; the runs taken are
recorded). fp16/bf16: backbone, neck and heads are cast with ``.to(dtype)``; ``Normalize`` stays fp32 on
the uint8 input and its output is cast, so the input stays uint8; the maps stay in ``dtype`` for the
heads (the fp16 ONNX export instead casts them back to fp32 for fp32 heads); post-processing decodes
boxes in fp32 (grid points are fp32). The eager NMS (shared/nms.py) copies the IoU matrix to the host
and loops in Python, so "with post-processing" numbers include that host work. A measurement that fails
records its error in the JSON and the run goes on; the JSON is rewritten after every section.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from heads.head import DetectionHead, HeadArchitecture
from heads.postprocess import PostprocessConfig, postprocess
from shared.trunk import TRUNK_SIZES, Trunk, TrunkConfig

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CL = torch.channels_last
POST = PostprocessConfig(score_threshold=0.05, iou_threshold=0.6, max_dets=100)


class AtPrecision(nn.Module):
    """Trunk forward in ``dtype``: ``(B, 3, H, W) uint8 -> {"p3": (B, C, H/8, W/8), ...}`` in ``dtype``."""

    def __init__(self, trunk: Trunk, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.trunk, self.dtype = trunk.eval(), dtype
        trunk.normalize.to(device)  # fp32 on the uint8 input
        trunk.backbone.to(device, dtype, memory_format=CL)
        trunk.neck.to(device, dtype, memory_format=CL)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        t = self.trunk
        return t.neck(t.backbone(t.normalize(images).to(self.dtype)))


def pruned_config(cfg: TrunkConfig, ratio: float) -> TrunkConfig:
    """``cfg`` with every expand-conv block's hidden width cut by ``ratio`` (multiple of 8, at least 8)."""
    io, hidden = cfg.backbone.block_io(), cfg.backbone.default_hidden()
    cut = tuple(
        h if (h == cin and e == 1) else max(8, int(round(h * (1 - ratio) / 8)) * 8)  # no expand conv: kept
        for (cin, _, _, e), h in zip(io, hidden)
    )
    return TrunkConfig(cfg.backbone.with_hidden(cut), cfg.channels)


def make_head(trunk: Trunk, dtype: torch.dtype, device: torch.device, width: int, depth: int) -> DetectionHead:
    """A 3-class head on ``trunk``'s contract, class/box biases +3 so NMS sees many candidates."""
    head = DetectionHead(trunk.feature_specs, HeadArchitecture(num_classes=3, width=width, depth=depth)).eval()
    with torch.no_grad():
        for pred in head.preds.values():
            pred.bias.add_(3.0)
    return head.to(device, dtype, memory_format=CL)


class Timer:
    """Median latency in ms of a callable, each call synchronised."""

    def __init__(self, device: torch.device, warmup: int, runs: int, max_seconds: float):
        self.cuda = device.type == "cuda"
        self.warmup, self.runs, self.max_seconds = warmup, runs, max_seconds
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def _once(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end)
        t = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t)

    def __call__(self, fn: Callable[[], object]) -> dict:
        """``{"ms": median, "runs": n}`` after up to ``warmup`` calls (at least 3, time-capped)."""
        deadline = time.perf_counter() + self.max_seconds
        for i in range(max(3, self.warmup)):
            fn()
            if i >= 2 and time.perf_counter() > deadline:
                break
        if self.cuda:
            torch.cuda.synchronize()
        deadline, times = time.perf_counter() + self.max_seconds, []
        while len(times) < self.runs and (len(times) < 5 or time.perf_counter() < deadline):
            times.append(self._once(fn))
        return {"ms": float(np.median(times)), "runs": len(times)}


class Bench:
    """Models, images and results of one run."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.device = args, torch.device(args.device)
        self.timer = Timer(self.device, args.warmup, args.runs, args.max_seconds)
        self.student = TRUNK_SIZES["student"]
        self.configs = {"teacher": TRUNK_SIZES["teacher"], "student": self.student,
                        "student-pruned": pruned_config(self.student, args.prune_ratio)}
        self._pools: dict[str, tuple[list[AtPrecision], list[DetectionHead]]] = {}
        self._images: dict[int, Tensor] = {}
        self.result: dict = {"meta": self._meta(), "trunk": [], "head": [], "sharing": [], "forward_only": []}
        self.th: dict[tuple[str, int], dict] = {}  # (precision, batch) -> T/H of section 3

    def _meta(self) -> dict:
        a, cuda = self.args, self.device.type == "cuda"
        return {
            "command": "python3 -m bench.gpu " + " ".join(sys.argv[1:]),
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if cuda else platform.processor() or "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "size": a.size, "batches": a.batches,
            "share_batches": a.share_batches, "tasks": a.tasks, "precisions": a.precisions, "runs": a.runs,
            "warmup": a.warmup, "max_seconds": a.max_seconds, "channels_last": True, "cudnn_benchmark": cuda,
            "head": {"num_classes": 3, "width": a.head_width, "depth": a.head_depth},
            "postprocess": POST.__dict__, "prune_ratio": a.prune_ratio,
        }

    def images(self, batch: int) -> Tensor:
        """``(batch, 3, S, S)`` uint8, channels_last, on the device (cached)."""
        if batch not in self._images:
            g = torch.Generator().manual_seed(batch)
            x = torch.randint(0, 256, (batch, 3, self.args.size, self.args.size), dtype=torch.uint8, generator=g)
            self._images[batch] = x.to(self.device).contiguous(memory_format=CL)
        return self._images[batch]

    def pool(self, prec: str) -> tuple[list[AtPrecision], list[DetectionHead]]:
        """``max(tasks)`` student trunks and heads at ``prec``: separate modules, copies of one trunk and one head.

        Copies, so every head sees the same features and boxes whether the trunk is shared or not: the
        eager NMS cost depends on the boxes (how many survive), and random weights would make it differ.
        """
        if prec not in self._pools:
            n, dtype = max(self.args.tasks), DTYPES[prec]
            trunk = Trunk(self.student)
            head = make_head(trunk, dtype, self.device, self.args.head_width, self.args.head_depth)
            trunk = AtPrecision(trunk, dtype, self.device)
            self._pools[prec] = ([trunk] + [copy.deepcopy(trunk) for _ in range(n - 1)],
                                 [head] + [copy.deepcopy(head) for _ in range(n - 1)])
        return self._pools[prec]

    def pool_or_record(self, section: str, row: dict) -> tuple[list[AtPrecision], list[DetectionHead]]:
        """:meth:`pool`, or empty lists after recording why it failed in ``result[section]``."""
        try:
            return self.pool(row["precision"])
        except Exception as exc:  # noqa: BLE001 - one failure must not end the run
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"[{section}] {row}: FAILED to build the models", flush=True)
            self.result[section].append(row)
            return [], []

    def measure(self, section: str, row: dict, fns: dict[str, Callable[[], Callable[[], object]]],
                keep: bool = True) -> dict:
        """Time every ``fns[key]()`` (a factory, so building may fail too) into ``row[key + "_ms"]``.

        Args:
            section: Progress label and, when ``keep``, the result list the row is appended to.
            row: What is measured (printed); timings and errors are added to it.
            fns: Name -> factory of the callable to time.
            keep: Append ``row`` to ``result[section]``.
        """
        for key, factory in fns.items():
            label = " ".join(f"{k}={v}" for k, v in row.items() if not k.endswith(("_ms", "_runs", "_error")))
            try:
                r = self.timer(factory())
                row[f"{key}_ms"], row[f"{key}_runs"] = r["ms"], r["runs"]
                print(f"[{section}] {label} {key}: {r['ms']:.3f} ms ({r['runs']} runs)", flush=True)
            except Exception as exc:  # noqa: BLE001 - one failure must not end the run
                row[f"{key}_ms"], row[f"{key}_error"] = None, f"{type(exc).__name__}: {exc}"[:500]
                print(f"[{section}] {label} {key}: FAILED {row[f'{key}_error']}", flush=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        if keep:
            self.result[section].append(row)
        return row


def shared_fn(trunk: nn.Module, heads: list[DetectionHead], images: Tensor, post: bool) -> Callable[[], object]:
    """Trunk once, then every head (with its post-processing when ``post``)."""
    def run() -> list:
        feats = trunk(images)
        return [postprocess(h(feats), POST) if post else h(feats) for h in heads]
    return run


def independent_fn(trunks: list[nn.Module], heads: list[DetectionHead], images: Tensor, post: bool
                   ) -> Callable[[], object]:
    """Every task runs its own trunk and head (and post-processing when ``post``)."""
    def run() -> list:
        return [postprocess(h(t(images)), POST) if post else h(t(images)) for t, h in zip(trunks, heads)]
    return run


def bench_trunks(b: Bench) -> None:
    """Section 1: T per trunk size, precision and batch."""
    for name, cfg in b.configs.items():
        info = b.result["meta"].setdefault("trunks", {}).setdefault(name, {})
        info["hidden"] = list(cfg.backbone.hidden or cfg.backbone.default_hidden())
        for prec in b.args.precisions:
            built: list[nn.Module] = []  # built on first use, so a failing build is recorded per row
            for batch in b.args.batches:
                b.measure("trunk", {"trunk": name, "precision": prec, "batch": batch},
                          {"trunk": partial(_trunk_at, built, info, cfg, prec, b, batch)})


def _trunk_at(built: list[nn.Module], info: dict, cfg: TrunkConfig, prec: str, b: Bench, batch: int
              ) -> Callable[[], object]:
    if not built:
        trunk = Trunk(cfg)
        info["params"] = sum(p.numel() for p in trunk.parameters())
        built.append(AtPrecision(trunk, DTYPES[prec], b.device))
    return _call(built[0], b.images(batch))


def bench_heads(b: Bench) -> None:
    """Section 2: H (forward, forward + post-processing) on the student contract."""
    for prec in b.args.precisions:
        for batch in b.args.batches:
            row: dict = {"precision": prec, "batch": batch}
            trunks, heads = b.pool_or_record("head", row)
            if not trunks:
                continue
            try:
                row |= _nms_stats(heads[0], trunks[0](b.images(batch)))
            except Exception as exc:  # noqa: BLE001 - the timings below record their own errors
                row["stats_error"] = f"{type(exc).__name__}: {exc}"[:500]
            b.measure("head", row, {"forward": partial(_head_fwd, heads[0], trunks[0], b.images(batch)),
                                    "forward_post": partial(_head_post, heads[0], trunks[0], b.images(batch))})


def _nms_stats(head: DetectionHead, feats: dict[str, Tensor]) -> dict:
    """Candidates entering NMS and detections kept, per image, for the JSON."""
    out = head(feats)
    cand = (out.logits.float().sigmoid() > POST.score_threshold).flatten(1).sum(1).clamp(max=POST.pre_nms_topk)
    dets = [len(d.scores) for d in postprocess(out, POST)]
    return {"nms_candidates": float(cand.float().mean()), "detections_per_image": float(np.mean(dets))}


def _call(module: nn.Module, inputs: object) -> Callable[[], object]:
    return lambda: module(inputs)


def _head_fwd(head: DetectionHead, trunk: nn.Module, images: Tensor) -> Callable[[], object]:
    return _call(head, trunk(images))


def _head_post(head: DetectionHead, trunk: nn.Module, images: Tensor) -> Callable[[], object]:
    feats = trunk(images)
    return lambda: postprocess(head(feats), POST)


def _predicted(t: float | None, h: float | None, n: int) -> float | None:
    return None if t is None or h is None else n * (t + h) / (t + n * h)


def bench_sharing(b: Bench) -> None:
    """Section 3: shared vs independent with post-processing, T and H measured alongside."""
    for prec in b.args.precisions:
        for batch in b.args.share_batches:
            trunks, heads = b.pool_or_record("sharing", {"precision": prec, "batch": batch})
            if not trunks:
                continue
            x = b.images(batch)
            th = b.measure("sharing", {"precision": prec, "batch": batch}, {
                "T": partial(_call, trunks[0], x), "H": partial(_head_post, heads[0], trunks[0], x),
                "Hf": partial(_head_fwd, heads[0], trunks[0], x)}, keep=False)
            b.th[(prec, batch)] = th
            for n in b.args.tasks:
                row = b.measure("sharing", {"precision": prec, "batch": batch, "tasks": n}, {
                    "shared": partial(shared_fn, trunks[0], heads[:n], x, True),
                    "independent": partial(independent_fn, trunks[:n], heads[:n], x, True)})
                row["T_ms"], row["H_ms"] = th.get("T_ms"), th.get("H_ms")
                row["predicted"] = _predicted(row["T_ms"], row["H_ms"], n)


def _graphed(make: Callable[..., Callable[[], object]], *args: object) -> Callable[[], object]:
    """Capture ``make(*args)`` (fixed inputs) in a CUDA graph; return its replay."""
    fn = make(*args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()

    def replay() -> object:
        graph.replay()
        return outputs
    return replay


def bench_forward(b: Bench) -> None:
    """Section 4: forward only (no post-processing), shared vs independent, eager and (cuda) CUDA graphs."""
    graphs = b.args.cuda_graphs and b.device.type == "cuda"
    for prec in b.args.precisions:
        for batch in b.args.share_batches:
            trunks, heads = b.pool_or_record("forward_only", {"precision": prec, "batch": batch})
            if not trunks:
                continue
            x, th = b.images(batch), b.th.get((prec, batch), {})
            for n in b.args.tasks:
                shared = (shared_fn, trunks[0], heads[:n], x, False)
                independent = (independent_fn, trunks[:n], heads[:n], x, False)
                fns = {"eager_shared": partial(*shared), "eager_independent": partial(*independent)}
                if graphs:
                    fns |= {"graph_shared": partial(_graphed, *shared),
                            "graph_independent": partial(_graphed, *independent)}
                row = b.measure("forward_only", {"precision": prec, "batch": batch, "tasks": n}, fns)
                row["T_ms"], row["Hf_ms"] = th.get("T_ms"), th.get("Hf_ms")
                row["predicted"] = _predicted(row["T_ms"], row["Hf_ms"], n)
                if graphs:
                    torch.cuda.empty_cache()


def _fmt(ms: float | None, batch: int | None = None) -> str:
    if ms is None:
        return "error"
    return f"{ms:.3f}" if batch is None else f"{ms:.3f} ({batch * 1000 / ms:.0f})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def trunk_table(b: Bench) -> str:
    """Section 1 as markdown: ms (images/s) by batch."""
    rows = []
    for name in b.configs:
        for prec in b.args.precisions:
            got = {r["batch"]: r["trunk_ms"] for r in b.result["trunk"] if (r["trunk"], r["precision"]) == (name, prec)}
            params = b.result["meta"]["trunks"][name].get("params")
            rows.append([name, "-" if params is None else f"{params / 1e6:.2f} M", prec]
                        + [_fmt(got.get(n), n) for n in b.args.batches])
    return _table(["trunk", "params", "precision"] + [f"b{n} ms (img/s)" for n in b.args.batches], rows)


def head_table(b: Bench) -> str:
    """Section 2 as markdown, with H/T against the student trunk."""
    t = {(r["precision"], r["batch"]): r["trunk_ms"] for r in b.result["trunk"] if r["trunk"] == "student"}
    rows = []
    for r in b.result["head"]:
        h, tt = r.get("forward_post_ms"), t.get((r["precision"], r["batch"]))
        rows.append([r["precision"], str(r["batch"]), _fmt(r.get("forward_ms")), _fmt(h),
                     "-" if h is None or tt is None else f"{h / tt:.3f}",
                     str(r.get("nms_candidates", "-")), str(r.get("detections_per_image", "-"))])
    return _table(["precision", "batch", "H forward ms", "H fwd+post ms", "H/T (student)", "NMS candidates",
                   "dets/img"], rows)


def _ratio(a: float | None, c: float | None) -> str:
    return "-" if a is None or c is None else f"{a / c:.2f}x"


def sharing_table(b: Bench) -> str:
    """Section 3 as markdown."""
    rows = [[r["precision"], str(r["batch"]), str(r["tasks"]), _fmt(r["T_ms"]), _fmt(r["H_ms"]),
             _fmt(r.get("shared_ms"), r["batch"]), _fmt(r.get("independent_ms"), r["batch"]),
             _ratio(r.get("independent_ms"), r.get("shared_ms")),
             "-" if r.get("predicted") is None else f"{r['predicted']:.2f}x"]
            for r in b.result["sharing"] if "tasks" in r]
    return _table(["precision", "batch", "N", "T ms", "H ms", "shared ms (img/s)", "independent ms (img/s)",
                   "measured", "predicted N(T+H)/(T+NH)"], rows)


def forward_table(b: Bench) -> str:
    """Section 4 as markdown (graph columns "-" when not captured)."""
    rows = []
    for r in (r for r in b.result["forward_only"] if "tasks" in r):
        graphed = "graph_shared_ms" in r or "graph_shared_error" in r
        g = [_fmt(r.get("graph_shared_ms"), r["batch"]), _fmt(r.get("graph_independent_ms"), r["batch"]),
             _ratio(r.get("graph_independent_ms"), r.get("graph_shared_ms"))] if graphed else ["-"] * 3
        rows.append([r["precision"], str(r["batch"]), str(r["tasks"]), _fmt(r["T_ms"]), _fmt(r["Hf_ms"]),
                     _fmt(r.get("eager_shared_ms"), r["batch"]), _fmt(r.get("eager_independent_ms"), r["batch"]),
                     _ratio(r.get("eager_independent_ms"), r.get("eager_shared_ms")),
                     "-" if r["predicted"] is None else f"{r['predicted']:.2f}x"] + g)
    return _table(["precision", "batch", "N", "T ms", "H fwd ms", "eager shared ms (img/s)",
                   "eager indep. ms (img/s)", "eager ratio", "predicted", "graph shared ms (img/s)",
                   "graph indep. ms (img/s)", "graph ratio"], rows)


def _csv(cast: Callable[[str], object]) -> Callable[[str], list]:
    return lambda text: [cast(v.strip()) for v in text.split(",") if v.strip()]


def parse_args() -> argparse.Namespace:
    """Command line; defaults depend on whether cuda is available."""
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--size", type=int, default=192, help="square input side in pixels (e.g. 192, 320, 640)")
    p.add_argument("--batches", type=_csv(int), default=[1, 8, 32], help="trunk/head batches")
    p.add_argument("--share-batches", type=_csv(int), default=[1, 8], help="batches of sections 3 and 4")
    p.add_argument("--tasks", type=_csv(int), default=[1, 2, 4, 8], help="N heads per image")
    p.add_argument("--precisions", type=_csv(str), default=None, help="fp32,fp16,bf16 (default fp32,fp16 on "
                   "cuda, fp32 on cpu)")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--max-seconds", type=float, default=1.0, help="cap of warm-up and of runs per measurement")
    p.add_argument("--prune-ratio", type=float, default=0.28, help="hidden widths cut of student-pruned")
    p.add_argument("--head-width", type=int, default=96, help="head tower width (default: %(default)s)")
    p.add_argument("--head-depth", type=int, default=2, help="head tower depth (default: %(default)s)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1 on cpu as in head_cost.py, "
                   "torch's choice on cuda)")
    p.add_argument("--json", default="gpu_bench.json")
    args = p.parse_args()
    if args.threads is None and not args.device.startswith("cuda"):
        args.threads = 1
    if args.precisions is None:
        args.precisions = ["fp32", "fp16"] if args.device.startswith("cuda") else ["fp32"]
    bad = [v for v in args.precisions if v not in DTYPES]
    if bad:
        p.error(f"unknown precision(s) {bad}; choose from {sorted(DTYPES)}")
    if args.device.startswith("cuda") and not cuda:
        p.error("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    return args


def main() -> int:
    args = parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    b = Bench(args)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = b.result["meta"]
    print(f"# polyhead GPU bench: {meta['device_name']} ({args.device}), torch {torch.__version__}, "
          f"cuda {meta['cuda']}, {args.size} px\n\nReproduce with: `{meta['command']}`", flush=True)
    t0 = time.perf_counter()
    sections = ((bench_trunks, trunk_table, "Trunk latency T, ms (images/s)"),
                (bench_heads, head_table, "Head latency H (student contract, 3 classes)"),
                (bench_sharing, sharing_table, "N tasks per image: shared vs independent (with post-processing)"),
                (bench_forward, forward_table, "Forward only (no post-processing): eager and CUDA graphs"))
    with torch.no_grad():
        for run, table, title in sections:
            try:
                run(b)
            except Exception as exc:  # noqa: BLE001 - keep what was measured, go on with the next section
                b.result.setdefault("section_errors", {})[run.__name__] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"[{run.__name__}] FAILED {type(exc).__name__}: {exc}", flush=True)
            meta["seconds"] = round(time.perf_counter() - t0, 1)
            out.write_text(json.dumps(b.result, indent=2) + "\n")
            try:
                print(f"\n## {title}\n\n{table(b)}\n", flush=True)
            except Exception as exc:  # noqa: BLE001 - the JSON is written; go on with the next section
                print(f"\n## {title}\n\n(table failed: {type(exc).__name__}: {exc})\n", flush=True)
    print(f"wrote {out} ({meta['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
