"""`polyhead bench variants`: per-request trunk variants against reloading and against one static variant.

Three figures (issue 16, item 4), on staged copies of the workspace (the source is not touched):

* ``switch_ms``: one fan-out ``detect`` call at a time, each on one of two variants at random; per
  variant, p50 of its calls right after the other variant less p50 of those right after itself;
  the mean over both variants.
* ``memory_all_variants_ratio``: RSS of the server process group (tritonserver and its stub)
  holding every variant per request / holding only the most accurate one, after the same warm-up.
* ``slo_within``: share of requests within the objective (answered and no slower) under one bursty
  trace, the same trace for every mode. ``load="closed"``: steps and spikes of closed-loop
  clients (a client sends its next request when the previous one came back). ``load="open"``:
  Poisson arrivals whose rate steps and spikes (:mod:`serving.bench.open_loop`), the rate given
  as a multiple of the most accurate variant's measured capacity (requests per second under 8
  closed-loop clients); latency counts from the scheduled arrival, so a queue that builds shows.
  Each mode also reports ``served_map``: the mean mAP of the variants that answered, per request
  (per-request: from the backend's ``polyhead_variant_requests_total``; reload: the variant live
  when the request was sent):

  - ``per_request``: one server holding every variant, default ``auto`` (the backend picks per
    execute from the queue depth, each request's wait since its arrival and the arrival rate,
    :mod:`serving.triton.backend.variant_choice`);
  - ``reload``: a version-per-variant server and the controller's real :class:`Policy` and
    :class:`TrunkSwitcher` (a ``trunk`` reload per switch), fed every ``tick_s`` with the p95 of
    the last second of the clients' own requests (no Prometheus: the fastest feedback it can have);
  - ``static_<variant>``: that variant served alone the whole trace; ``static_best`` is the most
    accurate one (the one a fixed deployment would pick for accuracy).

Every mode runs the trace ``rounds`` times, the modes in alternating order (ABC, CBA, ...) on two
servers started once (the version-per-variant one and the per-request one), so that a noisy
stretch of a shared machine hits every mode alike; the figures pool the rounds.
Requests carry validation photos of the workspace (random images only where none is found).
The objective (unless given) is set from the static runs of the first round: ``max(1.2 x p99 of the fastest variant,
sqrt(p99 fastest x p95 most accurate))``, so the fastest variant alone keeps it and the most
accurate alone does not.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from serving.bench.controller_bench import _admitted, machine, staging_workspace
from serving.bench.load_generator import ClosedLoopLoad, Sample, percentiles_ms
from serving.bench.open_loop import OpenLoopLoad, arrival_times
from serving.bench.variants_figures import (
    default_objective_ms,
    live_at,
    pool_round,
    pooled,
    run_figures,
    served_map,
)
from serving.client import Detector
from serving.controller import ControllerConfig, Policy, TrunkSwitcher, read_variants
from serving.triton.embedded_server import EmbeddedTriton
from serving.triton.model_configs import RepositoryOptions
from serving.triton.per_request_variants import AUTO, write_live_variant
from serving.triton.processes import free_port, group_memory_mib
from serving.triton.repository import build_repository, set_live_trunk_version
from shared.errors import ConfigError

#: ``(seconds, clients)`` phases: a base, a step, back, a spike, a small step, a spike, back.
DEFAULT_TRACE = ((4.0, 1), (4.0, 6), (3.0, 1), (2.0, 8), (3.0, 2), (2.0, 8), (3.0, 1))
#: ``(seconds, load factor)`` phases of the open-loop load, the same shape: the factor times the
#: most accurate variant's capacity is the arrival rate; the spikes exceed that capacity.
DEFAULT_OPEN_TRACE = ((4.0, 0.3), (4.0, 0.8), (3.0, 0.3), (2.0, 1.25), (3.0, 0.5), (2.0, 1.25), (3.0, 0.3))
#: The per-request backend's counter of answered requests (``serving/triton/backend/variants_model.py``,
#: which runs in Triton's stub and cannot be imported here).
ANSWERED_METRIC = "polyhead_variant_requests_total"
#: The two kinds of load (see the module docstring).
LOADS = ("closed", "open")


def parse_trace(text: str, load: str = "closed") -> tuple[tuple[float, float], ...]:
    """``"4x1,4x6,2x8"`` (SECONDSxVALUE items) -> ``((4.0, 1), (4.0, 6), (2.0, 8))``.

    VALUE is a number of clients (``load="closed"``: an integer >= 1) or a load factor, the
    arrival rate over the most accurate variant's capacity (``load="open"``: a number >= 0).

    Raises:
        ConfigError: An item that is not ``SECONDSxVALUE`` with seconds > 0 and a value as above.
    """
    example = "4x1,4x6,2x8" if load == "closed" else "4x0.3,4x0.8,2x1.25"
    what = "CLIENTS (an integer >= 1)" if load == "closed" else "LOAD (a multiple of the capacity, >= 0)"
    phases = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        seconds, sep, value = item.partition("x")
        try:
            phase = (float(seconds), int(value) if load == "closed" else float(value))
        except ValueError:
            phase = (0.0, -1)
        if not sep or phase[0] <= 0 or phase[1] < (1 if load == "closed" else 0):
            raise ConfigError(f"trace item {item!r}: expected SECONDSx{what}, e.g. {example}")
        phases.append(phase)
    if not phases:
        raise ConfigError(f"trace {text!r} has no phase; write SECONDSx{what} items, e.g. {example}")
    return tuple(phases)


def _clients(url: str, images: Sequence[np.ndarray], variant: str | None) -> Callable:
    @contextlib.contextmanager
    def client(index: int) -> Iterator[Callable[[], object]]:
        with Detector(url, timeout_s=30.0) as det:
            n = itertools.count(index)
            # closed loops call it bare; the open loop passes the scheduled arrival for auto to judge
            yield lambda arrived_unix_ns=None: det.detect(images[next(n) % len(images)], variant=variant,
                                                          arrived_unix_ns=arrived_unix_ns)

    return client


def run_trace(url: str, images: Sequence[np.ndarray], trace: Sequence[tuple[float, int]],
              variant: str | None = None, on_tick: Callable[[ClosedLoopLoad], None] | None = None,
              tick_s: float = 0.25) -> list[Sample]:  # fmt: skip
    """Drive ``trace`` (``(seconds, clients)`` phases) of closed-loop fan-out clients; every request kept.

    Args:
        url: Triton gRPC ``host:port``.
        images: Images sent round-robin.
        trace: The phases, in order.
        variant: ``detect``'s ``variant`` (``None``: the server's default).
        on_tick: Called every ``tick_s`` with the load (e.g. a controller step); it may block.
        tick_s: Tick period.
    """
    with ClosedLoopLoad(_clients(url, images, variant), max(c for _, c in trace), active=0,
                        join_timeout_s=35.0) as load:  # fmt: skip
        for seconds, clients in trace:
            load.set_clients(clients)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                time.sleep(min(tick_s, max(0.0, end - time.perf_counter())))
                if on_tick is not None:
                    on_tick(load)
        load.set_clients(0)
    return list(load.samples)


def answered_per_variant(metrics_url: str) -> dict[str, float]:
    """``polyhead_variant_requests_total`` of the ``trunk`` model per variant, from Triton's metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return {s.labels["variant"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == ANSWERED_METRIC and s.labels.get("model") == "trunk"}  # fmt: skip


