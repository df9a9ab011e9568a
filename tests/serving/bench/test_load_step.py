"""The real controller under a real load step: Prometheus + embedded Triton + instrumented clients.

Workspace: the fake one with one task; trunk "ref" made deliberately slow (six 3x3 convs of 96
channels at full resolution before the usual strided convs, ~10x the cost of "small"). Each
variant's ``latency_ms`` is measured here unloaded (1 client), as ``polyhead compress`` records it,
and the objective is 3x the accurate variant's unloaded p95, so the margins scale with the machine:

* ref, 1 client: p95 ~ 0.33x objective (under ``high`` = 0.9 by ~2.7x);
* ref, 8 clients: one trunk instance, requests queue: p95 ~ 6-8x unloaded ~ 2x objective;
* small, 8 clients: far under the objective, and its predicted p95 on ref (scaled by the
  latency ratio) stays over ``low`` (0.6x objective): no step up while loaded;
* small, 1 client: predicted ref p95 = ref's unloaded p95 = 0.33x objective: step back up.

Prometheus evaluates the shipped recording rules with a 5 s rate window (instead of 1 m) so the
step comes and goes within the test; the controller evaluates every second, cool-down 4 s.
"""

import json
import math
import shutil
import time
import warnings

import pytest
import torch
from torch import nn

from serving.bench.controller_bench import choose_objective, format_table, summarize
from serving.bench.load_step import (
    ControllerThread,
    Sample,
    StepLoad,
    StepRun,
    Switch,
    p95_between,
    share_over,
    time_back_under,
)
from serving.bench.prometheus_runner import PrometheusServer, rules_with_window
from serving.controller import Controller, ControllerConfig, Decision, Policy, TrunkSwitcher, Variant, read_variants
from serving.monitoring.metrics import PolyheadMetrics, PrometheusReader
from serving.triton.embedded_server import EmbeddedTriton
from serving.triton.processes import free_port
from serving.triton.repository import build_repository
from shared.artifacts import sha256_file

TASK = "cars"
STEP_CLIENTS = 8
OBJECTIVE_X = 3.0  # objective = this x the accurate variant's unloaded p95


class SlowTrunk(nn.Module):
    """The fake trunk's outputs (p3/p4/p5 of ``channels``) after ``depth`` extra full-resolution convs."""

    def __init__(self, channels: int, depth: int = 6, width: int = 96) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.c3 = nn.Conv2d(3, channels, 8, stride=8)
        self.c4 = nn.Conv2d(channels, channels, 2, stride=2)
        self.c5 = nn.Conv2d(channels, channels, 2, stride=2)

    def forward(self, images: torch.Tensor):  # noqa: ANN201
        x = images.float() / 255.0
        y = torch.relu(self.stem(x))
        for conv in self.body:
            y = torch.relu(conv(y))
        p3 = torch.relu(self.c3(x)) + 1e-6 * y.mean()  # the extra work feeds the output: not pruned
        p4 = torch.relu(self.c4(p3))
        p5 = torch.relu(self.c5(p4))
        return p3, p4, p5


