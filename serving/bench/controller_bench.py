"""`polyhead bench controller`: one load step without and one with the latency controller, one run.

Both runs use the same embedded Triton (python backend, the workspace's admitted variants as trunk
versions, the most accurate live at the start), the same images and the same client threads
(fan-out ``detect``: every task per request). Order:

1. **without controller**: ``base`` clients (warm-up), ``step`` clients for ``step_s``; the
   accurate variant stays live. This also measures the accurate variant's p95 before and under
   the step.
2. **calibration** (only without ``objectives_s``): the lightest variant under the same step;
   the objective is then chosen between the two p95s (:func:`choose_objective`).
3. **with controller**: a fresh Prometheus (1 s scrape and rule evaluation, the shipped rules,
   rate window ``window``) scrapes the clients' histograms; the real :class:`Controller` switches
   through Triton's model-control API; ``base`` -> ``step`` -> ``base`` clients.

Results per run come from the clients' own per-request record (not the histograms): time until
the rolling 5 s p95 is back under the objective for good, share of requests over the objective
after the controller settled (its last switch during the step; the run without the controller is
measured over the same interval), switches and failed requests.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from serving.bench.load_step import StepLoad, StepPlan, StepRun, p95_between, run_load_step, share_over, time_back_under
from serving.bench.prometheus_runner import RULES, PrometheusServer, rules_with_window
from serving.controller import Controller, ControllerConfig, Policy, TrunkSwitcher, Variant, read_variants
from serving.monitoring.metrics import PolyheadMetrics, PrometheusReader
from serving.triton.embedded_server import EmbeddedTriton
from serving.triton.processes import free_port
from serving.triton.repository import build_repository, set_live_trunk_version
from shared.errors import ConfigError
from shared.workspace import Workspace


def machine() -> dict:
    """CPU model, core count and OS of this machine."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "os": platform.platform()}


def choose_objective(acc_base_s: float, acc_step_s: float, light_step_s: float) -> float:
    """A p95 objective the accurate variant breaks under the step and the light one keeps.

    The geometric mean of the two p95s under the step, raised if needed so that the light variant
    stays under 0.7x of it and the accurate one, unloaded, under 0.45x (room to step back up:
    the controller's ``low`` is 0.6).
    """
    return max(math.sqrt(acc_step_s * light_step_s), light_step_s / 0.7, acc_base_s / 0.45)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 2)


def summarize(run: StepRun, objective_s: float, settle_offset_s: float) -> dict:
    """Figures of one run; ``settle_offset_s``: seconds after the step start counted as settled."""
    s, start, end = run.samples, run.step_start, run.step_end
    settle = start + settle_offset_s
    back = time_back_under(s, start, end, objective_s)
    switches = [
        {"t_s": round(w.t - start, 2), "from": w.decision.from_variant, "to": w.decision.to.name,
         "reason": w.decision.reason, "p95_ms": {t: _ms(v) for t, v in w.decision.p95_s.items()}}
        for w in run.switches
    ]  # fmt: skip
    return {
        "requests": len(s),
        "failed": sum(1 for x in s if not x.ok),
        "p95_before_ms": _ms(p95_between(s, min(2.0, start), start)),
        "p95_step_ms": _ms(p95_between(s, start, end)),
        "p95_settled_ms": _ms(p95_between(s, settle, end)),
        "p95_after_ms": _ms(p95_between(s, end, run.end)),
        "time_back_under_s": back,
        "share_over_step": share_over(s, start, end, objective_s),
        "share_over_settled": share_over(s, settle, end, objective_s),
        "settled_from_s": round(settle_offset_s, 2),
        "switches": switches,
        "errors": run.errors[:5],
    }


def _settle_offset(run: StepRun) -> float:
    """Seconds from the step start to the controller's last switch during the step (0: none)."""
    during = [w.t for w in run.switches if run.step_start <= w.t < run.step_end]
    return max(during) - run.step_start if during else 0.0