def _photos(workdir: Path, size: int, n: int = 4) -> list[np.ndarray]:
    """Up to ``n`` validation photos of the workspace's tasks, else ``n`` random ``size`` x ``size`` images."""
    from transfer.data.images import read_rgb
    from transfer.report.drawing import pick_images
    from transfer.report.inputs import load_inputs

    with contextlib.suppress(Exception):  # a workspace without readable splits still benchmarks
        paths = pick_images(load_inputs(workdir).vals)[:n]
        if paths:
            return [read_rgb(p) for p in paths]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def capacity_per_s(url: str, images: Sequence[np.ndarray], clients: int = 8, seconds: float = 4.0) -> float:
    """Answered requests per second of the server's default variant under ``clients`` closed-loop clients."""
    with ClosedLoopLoad(_clients(url, images, None), clients, join_timeout_s=35.0) as load:
        time.sleep(seconds)
    return load.ok_per_s()


class ReloadController:
    """The controller's :class:`Policy` and :class:`TrunkSwitcher` on a thread, fed with the load's own p95.

    Args:
        policy: Decision logic (live variant set).
        switcher: Applies variant decisions by reloading ``trunk``.
        tasks: Tasks the objective covers (every request serves all of them).
        tick_s: Evaluation period.
    """

    def __init__(self, policy: Policy, switcher: TrunkSwitcher, tasks: Sequence[str], tick_s: float = 0.5) -> None:
        self.policy, self.switcher, self.tasks, self.tick_s = policy, switcher, tuple(tasks), tick_s
        self.switches: list[tuple[float, str, str, float]] = []  # (t, from, to, reload seconds)
        self.load: ClosedLoopLoad | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            load = self.load
            if load is None:
                continue
            now = load.now()
            recent = [s.latency_s for s in list(load.samples) if s.ok and s.t >= now - 1.0]
            p95 = float(np.percentile(recent, 95)) if recent else None
            decision = self.policy.decide(dict.fromkeys(self.tasks, p95), now)
            if decision is None:
                continue
            t0 = time.perf_counter()
            if decision.knob == "variant":
                self.switcher.apply(decision.to)
            self.policy.commit(decision, load.now())
            if decision.knob == "variant":
                self.switches.append((round(now, 2), decision.from_variant, decision.to.name,
                                      round(time.perf_counter() - t0, 2)))  # fmt: skip

    def tick(self, load: ClosedLoopLoad) -> None:
        """:func:`run_trace`'s ``on_tick``: hand the load over (the thread reads it)."""
        self.load = load

    def __enter__(self) -> ReloadController:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def _serve(repo: Path) -> EmbeddedTriton:
    return EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), admin_key="")