def make_slow_ref(work, size: int) -> None:
    """Replace trunk/ref/model.onnx by a :class:`SlowTrunk` (same outputs and shapes)."""
    vdir = work / "trunk" / "ref"
    meta = json.loads((vdir / "variant.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SlowTrunk(meta["channels"]["p3"]).eval(), (torch.zeros(1, 3, size, size, dtype=torch.uint8),),
            str(vdir / "model.onnx"), input_names=["images"], output_names=["p3", "p4", "p5"],
            opset_version=17, dynamo=False, dynamic_axes={n: {0: "batch"} for n in ("images", "p3", "p4", "p5")},
        )  # fmt: skip
    (vdir / "variant.json").write_text(json.dumps({**meta, "sha256": sha256_file(vdir / "model.onnx")}))


def write_variant_metrics(work, latency_ms: dict[str, float]) -> None:
    """mAP (ref more accurate) and the measured unloaded latency into each variant.json."""
    for name, m in {"ref": 0.50, "small": 0.40}.items():
        path = work / "trunk" / name / "variant.json"
        meta = json.loads(path.read_text())
        meta["map"] = {TASK: {"map": m, "map50": m + 0.2}}
        meta["latency_ms"] = {"cpu-test": {"b1": latency_ms[name]}}
        path.write_text(json.dumps(meta))


def unloaded_p95(server, switcher, variant: Variant, images, seconds: float = 2.5) -> float:
    """p95 (s) of ``variant`` with one client, after 0.5 s of warm-up."""
    switcher.apply(variant)
    with StepLoad(server.url, images, TASK, PolyheadMetrics(), 1) as load:
        load.set_clients(1)
        time.sleep(seconds)
    return p95_between(load.samples, 0.5, math.inf)


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fakes):
    work = fakes.make_workspace(tmp_path_factory.mktemp("loadstep") / "work")
    for task in set(fakes.TASKS) - {TASK}:
        shutil.rmtree(work / "heads" / task)
    shutil.rmtree(work / "trunk" / "rejected")
    make_slow_ref(work, fakes.SIZE)
    return work


@pytest.mark.triton
def test_load_step_switches_to_the_light_variant_and_back_without_failures_or_flapping(
    workspace, fakes, prometheus_bin, tmp_path
):
    summary = build_repository(workspace, max_batch_size=4, live_variant="ref")
    version = {n: v for v, n in summary.trunk_versions.items()}
    images = fakes.random_images(4)
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    client_metrics, port = PolyheadMetrics(), free_port()
    httpd, _ = client_metrics.serve(port)
    rules = rules_with_window(tmp_path / "rules.yml", "5s")
    try:
        with (
            PrometheusServer({"polyhead-clients": [f"127.0.0.1:{port}"]}, [rules], binary=prometheus_bin) as prom,
            EmbeddedTriton(summary.path, **ports) as server,
        ):
            switcher = TrunkSwitcher(server.url, summary.path)
            base = {n: unloaded_p95(server, switcher, Variant(n, version[n], 0.0), images) for n in ("small", "ref")}
            assert base["ref"] > 4 * base["small"], f"the accurate variant is not the slow one: {base}"
            write_variant_metrics(workspace, {n: v * 1e3 for n, v in base.items()})
            objective = OBJECTIVE_X * base["ref"]
            config = ControllerConfig({TASK: objective}, breach_evals=2, recover_evals=3, cooldown_s=4, interval_s=1)
            policy = Policy(read_variants(workspace, summary.path), config, live="ref")
            controller = Controller(policy, PrometheusReader(prom.url), switcher, PolyheadMetrics())
            with (
                StepLoad(server.url, images, TASK, client_metrics, STEP_CLIENTS) as load,
                ControllerThread(controller, load.now) as ctl,
            ):
                load.set_clients(1)
                time.sleep(3)
                step_start = load.now()
                load.set_clients(STEP_CLIENTS)
                stepped_down = wait_until(lambda: ctl.switches, timeout_s=15)
                time.sleep(7)  # settled, still under the step load
                rule_p95 = PrometheusReader(prom.url).p95().get(TASK)
                step_end = load.now()
                load.set_clients(1)
                stepped_up = wait_until(lambda: len(ctl.switches) >= 2, timeout_s=20)
                time.sleep(3)  # back on the accurate variant: nothing else may happen
            live_at_end = switcher.live_version()
    finally:
        httpd.shutdown()

    samples, switches = load.samples, ctl.switches
    decisions = [(w.decision.from_variant, w.decision.to.name, w.decision.reason) for w in switches]
    timeline = {"base_p95_ms": {n: v * 1e3 for n, v in base.items()}, "objective_ms": objective * 1e3,
                "step": (step_start, step_end), "switches": [(round(w.t, 2), *d) for w, d in zip(switches, decisions)]}
    assert load.errors == [] and all(s.ok for s in samples), load.errors[:3]
    assert stepped_down and stepped_up, timeline
    assert decisions == [("ref", "small", "over_objective"), ("small", "ref", "load_fell")], timeline  # no flapping
    down, up = switches
    assert step_start < down.t < step_end < up.t, timeline
    assert live_at_end == version["ref"]
    # the step really broke the objective on the accurate variant ...
    assert p95_between(samples, 0.5, step_start) <= objective, timeline
    assert p95_between(samples, step_start + 1, down.t - 0.5) > objective, timeline
    # ... and the light variant brought it back under, seen by the clients and by the recording rule
    assert p95_between(samples, down.t + 1, step_end) <= objective, timeline
    assert rule_p95 is not None and rule_p95 <= objective, (rule_p95, timeline)
    # unloaded again on the accurate variant: inside the objective
    assert p95_between(samples, up.t + 0.5, math.inf) <= objective, timeline


