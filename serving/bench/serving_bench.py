"""`polyhead bench serving`: all N tasks per image through the shared trunk vs N independent detectors.

Both sides run on the same embedded Triton build, python backend, same ONNX weights:

- shared: the fan-out ensemble ``detect`` (one trunk pass feeding N heads) in the heads layout
  ``heads_layout`` (default ``"in_trunk"``: the trunk model hosts every head, one backend process);
  every other layout (``"shared"``: one ``heads`` model, two processes; ``"per_task"``: one
  ``head_<task>`` process per task) is measured beside it, all under ``layouts``;
- independent: N models ``full_<i>``, each one ONNX graph trunk+head (its own trunk), all N
  requested concurrently for every image (the best case for independent detectors: no ensemble).

Throughput is each side's peak: it is measured at every client concurrency of ``concurrency`` and
the best kept (``by_concurrency`` holds them all), since the sides peak at different loads (N
independent detectors get N requests in flight per client, the fan-out one).

Beside throughput and memory it measures, per N, the latency of one image through ``detect``
(one request at a time) against the same computation in process (:func:`_ort_fanout`: the same
ONNX files in onnxruntime sessions with the layout's thread settings, trunk then every head; the
two interleaved in blocks of 20 calls while the server runs, so both see the same machine), and,
once, the gain of Triton's dynamic batcher for ``detect`` at concurrency 8 (the ``in_trunk``
trunk batches in every case, so there the comparison is its default delay 0 against 100 us).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tritonclient import grpc as grpcclient

from serving.bench.baselines import independent_repository, replicate_workspace
from serving.bench.load_generator import ClosedLoopLoad, interleaved
from serving.triton import model_configs as mcfg
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.model_names import FANOUT_MODEL
from serving.triton.processes import group_memory_mib
from serving.triton.repository import build_repository
from shared.artifacts import read_json, sha256_file
from shared.workspace import Workspace

#: Issue targets: N -> (minimum shared/independent images/s, maximum shared/independent memory).
TARGETS = {4: (3.0, 0.40), 8: (5.0, 0.30)}
#: Issue target: Triton p50 at most this multiple of in-process onnxruntime p50.
LATENCY_TARGET = 1.5


def _input(image: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("images", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image)
    return inp


def _throughput(url: str, models: list[str], image: np.ndarray, concurrency: int, seconds: float) -> dict:
    """Images/s when every image needs one request to each of ``models`` (sent concurrently).

    A :class:`ClosedLoopLoad` of ``concurrency`` clients for ``seconds`` (after one warm-up request
    per model), each request one image: one gRPC ``infer`` per model through a shared pool, all in
    flight together, done when every one returned.

    Returns:
        ``{"img_per_s", "p50_ms", "p95_ms", "errors"}`` (latencies of the successful images).
    """
    pool = ThreadPoolExecutor(max_workers=concurrency * len(models))

    def client(_index: int) -> contextlib.nullcontext[Callable[[], None]]:
        grpc = grpcclient.InferenceServerClient(url)
        inp = _input(image)

        def send() -> None:
            for future in [pool.submit(grpc.infer, m, [inp]) for m in models]:
                future.result()

        return contextlib.nullcontext(send)

    warm = grpcclient.InferenceServerClient(url)
    for m in models:
        warm.infer(m, [_input(image)])
    with ClosedLoopLoad(client, concurrency) as load:
        time.sleep(seconds)
    pool.shutdown()
    return {"img_per_s": load.ok_per_s(), **load.percentiles_ms((50, 95)), "errors": load.failed}


def _session(path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime session with the python backend's options (see ``serving/triton/backend/model.py``)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_fanout(ws: Workspace, tasks: list[str], variant: str, image: np.ndarray, layout: str) -> Callable[[], None]:
    """In process: a call running the trunk on ``image`` then every head on its features.

    The same ONNX files, thread settings and parallelism as ``layout``'s served trunk and heads, no
    server, no serialisation: heads one after the other in this thread, or, in_trunk, split into
    ``request_workers`` chunks run side by side as its backend does for one request.
    """
    opts = mcfg.RepositoryOptions(heads_layout=layout)
    trunk = _session(ws.variant(variant) / "model.onnx", opts.trunk_threads)
    heads = [_session(ws.head(t) / "model.onnx", opts.head_threads) for t in tasks]
    names = [i.name for i in heads[0].get_inputs()]  # p3, p4, p5
    ways = opts.request_workers if layout == "in_trunk" else 1
    chunks = [heads[i::ways] for i in range(ways) if heads[i::ways]]
    pool = ThreadPoolExecutor(len(chunks)) if len(chunks) > 1 else None

    def run(chunk: list[ort.InferenceSession], feeds: dict[str, np.ndarray]) -> None:
        for head in chunk:
            head.run(None, feeds)

    def once() -> None:
        feeds = dict(zip(names, trunk.run(names, {"images": image}), strict=True))
        if pool is None:
            run(chunks[0], feeds)
        else:
            for future in [pool.submit(run, chunk, feeds) for chunk in chunks]:
                future.result()

    return once


def _latency(url: str, image: np.ndarray, reference: Callable[[], None], seconds: float) -> dict[str, dict]:
    """One ``detect`` request at a time through gRPC vs ``reference`` in process, interleaved.

    Returns:
        ``{"triton": {...}, "ort": {...}}`` percentiles.
    """
    client = grpcclient.InferenceServerClient(url)
    inp = _input(image)
    return interleaved({"triton": lambda: client.infer(FANOUT_MODEL, [inp]), "ort": reference}, seconds)


def _serve(repo: Path) -> EmbeddedTriton:
    return EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())


def _measure(repo: Path, models: list[str], image: np.ndarray, concurrency: int | list[int], seconds: float,
             latency_s: float = 0.0, reference: Callable[[], None] | None = None) -> dict:
    """Peak throughput over ``concurrency`` and memory of ``repo``, then latency if ``latency_s``.

    Returns:
        The figures at the concurrency with the most images/s (``concurrency`` says which), the
        per-concurrency ones under ``by_concurrency``, memory after the last load, and with
        ``latency_s`` ``latency`` / ``ort_latency``: :func:`_latency` of ``detect`` vs ``reference``.
    """
    levels = [concurrency] if isinstance(concurrency, int) else list(concurrency)
    with _serve(repo) as server:
        runs = {c: _throughput(server.url, models, image, c, seconds) for c in levels}
        best = max(levels, key=lambda c: runs[c]["img_per_s"])
        result = {**runs[best], "concurrency": best, "errors": sum(r["errors"] for r in runs.values()),
                  "by_concurrency": {str(c): r for c, r in runs.items()}}
        result.update(group_memory_mib(server.pid))
        if latency_s > 0:
            both = _latency(server.url, image, reference, latency_s)
            result["latency"], result["ort_latency"] = both["triton"], both["ort"]
    return result


def _versus(side: dict, independent: dict) -> dict:
    """One layout's figures and its ratios to the independent detectors."""
    return {**side, "speedup": side["img_per_s"] / max(independent["img_per_s"], 1e-9),
            "rss_fraction": side["rss_mib"] / max(independent["rss_mib"], 1e-9),
            "pss_fraction": side["pss_mib"] / max(independent["pss_mib"], 1e-9)}