def _warm(url: str, images: Sequence[np.ndarray], variants: Sequence[str | None], calls: int = 5) -> None:
    with Detector(url, timeout_s=60.0) as det:
        for variant in variants:
            for i in range(calls):
                det.detect(images[i % len(images)], variant=variant)


def _switch_ms(url: str, images: Sequence[np.ndarray], a: str, b: str, seconds: float) -> dict:
    """Cost of changing the variant between two consecutive calls (one call at a time, random order).

    Each call runs ``a`` or ``b`` at random, so calls after a change and calls after the same
    variant are interleaved over the whole run; per variant, the p50 of its calls that follow the
    other one less the p50 of those that follow itself; ``switch_ms`` is the mean over ``a`` and ``b``.
    """
    rng = np.random.default_rng(0)
    calls: list[tuple[str, str, float]] = []  # (previous, this, seconds)
    with Detector(url, timeout_s=30.0) as det:
        previous = a
        det.detect(images[0], variant=a)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            variant = (a, b)[int(rng.integers(2))]
            t0 = time.perf_counter()
            det.detect(images[0], variant=variant)
            calls.append((previous, variant, time.perf_counter() - t0))
            previous = variant
    sides = {}
    for v in (a, b):
        for label, changed in (("after_change", True), ("after_same", False)):
            lat = [t for p, c, t in calls if c == v and (p != v) == changed]
            sides[f"{v}_{label}"] = {**percentiles_ms(lat, (50,)), "runs": len(lat)}
    cost = [sides[f"{v}_after_change"]["p50_ms"] - sides[f"{v}_after_same"]["p50_ms"] for v in (a, b)]
    return {"switch_ms": round(float(np.mean(cost)), 3), "sides": sides, "pair": [a, b]}