def staging_workspace(workdir: Path, names: Sequence[str], dst: Path) -> dict[str, float | None]:
    """Copy the heads and the trunk variants ``names`` to ``dst``, each marked admitted and Pareto-optimal.

    For benchmarking the mechanism where compression admitted fewer than two variants; the source
    workspace is not touched. Each copy's ``map`` keeps only the tasks every named variant was
    evaluated on, so the controller compares accuracy like with like.

    Returns:
        The variants that were *not* admitted (or not Pareto-optimal) in ``workdir`` -> their
        recorded worst-task mAP drop in points (``None``: not recorded).

    Raises:
        ConfigError: A named variant does not exist.
    """
    forced: dict[str, float | None] = {}
    src_ws, dst_ws = Workspace.at(workdir), Workspace.at(dst)
    shutil.copytree(src_ws.heads_dir, dst_ws.heads_dir)
    metas = {}
    for name in names:
        src = src_ws.variant(name)
        if not (src / "variant.json").is_file():
            raise ConfigError(f"no trunk variant {name!r} in {workdir}/trunk")
        shutil.copytree(src, dst_ws.variant(name))
        metas[name] = json.loads((src / "variant.json").read_text())
        off_front = metas[name].get("pareto") is False or False in (metas[name].get("pareto_by_device") or {}).values()
        if not metas[name].get("admitted", False) or off_front:
            forced[name] = metas[name].get("max_map_drop")
    # accuracy = mean mAP: over the tasks every variant was evaluated on (like with like)
    common = set.intersection(*(set(m.get("map") or {}) for m in metas.values()))
    for name, meta in metas.items():
        meta.update(admitted=True, pareto=True, map={t: v for t, v in (meta.get("map") or {}).items() if t in common},
                    pareto_by_device={key: True for key in meta.get("pareto_by_device") or {}})
        (dst_ws.variant(name) / "variant.json").write_text(json.dumps(meta, indent=2))
    return forced


def _admitted(workdir: Path) -> list[str]:
    """Names of the admitted, Pareto-optimal (where recorded) variants under ``workdir/trunk``."""
    names = []
    for path in sorted(Path(workdir).glob("trunk/*/variant.json")):
        meta = json.loads(path.read_text())
        if meta.get("admitted", False) and meta.get("pareto") is not False:
            names.append(path.parent.name)
    return names