def _row(n: int, layouts: dict[str, dict], chosen: str, independent: dict) -> dict:
    """One result row: the issue's flat keys (the ``chosen`` layout), then every side in full."""
    shared = layouts[chosen]
    triton_lat, ort_lat = shared.pop("latency"), shared.pop("ort_latency")
    versus = _versus(shared, independent)
    return {
        "tasks": n,
        "shared_images_per_s": shared["img_per_s"],
        "independent_images_per_s": independent["img_per_s"],
        "speedup": versus["speedup"],
        "shared_rss_mb": shared["rss_mib"],
        "independent_rss_mb": independent["rss_mib"],
        "shared_pss_mb": shared["pss_mib"],
        "independent_pss_mb": independent["pss_mib"],
        "rss_fraction": versus["rss_fraction"],
        "pss_fraction": versus["pss_fraction"],
        "memory_ratio": independent["pss_mib"] / max(shared["pss_mib"], 1e-9),
        "shared_p50_ms": shared["p50_ms"],
        "shared_p95_ms": shared["p95_ms"],
        "independent_p50_ms": independent["p50_ms"],
        "independent_p95_ms": independent["p95_ms"],
        "triton_p50_ms": triton_lat["p50_ms"],
        "ort_p50_ms": ort_lat["p50_ms"],
        "shared": shared,
        "independent": independent,
        "layouts": {name: _versus(side, independent) for name, side in layouts.items()},
    }