def _memory_and_switch(single: Path, every: Path, ladder: list, fastest: str, images: Sequence[np.ndarray],
                       switch_s: float) -> tuple[dict, dict, dict]:  # fmt: skip
    """``(memory of one variant, memory of all, switch figures)``: each repository served and warmed alone."""
    with _serve(single) as server:
        _warm(server.url, images, [None])
        memory_one = group_memory_mib(server.pid)
    with _serve(every) as server:
        _warm(server.url, images, [v.name for v in ladder])
        memory_all = group_memory_mib(server.pid)
        switch = _switch_ms(server.url, images, ladder[0].name, fastest, switch_s)
    return memory_one, memory_all, switch


class _Trials:
    """One run of the trace in one mode, on the two servers of :func:`run_variants_bench`.

    Args:
        server: The version-per-variant server (static and reload modes).
        held: The per-request server holding every variant.
        versions: ``server``'s repository summary; ``held_repo``: ``held``'s repository.
        workspace: The staged workspace (the controller reads its variants).
        ladder: The variants, most accurate first.
        images, trace, load, tick_s: As in :func:`run_variants_bench`.
    """

    def __init__(self, server: EmbeddedTriton, held: EmbeddedTriton, versions: object, held_repo: Path,
                 workspace: Path, ladder: list, images: Sequence[np.ndarray], trace: Sequence[tuple[float, float]],
                 load: str, tick_s: float) -> None:  # fmt: skip
        self.server, self.held, self.versions = server, held, versions
        self.held_repo, self.workspace = held_repo, workspace
        self.ladder, self.images, self.trace, self.load, self.tick_s = ladder, images, trace, load, tick_s
        self.switcher = TrunkSwitcher(server.url, versions.path)
        self.by_version = {n: v for v, n in versions.trunk_versions.items()}
        self.times: list[float] = []

    def open_loop_at_capacity(self) -> float:
        """Measure the most accurate variant's capacity and draw the open-loop arrivals from it."""
        self.switcher.apply(self.ladder[0])
        _warm(self.server.url, self.images, [None])
        capacity = round(capacity_per_s(self.server.url, self.images), 1)
        self.times = arrival_times([(sec, f * capacity) for sec, f in self.trace])
        return capacity

    def _drive(self, url: str, controller: ReloadController | None = None) -> list[Sample]:
        if self.load == "closed":
            on_tick = controller.tick if controller else None
            return run_trace(url, self.images, self.trace, on_tick=on_tick, tick_s=self.tick_s)
        generator = OpenLoopLoad(_clients(url, self.images, None), senders=32)
        if controller is not None:
            controller.tick(generator)
        return generator.run(self.times)

    def run(self, mode: str, objective_ms: float | None) -> tuple[list[Sample], dict[str, float], list | None]:
        """``(samples, requests per variant that answered, reload switches or None)`` of one run of ``mode``."""
        best = self.ladder[0]
        if mode.startswith("static_"):
            v = next(v for v in self.ladder if f"static_{v.name}" == mode)
            self.switcher.apply(v)
            _warm(self.server.url, self.images, [None])
            samples = self._drive(self.server.url)
            return samples, {v.name: len(samples)}, None
        if mode == "reload":
            self.switcher.apply(best)
            set_live_trunk_version(self.versions.path, self.by_version[best.name])
            _warm(self.server.url, self.images, [None])
            config = ControllerConfig(dict.fromkeys(self.versions.tasks, objective_ms / 1e3), interval_s=self.tick_s,
                                      cooldown_s=2.0, breach_evals=1, recover_evals=2)  # fmt: skip
            policy = Policy(read_variants(self.workspace, self.versions.path), config, best.name)
            with ReloadController(policy, self.switcher, self.versions.tasks, self.tick_s) as ctl:
                samples = self._drive(self.server.url, ctl)
            return samples, live_at(samples, best.name, ctl.switches), ctl.switches
        write_live_variant(self.held_repo, AUTO, objective_ms)
        _warm(self.held.url, self.images, [v.name for v in self.ladder])
        before = answered_per_variant(self.held.metrics_url)
        samples = self._drive(self.held.url)
        after = answered_per_variant(self.held.metrics_url)
        return samples, {v.name: after.get(v.name, 0) - before.get(v.name, 0) for v in self.ladder}, None


