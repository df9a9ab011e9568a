"""`polyhead bench search`: the searched sub-networks against today's pruned variants, from the catalogue.

* ``operating_points``: the admitted sub-networks (one supernet training), with their batch-1/8
  latency and mAP on the catalogue's device;
* ``front_gain_points``: mean mAP gain (points) of the searched front over the pruned variants'
  latency/mAP curve at equal batch-1 latency (the curve: the reference and the fp32 ``pruned-r*``
  variants, upper envelope, linearly interpolated; only front points inside its latency range
  count), and ``front_speedup``: the curve's latency at the front point's mAP over the front point's;
* ``switch_ms``, ``memory_all_variants_ratio``, ``slo_within``: serving figures, ``null`` here and
  filled by the serving side's benchmark.

The rows' batch-1/8 latencies are re-timed side by side in one process first (the elastic variants,
the reference and the pruned ones: onnxruntime on this CPU, denormals flushed as served, ``rounds``
interleaved rounds), like
`polyhead bench compress` does: on a shared machine the catalogue's figures, taken minutes apart,
can differ by more than the gaps being compared. The rule itself is a pure function over
catalogue rows (:func:`search_benchmark`), tested on constructed numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from shared.artifacts import read_json
from shared.workspace import Workspace
from transfer.compression.catalogue import load_catalogue
from transfer.elastic.catalogue_variants import PREFIX
from transfer.elastic.search import pareto_front
from transfer.export.latency import flushed_latency
from transfer.export.publish import REFERENCE, device_name

TARGETS = {"operating_points": 5, "front_gain_points": 0.5, "front_speedup": 1.2}
SERVING_NOTE = ("switch_ms, memory_all_variants_ratio and slo_within are measured by the serving benchmark "
                "(per-request variants in the Triton backend); null until it fills them")


def _points(rows: Mapping[str, dict], names) -> dict[str, tuple[float, float]]:
    return {n: (rows[n]["latency_b1_ms"], rows[n]["mean_map"]) for n in names
            if rows[n]["latency_b1_ms"] is not None and rows[n]["mean_map"] is not None}


def search_benchmark(catalogue: dict) -> dict:
    """The benchmark of the module docstring from a catalogue (``build_catalogue``'s result)."""
    rows = catalogue["variants"]
    elastic = [n for n in rows if n.startswith(PREFIX)]
    pruned = [n for n in rows if n == REFERENCE or (n.startswith("pruned-") and rows[n]["precision"] == "fp32")]
    front_pts = _points(rows, elastic)
    front = pareto_front(front_pts)
    curve_pts = _points(rows, pruned)
    curve = pareto_front(curve_pts)  # upper envelope, fastest first
    lat = np.array([curve_pts[n][0] for n in curve])
    acc = np.array([curve_pts[n][1] for n in curve])
    gains, speedups = [], []
    for n in front:
        f_lat, f_acc = front_pts[n]
        if len(curve) > 1 and lat[0] <= f_lat <= lat[-1]:
            gains.append({"variant": n, "latency_b1_ms": f_lat, "map": f_acc,
                          "pruned_curve_map": float(np.interp(f_lat, lat, acc)),
                          "gain_points": 100.0 * (f_acc - float(np.interp(f_lat, lat, acc)))})
        if len(curve) > 1 and acc[0] <= f_acc <= acc[-1]:
            need = float(np.interp(f_acc, acc, lat))
            speedups.append({"variant": n, "latency_b1_ms": f_lat, "map": f_acc, "pruned_curve_latency_ms": need,
                             "speedup": need / f_lat})
    admitted = [n for n in elastic if rows[n]["admitted"]]
    points = [{"variant": n, "latency_b1_ms": rows[n]["latency_b1_ms"], "latency_b8_ms": rows[n]["latency_b8_ms"],
               "mean_map": rows[n]["mean_map"], "max_map_drop": rows[n]["max_map_drop"]}
              for n in sorted(admitted, key=lambda n: rows[n]["latency_b1_ms"] or 0)]
    gain = float(np.mean([g["gain_points"] for g in gains])) if gains else None
    speedup = float(np.mean([s["speedup"] for s in speedups])) if speedups else None
    return {
        "device": catalogue["device"], "tolerance_points": catalogue["tolerance_points"], "tasks": catalogue["tasks"],
        "operating_points": points, "operating_points_count": len(points),
        "front": [{"variant": n, "latency_b1_ms": front_pts[n][0], "mean_map": front_pts[n][1]} for n in front],
        "pruned_curve": [{"variant": n, "latency_b1_ms": curve_pts[n][0], "mean_map": curve_pts[n][1]} for n in curve],
        "front_gain_points": gain, "front_gain_per_point": gains,
        "front_speedup": speedup, "front_speedup_per_point": speedups,
        "targets": {"operating_points": {"target": TARGETS["operating_points"],
                                         "met": len(points) >= TARGETS["operating_points"]},
                    "front_gain": {"target": f">= +{TARGETS['front_gain_points']} mAP points or >= "
                                             f"{TARGETS['front_speedup']}x faster at equal mAP",
                                   "met": bool((gain is not None and gain >= TARGETS["front_gain_points"])
                                               or (speedup is not None and speedup >= TARGETS["front_speedup"]))}},
        "switch_ms": None, "memory_all_variants_ratio": None, "slo_within": None, "serving_note": SERVING_NOTE,
    }


def run_search_bench(workdir: str | Path, repeats: int = 60, rounds: int = 6, retime: bool = True) -> dict:
    """:func:`search_benchmark` of the workspace's catalogue (after `polyhead search`), latencies re-timed.

    Args:
        workdir: The workspace.
        repeats: Timed runs per variant and batch size over all rounds.
        rounds: Interleaved rounds.
        retime: Re-time the compared variants (else use the catalogue's figures as they are).
    """
    ws = Workspace.at(workdir)
    catalogue = load_catalogue(ws.trunk_dir)
    rows = catalogue["variants"]
    if retime:
        names = [n for n in rows if n.startswith(PREFIX) or n == REFERENCE
                 or (n.startswith("pruned-") and rows[n]["precision"] == "fp32")]
        size = int(read_json(ws.variant(REFERENCE) / "variant.json")["input_size"])
        check = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)  # (1, 3, S, S)
        paths = {n: ws.variant(n) / "model.onnx" for n in names}
        for name, lat in flushed_latency(paths, check, repeats, rounds).items():
            rows[name] |= {"latency_b1_ms": lat["b1"], "latency_b8_ms": lat["b8"]}
        catalogue["device"] = device_name()
    result = search_benchmark(catalogue)
    result["latency_source"] = (f"re-timed side by side: onnxruntime CPU (denormals flushed), {rounds} interleaved "
                                f"rounds, {repeats} runs per variant and batch size" if retime
                                else "the catalogue's figures")
    return result