def _batching_gain(
    src: Workspace, variant: str, image: np.ndarray, concurrency: int, seconds: float, heads_layout: str
) -> dict:
    """``detect`` images/s with the dynamic batcher on vs off (in_trunk: delay 0 vs 100 us), the workspace's N."""
    n = len(src.tasks())
    with tempfile.TemporaryDirectory(prefix="polyhead-bench-") as tmp:
        ws_dir = Path(tmp) / "ws"
        replicate_workspace(src, ws_dir, n, variant)
        sides = {}
        for on in (False, True):
            repo = build_repository(ws_dir, Path(tmp) / f"repo-{on}", dynamic_batching=on, heads_layout=heads_layout)
            sides[on] = _measure(repo.path, [FANOUT_MODEL], image, concurrency, seconds)
    # in_trunk's trunk batches with delay 0 even when off: "on" is the 100 us delay
    off, on = sides[False], sides[True]
    return {"tasks": n, "concurrency": concurrency,
            "off_images_per_s": off["img_per_s"], "on_images_per_s": on["img_per_s"],
            "off_p50_ms": off["p50_ms"], "on_p50_ms": on["p50_ms"],
            "gain": on["img_per_s"] / max(off["img_per_s"], 1e-9), "errors": off["errors"] + on["errors"]}


def _targets(rows: list[dict], latency: dict) -> list[dict]:
    """The issue's targets against the measured values (memory: RSS fraction, PSS beside it).

    ``met`` judges the chosen layout; ``layouts_met`` every layout measured.
    """
    out = []
    for row in rows:
        if row["tasks"] in TARGETS:
            speed, mem = TARGETS[row["tasks"]]
            out.append({"tasks": row["tasks"], "speedup": row["speedup"], "speedup_target": speed,
                        "rss_fraction": row["rss_fraction"], "pss_fraction": row["pss_fraction"],
                        "memory_target": mem,
                        "met": row["speedup"] >= speed and row["rss_fraction"] <= mem,
                        "layouts_met": {name: side["speedup"] >= speed and side["rss_fraction"] <= mem
                                        for name, side in row["layouts"].items()}})
    out.append({"latency_ratio": latency["ratio"], "latency_target": LATENCY_TARGET,
                "met": latency["ratio"] <= LATENCY_TARGET})
    return out