def run_variants_bench(
    workdir: str | Path,
    variants: Sequence[str] | None = None,
    trace: Sequence[tuple[float, float]] | None = None,
    objective_ms: float | None = None,
    switch_s: float = 20.0,
    tick_s: float = 0.5,
    progress: Callable[[str], None] | None = None,
    load: str = "closed",
    rounds: int = 2,
) -> dict:
    """Measure ``switch_ms``, ``memory_all_variants_ratio`` and ``slo_within`` (see the module docstring).

    Args:
        workdir: Workspace with trunk variants and heads.
        variants: Trunk variants to hold (admitted or not; default: the admitted, Pareto-optimal ones).
        trace: Phases of the bursty load: ``(seconds, clients)`` closed, ``(seconds, load factor)``
            open (default :data:`DEFAULT_TRACE` / :data:`DEFAULT_OPEN_TRACE`).
        objective_ms: Per-request latency objective (default: chosen from the static runs).
        switch_s: Seconds of the interleaved switch measurement.
        tick_s: Evaluation period of the reload controller.
        progress: Called with one line per phase.
        load: ``"closed"`` or ``"open"`` (see the module docstring).
        rounds: Times every mode runs the trace, in alternating order (ABC, CBA, ...); each mode's
            figures pool its rounds, ``by_round`` keeps each round's share within.

    Raises:
        ConfigError: Fewer than two variants, an unknown ``load``, or ``rounds`` < 1.
    """
    say = progress or (lambda _line: None)
    workdir = Path(workdir)
    if load not in LOADS:
        raise ConfigError(f"load {load!r} is not one of {list(LOADS)}")
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    trace = tuple(trace or (DEFAULT_TRACE if load == "closed" else DEFAULT_OPEN_TRACE))
    names = list(variants or _admitted(workdir))
    if len(names) < 2:
        raise ConfigError(f"per-request variants need at least two variants; {workdir}/trunk has {names} admitted; "
                          "name some with --variants A,B")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="polyhead-bench-variants-") as tmp_name:
        tmp = Path(tmp_name)
        forced = staging_workspace(workdir, names, tmp / "all")
        ladder = sorted(read_variants(tmp / "all", {i + 1: n for i, n in enumerate(sorted(names))}),
                        key=lambda v: (-v.accuracy, v.name))  # fmt: skip
        best, fastest = ladder[0], min(ladder, key=lambda v: (v.latency_ms or math.inf, v.name))
        maps = {v.name: v.accuracy for v in ladder}
        staging_workspace(workdir, [best.name], tmp / "one")
        per_request = RepositoryOptions(heads_layout="in_trunk", variants="per_request")
        every = build_repository(tmp / "all", out=tmp / "repo-all", options=per_request)
        single = build_repository(tmp / "one", out=tmp / "repo-one", options=per_request)
        versions = build_repository(tmp / "all", out=tmp / "repo-versions",
                                    options=RepositoryOptions(heads_layout="in_trunk"))  # fmt: skip
        images = _photos(workdir, every.input_size)
        say(f"memory: one variant ({best.name}) vs all of {[v.name for v in ladder]}; "
            f"switch: {best.name} <-> {fastest.name}, {switch_s:g} s")  # fmt: skip
        memory_one, memory_all, switch = _memory_and_switch(single.path, every.path, ladder, fastest.name, images,
                                                            switch_s)  # fmt: skip
        modes = [f"static_{v.name}" for v in ladder] + ["reload", "per_request"]
        runs: dict[str, dict] = {m: {"rounds": [], "counts": {}} for m in modes}
        capacity = None
        with _serve(versions.path) as server, _serve(every.path) as held:
            trials = _Trials(server, held, versions, every.path, tmp / "all", ladder, images, trace, load, tick_s)
            if load == "open":
                capacity = trials.open_loop_at_capacity()
                say(f"open loop: {best.name} answers {capacity:g} requests/s under 8 clients; "
                    f"{len(trials.times)} arrivals")  # fmt: skip
            for r in range(rounds):
                for mode in modes if r % 2 == 0 else modes[::-1]:  # ABC, CBA: drift hits every mode alike
                    say(f"round {r + 1}/{rounds}: {mode}, trace of {sum(s for s, _ in trace):g} s")
                    pool_round(runs[mode], *trials.run(mode, objective_ms))
                    if objective_ms is None and all(runs[m]["rounds"] for m in modes[:len(ladder)]):
                        objective_ms = default_objective_ms(runs, best.name, fastest.name)
                        say(f"objective {objective_ms:g} ms (from the static runs of round 1)")
        objective_s = objective_ms / 1e3
        for mode, run in runs.items():
            counts = run.pop("counts")
            run.update(pooled(run.pop("rounds"), objective_s), served_map=served_map(counts, maps))
            if mode == "per_request":
                run["answered"] = counts
    kept = ("switches", "answered", "served_map", "by_round")
    figures = {name: {**run_figures(r["samples"], objective_s, trace), **{k: r[k] for k in kept if k in r}}
               for name, r in runs.items()}  # fmt: skip
    figures["static_best"] = {**figures[f"static_{best.name}"], "variant": best.name}
    return {
        "workdir": str(workdir), "machine": machine(), "forced_variants": forced, "tasks": list(every.tasks),
        "variants": [{"name": v.name, "map": round(v.accuracy, 4), "latency_ms": v.latency_ms} for v in ladder],
        "load": load, "trace": [list(p) for p in trace], "capacity_per_s": capacity, "objective_ms": objective_ms,
        "rounds": rounds, "switch_ms": switch["switch_ms"], "switch": switch,
        "memory_mib": {"one": memory_one, "all": memory_all},
        "memory_all_variants_ratio": round(memory_all["rss_mib"] / memory_one["rss_mib"], 3),
        "slo_within": {name: f["within"] for name, f in figures.items()},
        "served_map": {name: f.get("served_map") for name, f in figures.items()},
        "runs": figures,
    }  # fmt: skip


