"""`polyhead bench serving`: all N tasks per image through the shared trunk vs two baselines of N detectors.

Every side runs on the same embedded Triton build, python backend, same ONNX weights:

- shared: the fan-out ensemble ``detect`` (one trunk pass feeding N heads) in the heads layout
  ``heads_layout`` (default ``"in_trunk"``: the trunk model hosts every head, one backend process);
  every other layout (``"shared"``: one ``heads`` model, two processes; ``"per_task"``: one
  ``head_<task>`` process per task) is measured beside it, all under ``layouts``;
- independent: N models ``full_<i>``, each one ONNX graph trunk+head (its own trunk), all N
  requested concurrently for every image (the best case for independent detectors: no ensemble);
  N backend processes, so part of the shared side's gain over them is per-process overhead;
- inprocess: the same N merged detectors in ONE backend process with the in_trunk layout's
  threads, request workers and batcher (:func:`serving.bench.baselines.inprocess_repository`): the
  fair baseline, against which the shared side can gain only the N-1 trunk passes it saves, at
  most the compute ceiling N(T+H)/(T+NH) (``ceiling_speedup``; ``fraction_of_ceiling`` is the
  measured shared/inprocess ratio over it).

Every side's server runs for the whole measurement of one N and their loads alternate in blocks
(:func:`_measure_sides`), so the machine's load falls on every side alike.

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
from tritonclient import grpc as grpcclient

from serving.bench.baselines import (
    independent_repository,
    inprocess_repository,
    replicate_workspace,
    sharing_ceiling,
    trunk_and_head_ms,
)
from serving.bench.load_generator import ClosedLoopLoad, interleaved, percentiles_ms
from serving.triton import model_configs as mcfg
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.model_names import FANOUT_MODEL
from serving.triton.processes import group_cpu_s, group_memory_mib
from serving.triton.repository import build_repository
from shared.artifacts import read_json, sha256_file
from shared.errors import ServingError
from shared.onnx_session import cpu_session
from shared.workspace import Workspace
from transfer.export.device_keys import cpu_model

#: Issue targets: N -> (minimum shared/independent images/s, maximum shared/independent memory).
TARGETS = {4: (3.0, 0.40), 8: (5.0, 0.30)}
#: Issue target: Triton p50 at most this multiple of in-process onnxruntime p50.
LATENCY_TARGET = 1.5
#: What each baseline is, as the JSON and the tables say it.
BASELINES = {
    "independent": "N separate models full_<task> (trunk + head in one ONNX graph each), one python-backend "
                   "process each, the per_task layout's threads",
    "inprocess": "the same N merged detectors in ONE python-backend process, the in_trunk layout's threads, "
                 "request workers and batcher (what a native-backend deployment would run)",
    "ceiling": "N(T+H)/(T+NH): T, H the trunk's and one head's one-thread compute per image, in process",
}
#: Issue target: shared / in-process images/s at least this fraction of the sharing ceiling, every N.
CEILING_TARGET = 0.9


def _input(image: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("images", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image)
    return inp


def _load_block(server: EmbeddedTriton, models: list[str], image: np.ndarray, concurrency: int,
                seconds: float) -> dict:
    """One block of load: ``concurrency`` closed-loop clients for ``seconds``, each image one request per model.

    Every image needs one request to each of ``models``, sent concurrently through a shared pool,
    all in flight together, done when every one returned (one warm-up image first).

    Returns:
        ``{"ok", "failed", "elapsed_s", "latencies_s", "server_cpu_s", "client_cpu_s"}``: latencies of
        the successful images; CPU seconds of the server's process group and of this process (the
        clients) during the load.
    """
    url = server.url
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
    server_cpu, client_cpu = group_cpu_s(server.pid), _own_cpu_s()
    with ClosedLoopLoad(client, concurrency) as load:
        time.sleep(seconds)
    pool.shutdown()
    return {"ok": load.ok, "failed": load.failed, "elapsed_s": load.elapsed_s, "latencies_s": load.latencies_s(),
            "server_cpu_s": group_cpu_s(server.pid) - server_cpu, "client_cpu_s": _own_cpu_s() - client_cpu}


def _own_cpu_s() -> float:
    """CPU seconds (user + system) of this process so far: the load generator's clients."""
    t = os.times()
    return t.user + t.system