def run_serving_bench(
    workdir: str | Path, tasks: list[int], variant: str = "reference", concurrency: int | list[int] = (2, 4, 8),
    seconds: float = 10.0,
    progress: Callable[[dict], None] | None = None, batching_concurrency: int = 8, heads_layout: str = "in_trunk",
) -> dict:
    """Side-by-side throughput, latency and memory for each N in ``tasks``.

    Args:
        workdir: Workspace with the trunk ``variant`` and at least one head (copied to N heads).
        tasks: The task counts N to measure.
        variant: Trunk variant to serve.
        concurrency: Concurrent clients (each sends one image's requests at a time); a list: every
            side is measured at each and keeps its peak.
        seconds: Measurement time per side, concurrency and N (the interleaved latencies get half of it, >= 2 s).
        progress: Called with each row when it is done.
        batching_concurrency: Clients for the dynamic batching comparison (0 skips it).
        heads_layout: Heads layout of the shared side (one of ``HEADS_LAYOUTS``); every layout is
            measured (``rows[i]["layouts"]``).

    Returns:
        ``{"rows": [{"tasks": N, "shared_images_per_s": ..., ...}], "triton_p50_ms": ...,
        "ort_p50_ms": ..., "latency": {...}, "dynamic_batching": {...}, "targets": [...], ...}``;
        top-level latencies are from the row whose N is closest to the workspace's task count.
    """
    src = Workspace.at(workdir)
    size = int(read_json(src.variant(variant) / "variant.json")["input_size"])
    image = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    latency_s = max(2.0, seconds / 2)  # Triton and in-process calls, interleaved
    rows = []
    for n in tasks:
        with tempfile.TemporaryDirectory(prefix="polyhead-bench-") as tmp:
            ws_dir = Path(tmp) / "ws"
            names = replicate_workspace(src, ws_dir, n, variant)
            reference = _ort_fanout(Workspace.at(ws_dir), names, variant, image, heads_layout)
            layouts = {}
            for layout in (heads_layout, *(x for x in mcfg.HEADS_LAYOUTS if x != heads_layout)):
                repo = build_repository(ws_dir, Path(tmp) / layout, heads_layout=layout)
                layouts[layout] = _measure(repo.path, [FANOUT_MODEL], image, concurrency, seconds,
                                           latency_s if layout == heads_layout else 0.0, reference)
            ind_repo = Path(tmp) / "independent"
            models = independent_repository(Workspace.at(ws_dir), ind_repo, names, variant)
            independent = _measure(ind_repo, models, image, concurrency, seconds)
        rows.append(_row(n, layouts, heads_layout, independent))
        if progress:
            progress(rows[-1])
    own = len(src.tasks())
    pick = min(rows, key=lambda r: (abs(r["tasks"] - own), r["tasks"]))
    latency = {"tasks": pick["tasks"], "triton_p50_ms": pick["triton_p50_ms"], "ort_p50_ms": pick["ort_p50_ms"],
               "ratio": pick["triton_p50_ms"] / max(pick["ort_p50_ms"], 1e-9),
               "compared": "one image, trunk + every head of the fan-out: one gRPC `detect` request vs "
                           "in-process onnxruntime sessions of the same ONNX files, same thread settings"}
    result = {"rows": rows, "triton_p50_ms": latency["triton_p50_ms"], "ort_p50_ms": latency["ort_p50_ms"],
              "latency": latency, "variant": variant,
              "concurrency": [concurrency] if isinstance(concurrency, int) else list(concurrency),
              "seconds": seconds,
              "heads_layout": heads_layout,
              "trunk_sha256": sha256_file(src.variant(variant) / "model.onnx"), "workspace_tasks": own,
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    if batching_concurrency > 0:
        result["dynamic_batching"] = _batching_gain(src, variant, image, batching_concurrency, seconds, heads_layout)
        result["dynamic_batching_gain"] = result["dynamic_batching"]["gain"]
    result["targets"] = _targets(rows, latency)
    return result


def format_table(result: dict) -> str:
    """Markdown table of :func:`run_serving_bench` output, then latency, batching and targets."""
    others = [x for x in mcfg.HEADS_LAYOUTS if x != result["heads_layout"]]
    lines = ["| N tasks | shared img/s (clients) | independent img/s (clients) | speed-up | shared p50 / p95 ms "
             "| independent p95 ms | RSS shared / independent MiB | PSS shared / independent MiB | Triton / ort p50 ms "
             + "".join(f"| {x} img/s, RSS / PSS MiB " for x in others) + "| errors |",
             "|---" * (10 + len(others)) + "|"]
    for r in result["rows"]:
        errors = r["independent"]["errors"] + sum(side["errors"] for side in r["layouts"].values())
        alt = "".join(f"{r['layouts'][x]['img_per_s']:.1f}, {r['layouts'][x]['rss_mib']:.0f} / "
                      f"{r['layouts'][x]['pss_mib']:.0f} | " for x in others)
        lines.append(
            f"| {r['tasks']} | {r['shared_images_per_s']:.1f} ({r['shared']['concurrency']}) | "
            f"{r['independent_images_per_s']:.1f} ({r['independent']['concurrency']}) | "
            f"{r['speedup']:.2f}x | {r['shared_p50_ms']:.1f} / {r['shared_p95_ms']:.1f} | "
            f"{r['independent_p95_ms']:.1f} | {r['shared_rss_mb']:.0f} / {r['independent_rss_mb']:.0f} "
            f"({r['rss_fraction']:.0%}) | {r['shared_pss_mb']:.0f} / {r['independent_pss_mb']:.0f} "
            f"({r['pss_fraction']:.0%}) | {r['triton_p50_ms']:.2f} / {r['ort_p50_ms']:.2f} | {alt}{errors} |")
    lat = result["latency"]
    lines += ["", f"Shared side: heads layout `{result['heads_layout']}`; beside it: {', '.join(others)}.",
              f"Latency, N={lat['tasks']}: Triton `detect` p50 {lat['triton_p50_ms']:.2f} ms vs in-process "
              f"onnxruntime p50 {lat['ort_p50_ms']:.2f} ms = {lat['ratio']:.2f}x"]
    if "dynamic_batching" in result:
        b = result["dynamic_batching"]
        lines.append(f"Dynamic batching, `detect`, N={b['tasks']}, concurrency {b['concurrency']}: "
                     f"off {b['off_images_per_s']:.1f} img/s, on {b['on_images_per_s']:.1f} img/s = "
                     f"{b['gain']:.2f}x")
    for t in result["targets"]:
        verdict = "met" if t["met"] else "MISSED"
        if "tasks" in t:
            beside = ", ".join(f"{x} {'met' if ok else 'missed'}" for x, ok in t["layouts_met"].items() if x in others)
            lines.append(f"Target N={t['tasks']}: >= {t['speedup_target']:.0f}x img/s and <= "
                         f"{t['memory_target']:.0%} memory; got {t['speedup']:.2f}x, RSS {t['rss_fraction']:.0%} "
                         f"(PSS {t['pss_fraction']:.0%}): {verdict} ({beside})")
        else:
            lines.append(f"Target Triton p50 <= {t['latency_target']}x onnxruntime; got "
                         f"{t['latency_ratio']:.2f}x: {verdict}")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    """Write the result as JSON."""
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
