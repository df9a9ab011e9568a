"""`polyhead add-task | export | serve | infer`: parse arguments, call the library, print results."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.options import Subparsers, add_device, add_heads_layout, add_workdir, default_layout


def _cmd_add_task(args: argparse.Namespace) -> int:
    from serving.triton.hot_add import TritonHotAdd
    from transfer.add_task import add_task

    # add-task is a transaction on the workspace: SIGTERM rolls it back like Ctrl-C (serving.cli.main)
    report = add_task(args.workdir, args.name, args.train_json, args.val_json, args.images,
                      epochs=args.epochs, views=args.views,
                      live=TritonHotAdd(args.server) if args.server else None, strict=args.strict,
                      device=args.device)
    s = report.seconds
    print(f"task '{report.task}': {len(report.classes)} classes ({', '.join(report.classes)}), "
          f"head {report.head_params:,d} params -> {report.head_dir}")
    print(f"cached {report.num_views} views of {report.num_images} images ({report.cache_mb:.1f} MB) in "
          f"{s['cache']:.1f} s; {report.epochs} epochs in {s['train']:.1f} s "
          f"(loss {report.losses[0]:.3f} -> {report.losses[-1]:.3f}); total {s['total']:.1f} s")
    print(f"{'variant':16s} {'mAP':>7s} {'mAP50':>7s}")
    for variant, m in report.maps.items():
        print(f"{variant:16s} {m['map']:7.3f} {m['map50']:7.3f}")
    if report.hot_added:
        print(f"hot-loaded task {report.task!r} at {args.server} in {s['hot_add']:.1f} s "
              "(no restart; the other tasks kept serving)")
    else:
        print(f"not served yet: `polyhead serve --workdir {args.workdir}` rebuilds the repository with it, or "
              f"`polyhead add-task ... --server HOST:PORT` trains and hot-loads into a running server")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from serving.triton.model_configs import RepositoryOptions
    from serving.triton.repository import build_repository

    options = RepositoryOptions(backend=args.backend, dynamic_batching=args.dynamic_batching, tensorrt=args.tensorrt,
                                max_batch_size=args.max_batch_size, device=args.device,
                                heads_layout=args.heads_layout or default_layout(args.backend),
                                variants=args.variants.replace("-", "_"))
    summary = build_repository(Path(args.workdir), options=options)
    versions = ", ".join(f"{v}={n}" for v, n in summary.trunk_versions.items())
    opts = summary.options
    where = f", {opts.device}" if opts.backend == "python" else ""
    where += ", every variant per request" if opts.variants == "per_request" else ""
    print(f"wrote {summary.path} ({opts.backend} backend{where}, {opts.heads_layout.replace('_', '-')} heads, "
          f"input {summary.input_size}): trunk versions {versions}; tasks {', '.join(summary.tasks)}")
    print(f"models: {', '.join(summary.models)}")
    return 0


def repository_to_serve(workdir: Path, heads_layout: str) -> Path:
    """``workdir``'s repository: built when missing, rebuilt when the workspace has changed since.

    A rebuild keeps the options the repository was built with and prints what changed
    (:func:`serving.triton.staleness.stale_reasons`).
    """
    from serving.triton.repository import build_repository, read_options
    from serving.triton.staleness import stale_reasons

    repo = workdir / "model_repository"
    if not (repo / "build.json").is_file():
        print(f"no repository at {repo}; building it ({heads_layout.replace('_', '-')} heads)")
        return build_repository(workdir, heads_layout=heads_layout).path
    reasons = stale_reasons(workdir, repo)
    if reasons:
        opts = read_options(repo)
        print(f"{repo} no longer matches the workspace ({'; '.join(reasons)}); rebuilding it with the options "
              f"it was built with ({opts.backend} backend, {opts.heads_layout.replace('_', '-')} heads)", flush=True)
        build_repository(workdir, options=opts)
    return repo


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.triton.embedded_server import EmbeddedTriton

    repo = repository_to_serve(Path(args.workdir), args.heads_layout)
    server = EmbeddedTriton(repo, grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
                            host=args.host)
    server.start()
    print(f"serving {repo} at grpc {server.url}, http {server.http_url}, metrics {server.metrics_url} "
          f"(ready in {server.startup_s:.1f} s; log {server.log_path}); Ctrl-C stops it", flush=True)
    server.serve_forever()
    print("server stopped")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from serving.cli.predict_command import infer_one

    return infer_one(args)  # `polyhead predict` for one image, printing every detection


def register(sub: Subparsers) -> None:
    """Add ``add-task``, ``export``, ``serve`` and ``infer`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    a = sub.add_parser("add-task", help="train only a new head on the frozen trunk; export it; optionally hot-load it")
    add_workdir(a)
    a.add_argument("--name", required=True, help="new task name: [a-z][a-z0-9_]{0,31}")
    a.add_argument("--train-json", required=True, help="COCO training annotations")
    a.add_argument("--val-json", required=True, help="COCO validation annotations (same categories)")
    a.add_argument("--images", required=True, help="directory that file_name entries are relative to")
    from transfer.training.feature_cache import DEFAULT_VIEWS, HeadOnlyTrainConfig

    a.add_argument("--epochs", type=int, default=HeadOnlyTrainConfig.epochs,
                   help="head training epochs (default: %(default)s)")
    a.add_argument("--views", type=int, default=DEFAULT_VIEWS,
                   help="cached views per image: 1 plain, 2 + flip, more + random augmentation (default: %(default)s)")
    a.add_argument("--server", help="HOST:PORT (gRPC) of a running `polyhead serve` to hot-load the task into")
    a.add_argument("--strict", action="store_true",
                   help="refuse annotation files whose boxes stick out of their image or have no area, or whose "
                        "sizes are declared unrotated (default: clip/drop/correct them, one warning line per file)")
    add_device(a, "the feature caching and head training")
    a.set_defaults(func=_cmd_add_task)

    e = sub.add_parser("export", help="generate the Triton model repository from the workspace")
    add_workdir(e)
    e.add_argument("--backend", choices=("python", "onnxruntime"), default="python",
                   help="python: embedded server (CPU); onnxruntime: NGC image (default: %(default)s)")
    e.add_argument("--dynamic-batching", action="store_true", help="enable the dynamic batcher (pays on GPUs)")
    e.add_argument("--tensorrt", action="store_true", help="TensorRT accelerator (onnxruntime backend only)")
    e.add_argument("--max-batch-size", type=int, default=8, help="largest batch per execution (default: %(default)s)")
    e.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="python backend: cpu, or cuda (onnxruntime TensorRT, then CUDA, then CPU execution "
                        "providers; GPU instances where the server has a GPU, else CPU with a warning in the "
                        "server log) (default: %(default)s)")
    add_heads_layout(e, None,
                     "per-task: one head_<task> model each; shared: one `heads` model hosting every head; "
                     "in-trunk: the trunk model hosts every head (shared and in-trunk: python backend only; "
                     "docs/benchmarks.md compares them) (default: in-trunk for python, per-task for onnxruntime)")
    e.add_argument("--variants", choices=("versions", "per-request"), default="versions",
                   help="versions: one trunk version per variant, the controller reloads to switch; per-request "
                        "(in-trunk only): the trunk holds every variant, a request picks one (predict --variant) "
                        "and `polyhead variant set` changes the default without reload (default: %(default)s)")
    e.set_defaults(func=_cmd_export)

    s = sub.add_parser("serve", help="run the embedded Triton server on the workspace's repository")
    add_workdir(s)
    s.add_argument("--host", default="127.0.0.1", help="address every endpoint binds to (default: %(default)s)")
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    add_heads_layout(s, "in_trunk", "layout when the repository must be built first (see `polyhead export`)")
    s.set_defaults(func=_cmd_serve)

    i = sub.add_parser("infer", help="detect objects in one image, printed as text (see `polyhead predict`)")
    i.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of Triton's gRPC endpoint")
    i.add_argument("--image", required=True, help="image file")
    i.add_argument("--tasks", help="comma-separated tasks (default: every served task, one fan-out call)")
    i.add_argument("--timeout", type=float, default=10.0, help="per-call deadline in seconds")
    i.add_argument("--json", help="also write the detections here as JSON")
    i.set_defaults(func=_cmd_infer)