def _summary(blocks: list[dict]) -> dict:
    """One concurrency's blocks together.

    Returns:
        ``{"img_per_s", "p50_ms", "p95_ms", "errors", "blocks", "server_cpu_ms_per_image",
        "client_cpu_ms_per_image"}``: CPU per image of the server's processes and of this process
        (the gRPC clients).
    """
    latencies = [x for b in blocks for x in b["latencies_s"]]
    ok = max(sum(b["ok"] for b in blocks), 1)
    out = {"img_per_s": sum(b["ok"] for b in blocks) / max(sum(b["elapsed_s"] for b in blocks), 1e-9),
           **percentiles_ms(latencies, (50, 95)), "errors": sum(b["failed"] for b in blocks), "blocks": len(blocks)}
    for key in ("server", "client"):
        out[f"{key}_cpu_ms_per_image"] = 1000 * sum(b[f"{key}_cpu_s"] for b in blocks) / ok
    return out


def _ort_fanout(ws: Workspace, tasks: list[str], variant: str, image: np.ndarray, layout: str) -> Callable[[], None]:
    """In process: a call running the trunk on ``image`` then every head on its features.

    The same ONNX files, thread settings and parallelism as ``layout``'s served trunk and heads, no
    server, no serialisation: heads one after the other in this thread, or, in_trunk, split into
    ``request_workers`` chunks run side by side as its backend does for one request.
    """
    opts = mcfg.RepositoryOptions(heads_layout=layout)
    trunk = cpu_session(ws.variant(variant) / "model.onnx", opts.trunk_threads)
    heads = [cpu_session(ws.head(t) / "model.onnx", opts.head_threads) for t in tasks]
    names = [i.name for i in heads[0].get_inputs()]  # p3, p4, p5
    ways = opts.request_workers if layout == "in_trunk" else 1
    chunks = [heads[i::ways] for i in range(ways) if heads[i::ways]]
    pool = ThreadPoolExecutor(len(chunks)) if len(chunks) > 1 else None

    def run(chunk: list, feeds: dict[str, np.ndarray]) -> None:
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


def _measure_sides(sides: dict[str, tuple[Path, list[str]]], image: np.ndarray, concurrency: int | list[int],
                   seconds: float, blocks: int = 3, latency_side: str | None = None, latency_s: float = 0.0,
                   reference: Callable[[], None] | None = None) -> dict[str, dict]:
    """Peak throughput and memory of every side, their loads interleaved in blocks.

    Every side's server runs for the whole measurement (idle while another is loaded). Each of
    ``blocks`` rounds loads every side at every concurrency for ``seconds / blocks`` (the side
    order rotating between rounds), so load on the machine falls on every side alike; a
    concurrency's figures are over all its blocks.

    Args:
        sides: Name -> (repository, models one image needs a request to).
        latency_side: Side whose ``detect`` latency is measured against ``reference`` after the loads.

    Returns:
        Name -> the figures at the concurrency with the most images/s (``concurrency`` says which),
        the per-concurrency ones under ``by_concurrency``, memory after the loads, and on
        ``latency_side`` ``latency`` / ``ort_latency`` (:func:`_latency`).
    """
    levels = [concurrency] if isinstance(concurrency, int) else list(concurrency)
    names = list(sides)
    raw: dict[str, dict[int, list[dict]]] = {n: {c: [] for c in levels} for n in names}
    results = {}
    with contextlib.ExitStack() as stack:
        servers = {n: stack.enter_context(_serve(repo)) for n, (repo, _) in sides.items()}
        for b in range(blocks):
            for name in names[b % len(names):] + names[: b % len(names)]:
                for c in levels:
                    raw[name][c].append(_load_block(servers[name], sides[name][1], image, c, seconds / blocks))
        for name in names:
            runs = {c: _summary(raw[name][c]) for c in levels}
            best = max(levels, key=lambda c: runs[c]["img_per_s"])
            results[name] = {**runs[best], "concurrency": best, "errors": sum(r["errors"] for r in runs.values()),
                             "by_concurrency": {str(c): r for c, r in runs.items()},
                             **group_memory_mib(servers[name].pid)}
        if latency_side is not None and latency_s > 0:
            both = _latency(servers[latency_side].url, image, reference, latency_s)
            results[latency_side]["latency"], results[latency_side]["ort_latency"] = both["triton"], both["ort"]
    return results


