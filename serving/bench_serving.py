"""`polyhead bench serving`: all N tasks per image through the shared trunk vs N independent detectors.

Both sides run on the same embedded Triton build, python backend, same ONNX weights:
- shared: the fan-out ensemble ``detect`` (one trunk pass feeding N heads);
- independent: N models ``full_<i>``, each one ONNX graph trunk+head (its own trunk), all N
  requested concurrently for every image (the best case for independent detectors: no ensemble).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from onnx import compose
from tritonclient import grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc

from serving import model_configs as mcfg
from serving.repository import BACKEND_MODEL_PY, build_repository
from serving.server import EmbeddedTriton, free_port, group_processes
from shared.artifacts import atomic_write_json, read_json, sha256_file
from shared.workspace import Workspace


def _replicate_workspace(src: Workspace, dst: Path, n: int, variant: str) -> list[str]:
    """A workspace with ``variant`` and ``n`` heads copied round-robin from ``src``'s heads."""
    ws = Workspace.at(dst)
    shutil.copytree(src.variant(variant), ws.variant(variant))
    sources = src.tasks()
    names = []
    for i in range(n):
        task = f"t{i}"
        shutil.copytree(src.head(sources[i % len(sources)]), ws.head(task))
        meta = read_json(ws.head(task) / "head.json")
        meta["task"] = task
        atomic_write_json(ws.head(task) / "head.json", meta)
        names.append(task)
    return names


def _independent_repository(ws: Workspace, out: Path, tasks: list[str], variant: str) -> list[str]:
    """N single-graph detectors ``full_<task>`` (trunk+head merged), python backend."""
    trunk = onnx.load(str(ws.variant(variant) / "model.onnx"))
    meta = read_json(ws.variant(variant) / "variant.json")
    size = int(meta["input_size"])
    opts = mcfg.RepositoryOptions()
    names = []
    for task in tasks:
        head = onnx.load(str(ws.head(task) / "model.onnx"))
        merged = compose.merge_models(
            trunk, compose.add_prefix(head, "h_"), io_map=[(f, f"h_{f}") for f in ("p3", "p4", "p5")]
        )
        outputs = {f"h_{o}": o for o in mcfg.HEAD_OUTPUTS}
        for tensor in merged.graph.output:
            tensor.name = outputs.get(tensor.name, tensor.name)
        for node in merged.graph.node:
            node.input[:] = [outputs.get(x, x) for x in node.input]
            node.output[:] = [outputs.get(x, x) for x in node.output]
        name = f"full_{task}"
        version = out / name / "1"
        version.mkdir(parents=True)
        onnx.save(merged, str(version / "model.onnx"))
        shutil.copy2(BACKEND_MODEL_PY, version / "model.py")
        cfg = mcfg._leaf(name, opts, 1, opts.trunk_threads)
        mcfg._tensor(cfg.input, "images", mc.TYPE_UINT8, [3, size, size])
        max_dets = int(read_json(ws.head(task) / "head.json")["max_dets"])
        for out_name, (dtype, dims) in mcfg.head_output_dims(max_dets).items():
            mcfg._tensor(cfg.output, out_name, dtype, dims)
        mcfg.write_config(cfg, out / name / "config.pbtxt")
        names.append(name)
    return names


def _pss_mib(pid: int) -> float:
    """Proportional set size of the server and all its stub processes, MiB."""
    total = 0
    for p in group_processes(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _throughput(url: str, models: list[str], image: np.ndarray, concurrency: int, seconds: float) -> dict:
    """Images/s when every image needs one request to each of ``models`` (sent concurrently)."""
    stop, lock = threading.Event(), threading.Lock()
    lat: list[float] = []
    errors = [0]
    pool = ThreadPoolExecutor(max_workers=concurrency * len(models))

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("images", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image)
        while not stop.is_set():
            t0 = time.perf_counter()
            futures = [pool.submit(client.infer, m, [inp]) for m in models]
            try:
                for f in futures:
                    f.result()
                with lock:
                    lat.append(time.perf_counter() - t0)
            except Exception:  # counted
                with lock:
                    errors[0] += 1

    for m in models:  # warm-up
        grpcclient.InferenceServerClient(url).infer(m, [_input(image)])
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.time()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.time() - t0
    pool.shutdown()
    ms = np.array(lat) * 1000
    return {"img_per_s": len(lat) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "errors": errors[0]}


def _input(image: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("images", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image)
    return inp


def _serve_and_measure(repo: Path, models: list[str], image: np.ndarray, concurrency: int, seconds: float) -> dict:
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    with EmbeddedTriton(repo, **ports) as server:
        result = _throughput(server.url, models, image, concurrency, seconds)
        result["pss_mib"] = _pss_mib(server.pid)
    return result


def run_serving_bench(
    workdir: str | Path, tasks: list[int], variant: str = "reference", concurrency: int = 4, seconds: float = 10.0,
    progress=None,
) -> dict:
    """Side-by-side throughput, latency and memory for each N in ``tasks``.

    Returns:
        ``{"rows": [{"tasks": N, "shared": {...}, "independent": {...}, "speedup": x, "memory_ratio": y}],
        "machine": ..., "variant": ...}``.
    """
    src = Workspace.at(workdir)
    size = int(read_json(src.variant(variant) / "variant.json")["input_size"])
    image = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    rows = []
    for n in tasks:
        with tempfile.TemporaryDirectory(prefix="polyhead-bench-") as tmp:
            ws_dir = Path(tmp) / "ws"
            names = _replicate_workspace(src, ws_dir, n, variant)
            repo = build_repository(ws_dir)
            shared = _serve_and_measure(repo.path, ["detect"], image, concurrency, seconds)
            ind_repo = Path(tmp) / "independent"
            models = _independent_repository(Workspace.at(ws_dir), ind_repo, names, variant)
            independent = _serve_and_measure(ind_repo, models, image, concurrency, seconds)
        row = {"tasks": n, "shared": shared, "independent": independent,
               "speedup": shared["img_per_s"] / max(independent["img_per_s"], 1e-9),
               "memory_ratio": independent["pss_mib"] / max(shared["pss_mib"], 1e-9)}
        rows.append(row)
        if progress:
            progress(row)
    return {"rows": rows, "variant": variant, "concurrency": concurrency, "seconds": seconds,
            "trunk_sha256": sha256_file(src.variant(variant) / "model.onnx")}


def format_table(result: dict) -> str:
    """Markdown table of :func:`run_serving_bench` output."""
    lines = ["| N tasks | shared img/s | independent img/s | speed-up | shared p95 ms | independent p95 ms "
             "| PSS shared / independent MiB | errors |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        s, i = r["shared"], r["independent"]
        lines.append(f"| {r['tasks']} | {s['img_per_s']:.1f} | {i['img_per_s']:.1f} | {r['speedup']:.2f}x | "
                     f"{s['p95_ms']:.1f} | {i['p95_ms']:.1f} | {s['pss_mib']:.0f} / {i['pss_mib']:.0f} | "
                     f"{s['errors'] + i['errors']} |")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    """Write the result as JSON."""
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
