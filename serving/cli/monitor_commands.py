"""``polyhead monitor`` (exporter beside Triton) and ``polyhead optimize`` (the latency controller).

Both run until SIGTERM or Ctrl-C, then stop after their current step (``args.stop_event``, from
:mod:`serving.cli.main`). Their configuration is parsed by :mod:`serving.controller.objectives`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from serving.cli.options import Subparsers, add_workdir
from shared.errors import ConfigError


def _cmd_monitor(args: argparse.Namespace) -> int:
    from serving.controller.objectives import parse_slo
    from serving.monitoring.latency_exporter import TritonExporter
    from serving.monitoring.metrics import PolyheadMetrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = PolyheadMetrics()
    metrics.set_objectives(parse_slo(args.slo))
    exporter = TritonExporter(args.triton_metrics, metrics, server=args.server)
    metrics.serve(args.metrics_port, addr=args.address)
    print(f"polyhead monitor: reading {args.triton_metrics} every {args.interval:g} s; "
          f"serving http://{args.address}:{args.metrics_port}/metrics")  # fmt: skip
    exporter.run(args.interval, args.stop_event())
    return 0


def _optimize_options(args: argparse.Namespace) -> dict:
    """Command-line flags over the YAML file over defaults.

    Raises:
        ConfigError: A bad ``--config``, ``--slo`` or delay, or no Prometheus or server.
    """
    from serving.controller.objectives import CONFIG_KEYS, load_optimize_yaml, parse_delays, parse_slo

    opts = load_optimize_yaml(args.config) if args.config else {}
    objectives = {t: float(ms) / 1e3 for t, ms in (opts.pop("objectives_ms", None) or {}).items()}
    objectives.update(parse_slo(args.slo))
    opts["objectives_s"] = objectives
    if "device" in opts:  # the older name of serving_device
        opts.setdefault("serving_device", opts.pop("device"))
    for key in ("prometheus", "server", "repository", "source", "serving_device", "metrics_port", *CONFIG_KEYS):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    opts["serving_device"] = opts.get("serving_device") or "auto"
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
    from serving.controller.default_variant import DefaultVariantSwitcher
    from serving.controller.objectives import CONFIG_KEYS
    from serving.monitoring.metrics import PolyheadMetrics, PrometheusReader
    from serving.triton.model_control import control_headers
    from serving.triton.repository import read_options, read_trunk_versions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = _optimize_options(args)
    config = ControllerConfig(objectives_s=opts["objectives_s"], **{k: opts[k] for k in CONFIG_KEYS if k in opts})
    repo = Path(opts["repository"]) if opts.get("repository") else None
    switcher = TrunkSwitcher(opts["server"], repo, headers=control_headers() or None)
    if repo is not None and read_options(repo).variants == "per_request":  # switch by the default file, no reload
        switcher = DefaultVariantSwitcher(opts["server"], repo, headers=control_headers() or None)
    versions = read_trunk_versions(repo) if repo is not None else switcher.versions()
    variants = read_variants(Path(args.workdir), versions, opts["serving_device"])
    live = switcher.live_variant() if isinstance(switcher, DefaultVariantSwitcher) else versions.get(
        switcher.live_version())
    policy = Policy(variants, config, live, delays=switcher.batch_delay())
    metrics = PolyheadMetrics()
    if opts.get("metrics_port"):
        metrics.serve(int(opts["metrics_port"]), addr=args.address)
    controller = Controller(
        policy, PrometheusReader(opts["prometheus"]), None if opts["dry_run"] else switcher, metrics,
        source=opts.get("source", "client"),
    )  # fmt: skip
    ladder = ", ".join(f"{v.name} (mAP {v.accuracy:.3f}, {v.latency_ms or 0:.1f} ms)" for v in policy.variants)
    ladder += f" [latency on {policy.variants[0].device or 'no common device'}]"
    delays = ", ".join(format_delay(d) + (" (home)" if d == policy.home else "") for d in policy.delays)
    print(f"polyhead optimize: live {live}, batch delay {format_delay(policy.delay)}; variants by accuracy: "
          f"{ladder}; batch delays: {delays}" + (" [dry run]" if opts["dry_run"] else ""))  # fmt: skip
    if args.once:
        decision = controller.step()
        print(decision.to_json() if decision else "no change")
        return 0
    controller.run(args.stop_event())
    for d in controller.decisions:
        print(d.to_json())
    return 0


def register(sub: Subparsers) -> None:
    """Add ``monitor`` and ``optimize`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
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
    o.add_argument("--serving-device", "--device", dest="serving_device", metavar="KEY|auto",
                   help="variant.json latency_ms key of the device Triton serves on, e.g. cuda-nvidia-h200 "
                        "(`polyhead measure` on that machine adds it); auto (default): this machine's key. In "
                        "Kubernetes the controller pod is not the GPU pod: pass the GPU's key")
    o.add_argument("--metrics-port", type=int, help="export decisions on this port")
    o.add_argument("--address", default="0.0.0.0", help="address of --metrics-port (default: %(default)s)")
    o.add_argument("--dry-run", action="store_true", help="log decisions without applying them")
    o.add_argument("--once", action="store_true", help="evaluate once and exit")
    o.set_defaults(func=_cmd_optimize)