def _versus(side: dict, independent: dict) -> dict:
    """One layout's figures and its ratios to the independent detectors."""
    return {**side, "speedup": side["img_per_s"] / max(independent["img_per_s"], 1e-9),
            "rss_fraction": side["rss_mib"] / max(independent["rss_mib"], 1e-9),
            "pss_fraction": side["pss_mib"] / max(independent["pss_mib"], 1e-9)}


def _cpu(side: dict) -> float:
    """Server + client CPU ms per image at ``side``'s peak concurrency."""
    return side["server_cpu_ms_per_image"] + side["client_cpu_ms_per_image"]


def _row(n: int, layouts: dict[str, dict], chosen: str, independent: dict, inprocess: dict,
         cost: dict[str, float]) -> dict:
    """One result row: the issue's flat keys (the ``chosen`` layout), then every side in full.

    ``speedup`` is against the N separate models, ``speedup_vs_inprocess`` against the N detectors
    in one process; ``fraction_of_ceiling`` is the latter over the compute ceiling of ``cost``'s T and H.
    """
    shared = layouts[chosen]
    triton_lat, ort_lat = shared.pop("latency"), shared.pop("ort_latency")
    versus = _versus(shared, independent)
    ceiling = sharing_ceiling(n, cost["trunk_ms"], cost["head_ms"])
    vs_inprocess = shared["img_per_s"] / max(inprocess["img_per_s"], 1e-9)
    cpu_speedup = _cpu(inprocess) / max(_cpu(shared), 1e-9)
    return {
        "tasks": n,
        "shared_images_per_s": shared["img_per_s"],
        "independent_images_per_s": independent["img_per_s"],
        "inprocess_images_per_s": inprocess["img_per_s"],
        "speedup": versus["speedup"],
        "speedup_vs_inprocess": vs_inprocess,
        "ceiling_speedup": ceiling,
        "fraction_of_ceiling": vs_inprocess / ceiling,
        "trunk_ms": cost["trunk_ms"],
        "head_ms": cost["head_ms"],
        # CPU per image at each side's peak (server processes + the clients) beside the compute
        # the ceiling counts: what is left is per-request cost the ceiling leaves out
        "shared_cpu_ms_per_image": _cpu(shared),
        "inprocess_cpu_ms_per_image": _cpu(inprocess),
        "shared_compute_ms_per_image": cost["trunk_ms"] + n * cost["head_ms"],
        "inprocess_compute_ms_per_image": n * (cost["trunk_ms"] + cost["head_ms"]),
        # the same comparison in CPU per image: what a CPU-bound server gains, whatever else loads the machine
        "cpu_speedup_vs_inprocess": cpu_speedup,
        "cpu_fraction_of_ceiling": cpu_speedup / ceiling,
        "shared_rss_mb": shared["rss_mib"],
        "independent_rss_mb": independent["rss_mib"],
        "inprocess_rss_mb": inprocess["rss_mib"],
        "shared_pss_mb": shared["pss_mib"],
        "independent_pss_mb": independent["pss_mib"],
        "inprocess_pss_mb": inprocess["pss_mib"],
        "rss_fraction": versus["rss_fraction"],
        "pss_fraction": versus["pss_fraction"],
        "memory_ratio": independent["pss_mib"] / max(shared["pss_mib"], 1e-9),
        "shared_p50_ms": shared["p50_ms"],
        "shared_p95_ms": shared["p95_ms"],
        "independent_p50_ms": independent["p50_ms"],
        "independent_p95_ms": independent["p95_ms"],
        "inprocess_p50_ms": inprocess["p50_ms"],
        "inprocess_p95_ms": inprocess["p95_ms"],
        "triton_p50_ms": triton_lat["p50_ms"],
        "ort_p50_ms": ort_lat["p50_ms"],
        "shared": shared,
        "independent": independent,
        "inprocess": inprocess,
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
        repos = {on: build_repository(ws_dir, Path(tmp) / on, dynamic_batching=on == "on", heads_layout=heads_layout)
                 for on in ("off", "on")}
        sides = _measure_sides({on: (repo.path, [FANOUT_MODEL]) for on, repo in repos.items()}, image,
                               concurrency, seconds)
    # in_trunk's trunk batches with delay 0 even when off: "on" is the 100 us delay
    off, on = sides["off"], sides["on"]
    return {"tasks": n, "concurrency": concurrency,
            "off_images_per_s": off["img_per_s"], "on_images_per_s": on["img_per_s"],
            "off_p50_ms": off["p50_ms"], "on_p50_ms": on["p50_ms"],
            "gain": on["img_per_s"] / max(off["img_per_s"], 1e-9), "errors": off["errors"] + on["errors"]}


def _targets(rows: list[dict], latency: dict) -> list[dict]:
    """The issue's targets against the measured values (memory: RSS fraction, PSS beside it).

    The speed-up and memory targets are against the N separate models (``baseline``), judged on
    the chosen layout (``met``) and every layout (``layouts_met``); the ceiling target against the N
    detectors in one process.
    """
    out = []
    for row in rows:
        out.append({"tasks": row["tasks"], "fraction_of_ceiling": row["fraction_of_ceiling"],
                    "ceiling_target": CEILING_TARGET, "baseline": "inprocess",
                    "met": row["fraction_of_ceiling"] >= CEILING_TARGET})
        if row["tasks"] in TARGETS:
            speed, mem = TARGETS[row["tasks"]]
            out.append({"tasks": row["tasks"], "baseline": "independent", "speedup": row["speedup"],
                        "speedup_target": speed,
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
    blocks: int = 3,
) -> dict:
    """Side-by-side throughput, latency and memory for each N in ``tasks``, against two baselines.

    Per N, every side runs at once and their loads alternate in ``blocks`` rounds
    (:func:`_measure_sides`): the shared trunk in every heads layout, the N separate models
    (``independent``) and the N detectors in one process (``inprocess``). The sharing ceiling
    N(T+H)/(T+NH) comes from the trunk's and one head's one-thread compute, measured in process
    once, interleaved.

    Args:
        workdir: Workspace with the trunk ``variant`` and at least one head (copied to N heads).
        tasks: The task counts N to measure.
        variant: Trunk variant to serve.
        concurrency: Concurrent clients (each sends one image's requests at a time); a list: every
            side is measured at each and keeps its peak.
        seconds: Measurement time per side, concurrency and N, split over ``blocks`` (the
            interleaved latencies get half of it, >= 2 s).
        progress: Called with each row when it is done (or ``{"tasks", "error"}`` when that N's
            servers failed: the run goes on with the next N and lists it under ``failed``).
        batching_concurrency: Clients for the dynamic batching comparison (0 skips it).
        heads_layout: Heads layout of the shared side (one of ``HEADS_LAYOUTS``); every layout is
            measured (``rows[i]["layouts"]``).
        blocks: Rounds the sides' loads alternate in.

    Returns:
        ``{"rows": [{"tasks": N, "shared_images_per_s": ..., "inprocess_images_per_s": ...,
        "ceiling_speedup": ..., "fraction_of_ceiling": ..., ...}], "cost": {"trunk_ms", "head_ms"},
        "latency": {...}, "dynamic_batching": {...}, "targets": [...], ...}``; top-level latencies
        are from the row whose N is closest to the workspace's task count.
    """
    src = Workspace.at(workdir)
    size = int(read_json(src.variant(variant) / "variant.json")["input_size"])
    image = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    latency_s = max(2.0, seconds / 2)  # Triton and in-process calls, interleaved
    cost = trunk_and_head_ms(src, src.tasks()[0], variant, image, max(2.0, seconds / 2))
    rows: list[dict] = []
    failed: list[dict] = []
    for n in tasks:
        with tempfile.TemporaryDirectory(prefix="polyhead-bench-") as tmp:
            ws_dir = Path(tmp) / "ws"
            names = replicate_workspace(src, ws_dir, n, variant)
            ws = Workspace.at(ws_dir)
            reference = _ort_fanout(ws, names, variant, image, heads_layout)
            order = (heads_layout, *(x for x in mcfg.HEADS_LAYOUTS if x != heads_layout))
            sides = {layout: (build_repository(ws_dir, Path(tmp) / layout, heads_layout=layout).path, [FANOUT_MODEL])
                     for layout in order}
            sides["independent"] = (Path(tmp) / "independent",
                                    independent_repository(ws, Path(tmp) / "independent", names, variant))
            sides["inprocess"] = (Path(tmp) / "inprocess",
                                  [inprocess_repository(ws, Path(tmp) / "inprocess", names, variant)])
            try:
                measured = _measure_sides(sides, image, concurrency, seconds, blocks, heads_layout, latency_s,
                                          reference)
            except ServingError as err:  # one N's server failed: keep the others' figures, say which failed
                failed.append({"tasks": n, "error": str(err)[:2000]})
                if progress:
                    progress(failed[-1])
                continue
        layouts = {layout: measured[layout] for layout in order}
        rows.append(_row(n, layouts, heads_layout, measured["independent"], measured["inprocess"], cost))
        if progress:
            progress(rows[-1])
    if not rows:
        raise ServingError(f"every N failed: {failed}")
    own = len(src.tasks())
    pick = min(rows, key=lambda r: (abs(r["tasks"] - own), r["tasks"]))
    latency = {"tasks": pick["tasks"], "triton_p50_ms": pick["triton_p50_ms"], "ort_p50_ms": pick["ort_p50_ms"],
               "ratio": pick["triton_p50_ms"] / max(pick["ort_p50_ms"], 1e-9),
               "compared": "one image, trunk + every head of the fan-out: one gRPC `detect` request vs "
                           "in-process onnxruntime sessions of the same ONNX files, same thread settings"}
    result = {"rows": rows, "failed": failed,
              "triton_p50_ms": latency["triton_p50_ms"], "ort_p50_ms": latency["ort_p50_ms"],
              "latency": latency, "variant": variant, "cost": cost,
              "concurrency": [concurrency] if isinstance(concurrency, int) else list(concurrency),
              "seconds": seconds, "blocks": blocks,
              "heads_layout": heads_layout,
              "baselines": BASELINES,
              "trunk_sha256": sha256_file(src.variant(variant) / "model.onnx"), "workspace_tasks": own,
              "cpus": os.cpu_count(), "cpu": cpu_model(), "load_average_at_end": os.getloadavg()}
    if batching_concurrency > 0:
        result["dynamic_batching"] = _batching_gain(src, variant, image, batching_concurrency, seconds, heads_layout)
        result["dynamic_batching_gain"] = result["dynamic_batching"]["gain"]
    result["targets"] = _targets(rows, latency)
    return result


def write_json(result: dict, path: str | Path) -> None:
    """Write the result as JSON."""
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