def add_serving_figures(search: dict, workdir: str | Path, progress: Callable[[str], None] | None = None,
                        load: str = "closed") -> dict:  # fmt: skip
    """Fill ``bench search``'s serving keys with :func:`run_variants_bench` over the reference and the operating points.

    The per-request backend holds what the catalogue admits (issue 16: "every admitted variant"):
    the reference and the admitted sub-networks of the search, not the refused ones of its front.

    ``transfer`` (where the search benchmark lives) cannot import ``serving``, so the two are joined here.

    Args:
        search: :func:`transfer.elastic.search_bench.run_search_bench`'s result; changed in place.
        workdir: Its workspace.
        progress: Called with one line per phase.
        load: ``"closed"`` or ``"open"`` (:func:`run_variants_bench`'s default trace of that load).

    Returns:
        ``search``, with ``switch_ms``, ``memory_all_variants_ratio``, ``slo_within`` and ``serving_note``.
    """
    from transfer.export.publish import REFERENCE

    held = list(dict.fromkeys([REFERENCE, *(p["variant"] for p in search["operating_points"])]))
    if len(held) < 2:
        search["serving_note"] = (f"no serving figures: the admitted variants are {held}, per-request needs two; "
                                  "run `polyhead search` until one sub-network is admitted")
        return search
    serving = run_variants_bench(workdir, variants=held, progress=progress, load=load)
    search.update({k: serving[k] for k in ("switch_ms", "memory_all_variants_ratio", "slo_within", "load")})
    search["serving_note"] = (f"polyhead bench variants --load {load} over {held} "
                              "(the reference and the admitted sub-networks)")  # fmt: skip
    return search