def _images(size: int, n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _calibrate_light(url: str, images: list, tasks: Sequence[str] | None, clients: int, seconds: float) -> float:
    """p95 (s) of the live (light) variant under ``clients`` clients, after a 3 s warm-up."""
    with StepLoad(url, images, tasks, PolyheadMetrics(), clients) as load:
        load.set_clients(clients)
        time.sleep(seconds)
        end = load.now()
    return p95_between(load.samples, 3.0, end)


def _controlled_run(
    server: EmbeddedTriton, switcher: TrunkSwitcher, variants: list[Variant], live: str,
    objectives_s: dict[str, float], plan: StepPlan, images: list, tasks: Sequence[str] | None,
    control: tuple[str, float, float], tmp: Path,
) -> StepRun:  # fmt: skip
    window, interval_s, cooldown_s = control
    metrics = PolyheadMetrics()
    port = free_port()
    httpd, _ = metrics.serve(port)
    rules = RULES if window == "1m" else rules_with_window(tmp / "rules.yml", window)
    try:
        with PrometheusServer({"polyhead-clients": [f"127.0.0.1:{port}"]}, [rules], interval_s=1.0) as prom:
            config = ControllerConfig(objectives_s, interval_s=interval_s, cooldown_s=cooldown_s)
            controller = Controller(Policy(variants, config, live), PrometheusReader(prom.url), switcher,
                                    PolyheadMetrics())  # fmt: skip
            with StepLoad(server.url, images, tasks, metrics, plan.step_clients) as load:
                return run_load_step(load, plan, controller)
    finally:
        httpd.shutdown()


def run_controller_bench(
    workdir: str | Path,
    objectives_s: Mapping[str, float] | None = None,
    step_s: float = 60.0,
    base_clients: int = 1,
    step_clients: int = 4,
    warmup_s: float = 15.0,
    after_s: float = 90.0,
    window: str = "1m",
    interval_s: float = 2.0,
    cooldown_s: float = 60.0,
    calibrate_s: float = 15.0,
    variants: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the load step without, then with the controller; return both runs' figures.

    Args:
        workdir: Workspace with admitted variants (``trunk/*/variant.json``) and heads.
        objectives_s: p95 objective per task (seconds); default: :func:`choose_objective` for
            every task from the measured p95s.
        step_s: Length of the step (``step_clients`` clients).
        base_clients: Clients before and after the step.
        step_clients: Clients during the step.
        warmup_s: Base-load seconds before the step.
        after_s: Base-load seconds after the step (with the controller: time to return).
        window: Rate window of the recording rules (``1m`` as shipped).
        interval_s: Controller evaluation interval.
        cooldown_s: Controller cool-down after a switch.
        calibrate_s: Seconds of the light variant under the step (objective not given).
        variants: Use these trunk variants, admitted or not (reported as ``forced_variants``);
            default: the workspace's admitted, Pareto-optimal ones. Either way they are staged
            with :func:`staging_workspace` (accuracy over the tasks all of them were evaluated on).
        tasks: Tasks each request asks for (default: every task, one fan-out call).
        progress: Called with one line per phase.

    Raises:
        ConfigError: Fewer than two admitted variants.
    """
    say = progress or (lambda _line: None)
    workdir = Path(workdir)
    with tempfile.TemporaryDirectory(prefix="polyhead-bench-controller-") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "workspace"
        forced = staging_workspace(workdir, variants or _admitted(workdir), source)
        summary = build_repository(source, out=tmp / "model_repository")
        ladder = read_variants(source, summary.path)
        if len(ladder) < 2:
            raise ConfigError(f"the controller needs at least two admitted, Pareto-optimal variants; {workdir}/trunk "
                              f"has {[v.name for v in ladder]}; run `polyhead compress`, or name variants to "
                              "compare anyway (--variants A,B)")  # fmt: skip
        accurate = max(ladder, key=lambda v: (v.accuracy, v.name))
        light = min(ladder, key=lambda v: (v.latency_ms if v.latency_ms is not None else v.accuracy, v.name))
        set_live_trunk_version(summary.path, accurate.version)
        images = _images(summary.input_size)
        ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
        plan = StepPlan(base_clients, step_clients, warmup_s, step_s, after_s)
        with EmbeddedTriton(summary.path, **ports) as server:
            switcher = TrunkSwitcher(server.url, summary.path)
            say(f"without controller: {accurate.name} live, {base_clients} -> {step_clients} clients for {step_s:g} s")
            with StepLoad(server.url, images, tasks, PolyheadMetrics(), step_clients) as load:
                free = run_load_step(load, StepPlan(base_clients, step_clients, warmup_s, step_s, 0.0))
            acc_base = p95_between(free.samples, min(2.0, free.step_start), free.step_start)
            acc_step = p95_between(free.samples, free.step_start + min(5.0, step_s / 4), free.step_end)
            calibration = {"accurate": accurate.name, "accurate_base_p95_ms": _ms(acc_base),
                           "accurate_step_p95_ms": _ms(acc_step)}  # fmt: skip
            if not objectives_s:
                say(f"calibration: {light.name} under {step_clients} clients for {calibrate_s:g} s")
                switcher.apply(light)
                light_step = _calibrate_light(server.url, images, tasks, step_clients, calibrate_s)
                switcher.apply(accurate)
                objective = choose_objective(acc_base, acc_step, light_step)
                objectives_s = {t: objective for t in (tasks or summary.tasks)}
                calibration.update(light=light.name, light_step_p95_ms=_ms(light_step),
                                   chosen_objective_ms=_ms(objective))  # fmt: skip
            objectives_s = dict(objectives_s)
            # can the step push the accurate variant over the controller's threshold at all?
            calibration["step_breaks_objective"] = bool(acc_step and acc_step > 0.9 * min(objectives_s.values()))
            say(f"with controller: objectives {({t: _ms(v) for t, v in objectives_s.items()})} ms")
            ctl = _controlled_run(server, switcher, ladder, accurate.name, objectives_s, plan, images, tasks,
                                  (window, interval_s, cooldown_s), tmp)  # fmt: skip
            live_end = switcher.live_version()
    objective = min(objectives_s.values())
    settle = _settle_offset(ctl)
    with_ctl = summarize(ctl, objective, settle)
    ups = [w for w in ctl.switches if w.t >= ctl.step_end]
    with_ctl["returned_after_s"] = round(ups[-1].t - ctl.step_end, 2) if ups else None
    with_ctl["live_at_end"] = summary.trunk_versions.get(live_end)
    return {
        "workdir": str(workdir),
        "machine": machine(),
        "variants": [{"name": v.name, "version": v.version, "map": round(v.accuracy, 4), "latency_ms": v.latency_ms}
                     for v in ladder],
        "forced_variants": forced,
        "tasks": list(summary.tasks),
        "request_tasks": list(tasks) if tasks else "all (fan-out detect)",
        "objectives_ms": {t: _ms(v) for t, v in objectives_s.items()},
        "objective_ms": _ms(objective),
        "plan": {"base_clients": base_clients, "step_clients": step_clients, "warmup_s": warmup_s, "step_s": step_s,
                 "after_s": after_s, "window": window, "interval_s": interval_s, "cooldown_s": cooldown_s},
        "calibration": calibration,
        "without_controller": summarize(free, objective, settle),
        "with_controller": with_ctl,
    }  # fmt: skip


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _num(x: float | None, unit: str = "", never: str = "-") -> str:
    return never if x is None else f"{x:.1f}{unit}"


def format_table(result: dict) -> str:
    """Markdown table: without vs with the controller."""
    a, b = result["without_controller"], result["with_controller"]
    obj = result["objective_ms"]
    settled = f"after the controller settled (step +{b['settled_from_s']:.0f} s to its end)"
    downs = [s for s in b["switches"] if s["reason"] == "over_objective"]
    ups = [s for s in b["switches"] if s["reason"] == "load_fell"]
    rows = [
        ("requests ok / failed", f"{a['requests'] - a['failed']} / {a['failed']}",
         f"{b['requests'] - b['failed']} / {b['failed']}"),
        ("p95 before the step", _num(a["p95_before_ms"], " ms"), _num(b["p95_before_ms"], " ms")),
        ("p95 during the whole step", _num(a["p95_step_ms"], " ms"), _num(b["p95_step_ms"], " ms")),
        (f"p95 {settled}", _num(a["p95_settled_ms"], " ms"), _num(b["p95_settled_ms"], " ms")),
        ("time back under the objective (rolling 5 s p95)", _num(a["time_back_under_s"], " s", "never"),
         _num(b["time_back_under_s"], " s", "never")),
        (f"requests over the objective {settled}", _pct(a["share_over_settled"]), _pct(b["share_over_settled"])),
        ("requests over the objective, whole step", _pct(a["share_over_step"]), _pct(b["share_over_step"])),
        ("switches down (step +s) / up (after the step, s)", "0 / 0",
         f"{len(downs)} ({', '.join(str(s['t_s']) for s in downs) or '-'}) / {len(ups)} "
         f"({_num(b['returned_after_s'], ' s')})"),
        ("live variant at the end", result["calibration"]["accurate"], str(b.get("live_at_end"))),
    ]  # fmt: skip
    lines = [f"objective p95 {obj:g} ms; {result['plan']['base_clients']} -> {result['plan']['step_clients']} "
             f"clients for {result['plan']['step_s']:g} s", "",
             "| | without controller | with controller |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {x} | {y} |" for name, x, y in rows]
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    """Write the result as JSON."""
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
