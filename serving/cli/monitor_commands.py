"""``polyhead monitor`` (exporter beside Triton) and ``polyhead optimize`` (the latency controller)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from shared.errors import ConfigError

#: Keys of the ``polyhead optimize --config`` YAML (anything else is rejected).
OPTIMIZE_KEYS = {
    "prometheus", "server", "repository", "objectives_ms", "high", "low", "breach_evals",
    "recover_evals", "cooldown_s", "interval_s", "source", "device", "metrics_port", "dry_run",
    "batch_delays_us", "probe_margin", "probe_hold_s",
}  # fmt: skip
#: Options of ``ControllerConfig`` besides the objectives (flag and YAML key, same name).
CONFIG_KEYS = (
    "high", "low", "breach_evals", "recover_evals", "cooldown_s", "interval_s", "batch_delays_us", "probe_margin",
    "probe_hold_s",
)  # fmt: skip


def parse_slo(items: list[str]) -> dict[str, float]:
    """``["cars=50", "people=80"]`` (milliseconds) -> ``{"cars": 0.05, "people": 0.08}`` seconds.

    Raises:
        ConfigError: Malformed item or non-positive value.
    """
    out = {}
    for item in items or []:
        task, sep, value = item.partition("=")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if not sep or not task or not ms > 0:
            raise ConfigError(f"--slo {item!r}: expected TASK=MILLISECONDS with a positive number, e.g. cars=50")
        out[task] = ms / 1e3
    return out


def parse_delays(value: object) -> tuple[int | None, ...]:
    """``"off,0,500"`` or a YAML list ``[off, 0, 500]`` -> ``(None, 0, 500)`` microseconds (off: ``None``).

    Raises:
        ConfigError: An item that is neither ``off`` nor whole microseconds >= 0.
    """
    from serving.controller.actuator import parse_delay

    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"batch delays {value!r}: expected a list like 0,500,2000 (microseconds; 'off' allowed)")
    return tuple(parse_delay(item) for item in items if not (isinstance(item, str) and not item.strip()))


def load_optimize_yaml(path: Path) -> dict:
    """Read the controller YAML; unknown keys are rejected by name.

    Raises:
        ConfigError: Unreadable file, not a mapping, or an unknown key.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read controller config {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of options, got {type(data).__name__}")
    unknown = sorted(set(data) - OPTIMIZE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(OPTIMIZE_KEYS)}")
    return data


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _cmd_monitor(args: argparse.Namespace) -> int:
    from serving.monitoring.latency_exporter import TritonExporter
    from serving.monitoring.metrics import PolyheadMetrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = PolyheadMetrics()
    metrics.set_objectives(parse_slo(args.slo))
    exporter = TritonExporter(args.triton_metrics, metrics, server=args.server)
    metrics.serve(args.metrics_port, addr=args.address)
    print(f"polyhead monitor: reading {args.triton_metrics} every {args.interval:g} s; "
          f"serving http://{args.address}:{args.metrics_port}/metrics")  # fmt: skip
    stop = _wait_for_signal()
    exporter.run(args.interval, stop)
    return 0


def _optimize_options(args: argparse.Namespace) -> dict:
    """Command-line flags over the YAML file over defaults."""
    opts = load_optimize_yaml(args.config) if args.config else {}
    objectives = {t: float(ms) / 1e3 for t, ms in (opts.pop("objectives_ms", None) or {}).items()}
    objectives.update(parse_slo(args.slo))
    opts["objectives_s"] = objectives
    for key in ("prometheus", "server", "repository", "source", "device", "metrics_port", *CONFIG_KEYS):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    if "batch_delays_us" in opts:
        opts["batch_delays_us"] = parse_delays(opts["batch_delays_us"])
    opts["dry_run"] = bool(args.dry_run or opts.get("dry_run", False))
    for key in ("prometheus", "server"):
        if not opts.get(key):
            raise ConfigError(f"polyhead optimize needs --{key} (or '{key}:' in --config)")
    return opts


def _cmd_optimize(args: argparse.Namespace) -> int:
    from serving.controller import Controller, ControllerConfig, Policy, TrunkSwitcher, read_variants
    from serving.controller.actuator import format_delay
    from serving.monitoring.metrics import PolyheadMetrics, PrometheusReader
    from serving.triton.model_control import control_headers
    from serving.triton.repository import read_trunk_versions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = _optimize_options(args)
    config = ControllerConfig(objectives_s=opts["objectives_s"], **{k: opts[k] for k in CONFIG_KEYS if k in opts})
    repo = Path(opts["repository"]) if opts.get("repository") else None
    switcher = TrunkSwitcher(opts["server"], repo, headers=control_headers() or None)
    versions = read_trunk_versions(repo) if repo is not None else switcher.versions()
    variants = read_variants(Path(args.workdir), versions, opts.get("device"))
    live = versions.get(switcher.live_version())
    policy = Policy(variants, config, live, delays=switcher.batch_delay())
    metrics = PolyheadMetrics()
    if opts.get("metrics_port"):
        metrics.serve(int(opts["metrics_port"]), addr=args.address)
    controller = Controller(
        policy, PrometheusReader(opts["prometheus"]), None if opts["dry_run"] else switcher, metrics,
        source=opts.get("source", "client"),
    )  # fmt: skip
    ladder = ", ".join(f"{v.name} (mAP {v.accuracy:.3f}, {v.latency_ms or 0:.1f} ms)" for v in policy.variants)
    delays = ", ".join(format_delay(d) + (" (home)" if d == policy.home else "") for d in policy.delays)
    print(f"polyhead optimize: live {live}, batch delay {format_delay(policy.delay)}; variants by accuracy: "
          f"{ladder}; batch delays: {delays}" + (" [dry run]" if opts["dry_run"] else ""))  # fmt: skip
    if args.once:
        decision = controller.step()
        print(decision.to_json() if decision else "no change")
        return 0
    controller.run(_wait_for_signal())
    for d in controller.decisions:
        print(d.to_json())
    return 0


def _cmd_bench_controller(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from serving.bench.controller_bench import format_table, run_controller_bench, write_json

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM too: stop the embedded Triton and Prometheus on the way out

    signal.signal(signal.SIGTERM, interrupt)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_controller_bench(
        args.workdir, parse_slo(args.slo) or None, step_s=args.duration, base_clients=args.base_clients,
        step_clients=args.clients, warmup_s=args.warmup, after_s=args.after, window=args.window,
        interval_s=args.interval, cooldown_s=args.cooldown, progress=lambda line: print(line, flush=True),
        variants=args.variants.split(",") if args.variants else None, tasks=args.task or None,
    )  # fmt: skip
    result["command"] = shlex.join(["polyhead", *sys.argv[1:]])
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def _register_bench(sub: argparse._SubParsersAction, add_workdir: Callable[[argparse.ArgumentParser], None]) -> None:
    from serving.cli.compress_commands import bench_commands

    b = bench_commands(sub).add_parser(
        "controller", help="a load step with and without the latency controller: time back under the objective"
    )
    add_workdir(b)
    b.add_argument("--json", help="write the result here")
    b.add_argument("--slo", action="append", default=[], metavar="TASK=MS",
                   help="p95 objective (repeat); default: chosen between the accurate and the light variant's p95")
    b.add_argument("--duration", type=float, default=60.0, help="seconds of the load step (default %(default)s)")
    b.add_argument("--clients", type=int, default=4, help="clients during the step (default %(default)s)")
    b.add_argument("--base-clients", type=int, default=1, help="clients before and after (default %(default)s)")
    b.add_argument("--warmup", type=float, default=15.0, help="seconds before the step (default %(default)s)")
    b.add_argument("--after", type=float, default=90.0,
                   help="seconds after the step, for the return to the accurate variant (default %(default)s)")
    b.add_argument("--window", default="1m", help="rate window of the recording rules (default %(default)s, shipped)")
    b.add_argument("--interval", type=float, default=2.0, help="controller interval, s (default %(default)s)")
    b.add_argument("--cooldown", type=float, default=60.0, help="controller cool-down, s (default %(default)s)")
    b.add_argument("--variants", metavar="A,B", help="compare these trunk variants even if compression did not admit "
                   "them (the mechanism, not a production ladder; reported); default: the admitted ones")
    b.add_argument("--task", action="append", default=[], help="task each request asks for (repeat; default: all, "
                   "one fan-out call)")
    b.set_defaults(func=_cmd_bench_controller)


def register(sub: argparse._SubParsersAction, add_workdir: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``monitor``, ``optimize`` and ``bench controller`` to the ``polyhead`` subcommands."""
    m = sub.add_parser("monitor", help="export per-task latency histograms and the live variant beside Triton")
    m.add_argument("--triton-metrics", default="http://127.0.0.1:8002/metrics", help="Triton's metrics URL")
    m.add_argument("--server", help="Triton gRPC HOST:PORT (to export the live trunk variant)")
    m.add_argument("--metrics-port", type=int, default=9100, help="port of this exporter's /metrics")
    m.add_argument("--address", default="0.0.0.0", help="address to bind (default: %(default)s)")
    m.add_argument("--interval", type=float, default=1.0, help="seconds between polls of Triton")
    m.add_argument("--slo", action="append", default=[], metavar="TASK=MS", help="objective to export")
    m.set_defaults(func=_cmd_monitor)

    o = sub.add_parser(
        "optimize", help="keep every task inside its latency objective with trunk variants and the batching delay"
    )
    add_workdir(o)
    o.add_argument("--config", help="YAML with the options below (flags win)")
    o.add_argument("--prometheus", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    o.add_argument("--server", help="Triton gRPC HOST:PORT")
    o.add_argument("--repository", help="local repository the server reads: pin versions there (persists); "
                   "default: reload with a config override on every replica (S3/GCS repositories)")
    o.add_argument("--slo", action="append", default=[], metavar="TASK=MS", help="p95 objective (repeat)")
    o.add_argument("--source", choices=["client", "server"], help="p95 from client SDK or exporter histograms")
    o.add_argument("--high", type=float, help="step down when p95 > HIGH x objective (0.9)")
    o.add_argument("--low", type=float, help="step up when predicted p95 < LOW x objective (0.6)")
    o.add_argument("--breach-evals", type=int, help="evaluations over HIGH before stepping down (2)")
    o.add_argument("--recover-evals", type=int, help="evaluations with room before stepping up (3)")
    o.add_argument("--cooldown-s", type=float, help="seconds without decisions after a switch (60)")
    o.add_argument("--interval-s", type=float, help="seconds between evaluations (5)")
    o.add_argument("--batch-delays-us", metavar="US,US", help="trunk dynamic-batching delays to try when the "
                   "lightest variant is over objective, e.g. 0,500,2000 ('off' allowed); default: only the "
                   "deployment's own (never changed)")
    o.add_argument("--probe-margin", type=float, help="keep a tried delay only if the worst p95/objective fell "
                   "by this fraction (0.1)")
    o.add_argument("--probe-hold-s", type=float, help="seconds a delay that did not help is not tried again (600)")
    o.add_argument("--device", help="variant.json latency_ms key to compare variants on")
    o.add_argument("--metrics-port", type=int, help="export decisions on this port")
    o.add_argument("--address", default="0.0.0.0", help="address of --metrics-port (default: %(default)s)")
    o.add_argument("--dry-run", action="store_true", help="log decisions without applying them")
    o.add_argument("--once", action="store_true", help="evaluate once and exit")
    o.set_defaults(func=_cmd_optimize)
    _register_bench(sub, add_workdir)
