"""`polyhead demo`: the whole story on this machine, ending with a summary table.

data -> multi-task training -> compression variants -> Triton repository -> embedded Triton ->
requests for every task and all at once -> a new task trained head-only and hot-added under load ->
the report page (``polyhead report``).
The trunk's tasks are synthetic scenes; the hot-added task is real photographed objects
(:mod:`transfer.data.photo_task`), so the story ends on real pixels.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from serving.bench.load_generator import BackgroundTraffic
from serving.triton.hot_add import TritonHotAdd
from shared.artifacts import read_json
from shared.workspace import Workspace
from transfer.config import PolyheadConfig, TrainConfig, dump_config
from transfer.export.device_keys import local_device_key

#: Training budgets. The trunk is `polyhead train`'s default, the ImageNet-initialised mobilenet_v2;
#: 10 epochs and 60 distillation steps a pruning round keep the demo under 15 minutes on 2 cores
#: (10 and 100 steps took 926 s; 7 epochs 614 s, but 12-24 mAP points worse; docs/benchmarks.md).
FULL = {"num_train": 400, "num_val": 100, "num_unlabeled": 100, "epochs": 10, "add_epochs": 14, "finetune_steps": 60,
        "photo_train": 400, "photo_val": 100}
FAST = {"num_train": 48, "num_val": 24, "num_unlabeled": 16, "epochs": 2, "add_epochs": 4, "finetune_steps": 4,
        "photo_train": 32, "photo_val": 16}
#: The task the demo adds head-only: real photographed objects (``polyhead data photos``).
NEW_TASK = "photos"
PHOTO_SIZE = 256  # px side of the photo scenes (letterboxed to the trunk's input size like any image)
#: The demo admits variants within 2 mAP points (the `polyhead compress` default is 1.0) so that the
#: catalogue shows a lighter admitted variant after a 10-epoch training run.
DEMO_TOLERANCE = 2.0


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def _done(t0: float) -> None:
    print(f"   ({time.time() - t0:.0f} s)", flush=True)


def run_demo(workdir: str | Path, fast: bool = False) -> int:
    """Run every stage; returns a process exit code (0 when every request succeeded)."""
    from serving.bench.load_generator import measure
    from serving.client import Detector
    from serving.triton.embedded_server import EmbeddedTriton, free_port
    from serving.triton.processes import group_memory_mib
    from serving.triton.repository import build_repository
    from transfer.data.coco import load_coco
    from transfer.data.datasets import read_rgb
    from transfer.data.photo_task import generate_photo_task
    from transfer.data.synth import TRUNK_TASKS, generate
    from transfer.evaluate import evaluate_task
    from transfer.train import run_train

    budget = FAST if fast else FULL
    ws = Workspace.at(workdir)
    ws.root.mkdir(parents=True, exist_ok=True)
    start = time.time()

    t = _step("1/6 data: synthetic multi-task scenes, and a task of real photographed objects")
    data = generate(ws.data, seed=0, num_train=budget["num_train"], num_val=budget["num_val"],
                    num_unlabeled=budget["num_unlabeled"])
    print(f"   {data.num_train} train / {data.num_val} val scenes, trunk tasks {', '.join(TRUNK_TASKS)}")
    photos = generate_photo_task(ws.data, task=NEW_TASK, num_train=budget["photo_train"],
                                 num_val=budget["photo_val"], image_size=PHOTO_SIZE)
    print(f"   {photos.num_train} train / {photos.num_val} val photos for the task added later, '{NEW_TASK}'")
    _done(t)

    t = _step(f"2/6 train the shared trunk + heads for {', '.join(TRUNK_TASKS)}")
    cfg = PolyheadConfig(train=replace(TrainConfig(), epochs=budget["epochs"]))  # the default trunk: mobilenet_v2
    cfg = replace(cfg, data=replace(cfg.data, root="data", tasks=TRUNK_TASKS))
    ws.config.write_text(dump_config(cfg))
    report = run_train(ws.root, ws.config)
    for task, m in report.maps.items():
        print(f"   {task:10s} mAP {m['map']:.3f}  mAP50 {m['map50']:.3f}")
    _done(t)

    t = _step(f"3/6 compression variants (pruned + distilled, INT8, FP16), admitted within {DEMO_TOLERANCE} mAP points")
    from transfer.compress import CompressSettings, run_compress

    settings = CompressSettings()
    settings = replace(settings, prune=replace(settings.prune, steps=budget["finetune_steps"]))
    run_compress(ws.root, tolerance=DEMO_TOLERANCE, settings=settings, progress=True)
    _done(t)

    t = _step("4/6 Triton repository (the trunk model hosts every head) + embedded Triton")
    repo = build_repository(ws.root, heads_layout="in_trunk")  # one backend process for any number of tasks
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    failures = 0
    with EmbeddedTriton(repo.path, **ports) as server:
        print(f"   serving {', '.join(repo.tasks)} at grpc {server.url}, metrics {server.metrics_url}")
        _done(t)

        t = _step("5/6 requests: every task alone, then all tasks at once (one trunk pass)")
        val_dir = ws.data / "images"
        vals = {task: load_coco(ws.data / task / "val.json", val_dir, name=task) for task in (*TRUNK_TASKS, NEW_TASK)}
        images = [read_rgb(val_dir / im.file_name) for im in list(vals[TRUNK_TASKS[0]].images.values())[:16]]
        latency = {}
        with Detector(server.url) as det:
            for task in TRUNK_TASKS:
                latency[task] = measure(det, images, task)
            latency["all tasks"] = measure(det, images, None)
        connect = partial(Detector, server.url)  # evaluation sends images concurrently, a detector per thread
        server_map = {task: evaluate_task(ws.root, task, vals[task], connect=connect) for task in TRUNK_TASKS}
        _done(t)

        t = _step(f"6/6 add task '{NEW_TASK}' by training only its head; hot-load it under traffic")
        from transfer.add_task import add_task

        live = HotAddUnderTraffic(server.url, images, list(TRUNK_TASKS))
        add_task(ws.root, NEW_TASK, ws.data / NEW_TASK / "train.json", ws.data / NEW_TASK / "val.json",
                 val_dir, epochs=budget["add_epochs"], live=live)
        traffic = live.traffic
        failures += traffic.failed
        print(f"   requests during the hot-add: {traffic.ok} ok, {traffic.failed} failed")
        with Detector(server.url) as det:
            latency[NEW_TASK] = measure(det, images, NEW_TASK)
            latency["all tasks"] = measure(det, images, None)
        server_map[NEW_TASK] = evaluate_task(ws.root, NEW_TASK, vals[NEW_TASK], connect=connect)
        memory = group_memory_mib(server.pid)
        _done(t)
    failures += sum(s.failures for s in latency.values())
    _summary(ws, latency, server_map)
    print(f"\nserver memory: {memory['processes']} processes (tritonserver, one backend process for the trunk "
          f"and every head), RSS {memory['rss_mib']:.0f} MiB, PSS {memory['pss_mib']:.0f} MiB")
    from transfer.report import build_report

    report = build_report(ws.root, ws.root / "report")
    print(f"\nreport ({len(report.figures)} figures, {report.seconds:.0f} s): {report.path}")
    print(f"\ndemo finished in {time.time() - start:.0f} s; failed requests: {failures}")
    return 0 if failures == 0 else 1


class HotAddUnderTraffic(TritonHotAdd):
    """Hot-adds while client threads keep requesting the existing tasks; ``traffic`` counts failures."""

    def __init__(self, url: str, images: list, tasks: list[str]):
        super().__init__(url)
        self.images, self.tasks, self.traffic = images, tasks, None

    def add(self, repo: Path, workdir: Path, name: str) -> None:  # noqa: D102
        with BackgroundTraffic(self.server, self.images, self.tasks) as traffic:
            time.sleep(0.5)
            super().add(repo, workdir, name)
            time.sleep(1.0)
        self.traffic = traffic


def _summary(ws: Workspace, latency: dict, server_map: dict) -> None:
    print("\nper task (reference trunk)              offline        via Triton     latency ms")
    cols = ("head params", "mAP", "mAP50", "mAP", "mAP50", "p50", "p95")
    print(f"{'task':12s} " + " ".join(f"{c:>{11 if i == 0 else 7}s}" for i, c in enumerate(cols)))
    for task in ws.tasks():
        meta = read_json(ws.head(task) / "head.json")
        off = meta["map"].get("reference", {})
        srv = server_map.get(task, {})
        lat = latency.get(task)
        print(f"{task:12s} {meta.get('params', 0):11,d} {off.get('map', float('nan')):7.3f} "
              f"{off.get('map50', float('nan')):7.3f} {srv.get('map', float('nan')):7.3f} "
              f"{srv.get('map50', float('nan')):7.3f} {lat.percentile(50) if lat else float('nan'):7.1f} "
              f"{lat.percentile(95) if lat else float('nan'):7.1f}")
    if "all tasks" in latency:
        lat = latency["all tasks"]
        print(f"{'all tasks':12s} {'':11s} {'':7s} {'':7s} {'':7s} {'':7s} {lat.percentile(50):7.1f} "
              f"{lat.percentile(95):7.1f}")
    print("\nper trunk variant")
    print(f"{'variant':16s} {'precision':9s} {'params':>9s} {'MB':>6s} {'b1 ms':>7s} {'b8 ms':>7s} "
          f"{'min mAP':>8s} admitted")
    here = local_device_key("cpu")
    for name in ws.variants():
        v = read_json(ws.variant(name) / "variant.json")
        table = v.get("latency_ms", {})
        lat = table.get(here) or next(iter(table.values()), {})  # this machine's figures first
        maps = [m["map"] for m in v.get("map", {}).values()]
        print(f"{name:16s} {v.get('precision', '?'):9s} {v.get('params', 0):9,d} {v.get('size_bytes', 0) / 1e6:6.2f} "
              f"{lat.get('b1', float('nan')):7.1f} {lat.get('b8', float('nan')):7.1f} "
              f"{min(maps) if maps else float('nan'):8.3f} {v.get('admitted', False)}")