def synthetic_run(switch_at: float | None) -> StepRun:
    """10 req/s; 20 ms before the step (t < 10), 80 ms during it (10-40) until ``switch_at``, then 20 ms."""
    samples = []
    for i in range(500):
        t = i / 10
        slow = 10 <= t < 40 and (switch_at is None or t < switch_at)
        samples.append(Sample(t, 0.08 if slow else 0.02, ok=i != 7))
    switches = []
    if switch_at is not None:
        d = Decision("ref", Variant("small", 2, 0.4, 4.0), "over_objective", {TASK: 0.08})
        switches = [Switch(switch_at, d), Switch(45.0, Decision("small", Variant("ref", 1, 0.5, 10.0), "load_fell"))]
    return StepRun(samples, 10.0, 40.0, 50.0, switches, ["boom"])


def test_step_analysis_measures_time_back_under_and_share_over_the_objective():
    free, ctl = synthetic_run(None), synthetic_run(switch_at=16.0)
    assert time_back_under(free.samples, 10, 40, 0.05) is None  # never back under
    assert time_back_under(ctl.samples, 10, 40, 0.05) == pytest.approx(11.0)  # first all-fast 5 s window ends at 21
    assert time_back_under(ctl.samples, 10, 40, 0.1) == pytest.approx(5.0)  # never over: the first window
    assert p95_between(ctl.samples, 0, 10) == pytest.approx(0.02) and p95_between(ctl.samples, 60, 70) is None
    assert share_over(ctl.samples, 16, 40, 0.05) == 0 and share_over(free.samples, 16, 40, 0.05) == 1
    assert share_over(ctl.samples, 0, 1, 0.05) == pytest.approx(0.1)  # request 7 failed: counts as over
    row = summarize(ctl, 0.05, settle_offset_s=6.0)
    assert row["failed"] == 1 and row["share_over_settled"] == 0 and row["time_back_under_s"] == pytest.approx(11)
    assert [s["to"] for s in row["switches"]] == ["small", "ref"] and row["switches"][0]["t_s"] == 6.0
    result = {"without_controller": summarize(free, 0.05, 6.0), "objective_ms": 50.0,
              "with_controller": {**row, "returned_after_s": 5.0, "live_at_end": "ref"},
              "plan": {"base_clients": 1, "step_clients": 4, "step_s": 30}, "calibration": {"accurate": "ref"}}
    table = format_table(result)
    assert "| time back under the objective (rolling 5 s p95) | never | 11.0 s |" in table
    assert "| 100.00 % | 0.00 % |" in table and "1 (6.0) / 1 (5.0 s)" in table


def test_default_objective_sits_between_the_variants_under_load_with_room_to_return():
    assert choose_objective(0.02, 0.2, 0.05) == pytest.approx(0.1)  # geometric mean of 200 and 50 ms
    assert choose_objective(0.02, 0.06, 0.05) == pytest.approx(0.05 / 0.7)  # light variant well under it
    assert choose_objective(0.09, 0.4, 0.05) == pytest.approx(0.2)  # accurate, unloaded, at 0.45x
