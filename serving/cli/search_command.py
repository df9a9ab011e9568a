"""``polyhead search``: parse, call :func:`transfer.elastic.elastic_search.run_elastic_search`, print the front."""

from __future__ import annotations

import argparse

from serving.cli.options import DEVICES, Subparsers, add_workdir


def format_search(report) -> list[str]:  # noqa: ANN001 (a SearchReport; importing it would import torch)
    """Table lines: the front (predicted b1 ms, mean search mAP), and the published variants' catalogue rows."""
    done, rows = report.state["evaluated"], report.catalogue["variants"]
    lines = [f"{'front point':44s} {'pred b1 ms':>10s} {'search mAP':>10s}  variant", "-" * 84]
    for key in report.state["front"]:
        lines.append(f"{key[:44]:44s} {done[key]['latency_ms']:10.2f} {done[key]['mean_map']:10.4f}  "
                     f"{report.published.get(key, '')}")
    lines += ["", f"{'variant':18s} {'b1 ms':>7s} {'b8 ms':>7s} {'mean mAP':>8s} {'max drop':>8s} admitted", "-" * 62]
    for name in report.published.values():
        r = rows[name]
        drop = "-" if r["max_map_drop"] is None else f"{r['max_map_drop']:.2f}"
        lines.append(f"{name:18s} {r['latency_b1_ms']:7.2f} {r['latency_b8_ms']:7.2f} {r['mean_map'] or 0:8.4f} "
                     f"{drop:>8s} {'yes' if r['admitted'] else 'no: ' + r['reason']}")
    lat = report.latency["holdout_mape_pct"]
    lines.append(f"{report.state['mode']} search over {len(done)} sub-networks on {report.device}; latency predictor "
                 f"held-out MAPE b1 {lat['b1']:.1f} %, b8 {lat['b8']:.1f} %; {report.seconds:.0f} s")
    return lines


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected fractions like 0.5,0.75,1") from None


def _cmd_search(args: argparse.Namespace) -> int:
    from transfer.elastic.elastic_search import ElasticSettings, run_elastic_search
    from transfer.elastic.sandwich import SandwichSettings
    from transfer.elastic.search import SearchSettings

    settings = ElasticSettings(
        sandwich=SandwichSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr),
        search=SearchSettings(population=args.population, generations=args.generations, seed=args.seed),
        max_images=args.max_images, keep=args.keep, archs=tuple(args.arch),
        latency_samples=args.latency_samples, train_images=args.train_images,
        calibration_images=args.calibration_images, width_choices=args.width_choices, max_drop=args.max_drop,
    )
    report = run_elastic_search(args.workdir, args.device, tuple(args.budget_ms), settings, log=print)
    for line in format_search(report):
        print(line)
    return 0


def register(sub: Subparsers) -> None:
    """Add ``search`` to the ``polyhead`` subcommands.

    Args:
        sub: The top-level subparsers.
    """
    s = sub.add_parser("search", help="train the trunk as a weight-sharing supernet, search its sub-networks for the "
                       "device's latency/mAP Pareto front, write the chosen ones as catalogue variants (resumable)")
    add_workdir(s)
    s.add_argument("--device", choices=DEVICES, default="auto",
                   help="where latency is measured: cpu (onnxruntime), cuda, auto = cuda when available (default)")
    s.add_argument("--budget-ms", type=float, action="append", default=[], metavar="X",
                   help="batch-1 latency budget; the most accurate front point within it is published (repeat)")
    s.add_argument("--population", type=int, default=12, help="candidates per generation (default %(default)s)")
    s.add_argument("--generations", type=int, default=2, help="generations after the first (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed of the search (default %(default)s)")
    s.add_argument("--steps", type=int, default=240, help="sandwich training steps (default %(default)s)")
    s.add_argument("--batch-size", type=int, default=8, help="images per sandwich step (default %(default)s)")
    s.add_argument("--lr", type=float, default=5e-5, help="peak sandwich learning rate (default %(default)s)")
    s.add_argument("--width-choices", type=_fractions, default=(0.75, 1.0), metavar="W,W,...",
                   help="hidden-width fractions per block, ending at 1 (default 0.75,1)")
    s.add_argument("--max-drop", type=int, default=1,
                   help="most trailing blocks dropped in a stage of more than 3 blocks (default %(default)s)")
    s.add_argument("--max-images", type=int, default=50,
                   help="validation images per task in the search's mAP (default %(default)s)")
    s.add_argument("--latency-samples", type=int, default=24,
                   help="sub-networks timed for the latency predictor (default %(default)s)")
    s.add_argument("--train-images", type=int, default=400,
                   help="training images for the supernet, no labels needed: every head's (heads added by "
                        "add-task too), shared out by head, then unlabelled ones (default %(default)s)")
    s.add_argument("--calibration-images", type=int, default=400,
                   help="images for each sub-network's BatchNorm recalibration (default %(default)s)")
    s.add_argument("--keep", type=int, default=8, help="front points published as variants (default %(default)s)")
    s.add_argument("--arch", action="append", default=[], metavar="A",
                   help="also evaluate and publish this architecture: largest, smallest or JSON "
                        '{"depths": [...], "widths": [...]} (repeat)')
    s.set_defaults(func=_cmd_search)
