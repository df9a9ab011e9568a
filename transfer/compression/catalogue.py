"""The variant catalogue's rules: admission, the latency/accuracy Pareto set, the benchmark summary.

Admission is against the reference trunk; the benchmark compares the best admitted variant with the
teacher (or the reference). Pure functions over ``variant.json`` contents, so the rules are tested
on constructed numbers.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from shared.artifacts import read_json
from shared.errors import ArtifactError

EPS = 1e-9


def map_drop_points(maps: Mapping[str, float], reference: Mapping[str, float], tasks: Sequence[str]) -> float | None:
    """Worst mAP loss over ``tasks`` in points (``100 * (ref - variant)``); ``None`` if a task is missing."""
    if any(t not in maps or t not in reference for t in tasks):
        return None
    return max((100.0 * (reference[t] - maps[t]) for t in tasks), default=0.0)


def admit(drop: float | None, tolerance: float) -> tuple[bool, str]:
    """Admission rule: every head evaluated and none lost more than ``tolerance`` mAP points."""
    if drop is None:
        return False, "not every head was evaluated on it"
    if drop > tolerance + EPS:
        return False, f"loses {drop:.2f} mAP points on its worst task (tolerance {tolerance:g})"
    return True, ""


def pareto_set(points: Mapping[str, tuple[float, float, float]]) -> set[str]:
    """Names not dominated on ``(latency_b1, latency_b8, accuracy)``: lower latencies, higher accuracy.

    A point is dominated when another is at least as good on all three and strictly better on one.
    """

    def dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
        ge = a[0] <= b[0] and a[1] <= b[1] and a[2] >= b[2]
        return ge and (a[0] < b[0] or a[1] < b[1] or a[2] > b[2])

    return {n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)}


def _row(meta: dict, device: str, tasks: Sequence[str]) -> dict:
    latency = meta.get("latency_ms", {}).get(device) or next(iter(meta.get("latency_ms", {}).values()), {})
    maps = {t: float(meta["map"][t]["map"]) for t in tasks if t in meta.get("map", {})}
    return {
        "precision": meta.get("precision", "fp32"),
        "parent": meta.get("parent"),
        "params": meta.get("params"),
        "flops": meta.get("flops"),
        "size_bytes": meta.get("size_bytes"),
        "sha256": meta.get("sha256"),
        "latency_b1_ms": latency.get("b1"),
        "latency_b8_ms": latency.get("b8"),
        "map": maps,
        "mean_map": float(np.mean(list(maps.values()))) if maps else None,
    }


def build_catalogue(
    metas: Mapping[str, dict], reference: str, tolerance: float, device: str, tasks: Sequence[str]
) -> dict:
    """The catalogue: one row per variant with metrics, ``max_map_drop``, ``admitted`` and ``pareto``.

    Args:
        metas: Variant name -> ``variant.json`` content (must include ``reference``).
        reference: The variant every other is compared with (always admitted when evaluated).
        tolerance: Max mAP loss in points on any task.
        device: Key of the latency measurements to use.
        tasks: Heads that must be evaluated on a variant for it to be admitted.
    """
    if reference not in metas:
        raise ArtifactError(f"the catalogue needs the {reference!r} variant; run `polyhead train`")
    rows = {name: _row(meta, device, tasks) for name, meta in metas.items()}
    ref_maps = rows[reference]["map"]
    for name, row in rows.items():
        drop = map_drop_points(row["map"], ref_maps, tasks)
        row["max_map_drop"] = drop
        row["admitted"], row["reason"] = admit(drop, tolerance)
        if metas[name].get("parity_problem"):
            row["admitted"], row["reason"] = False, metas[name]["parity_problem"]
        if metas[name].get("role") == "teacher":  # other heads: never served
            row["admitted"], row["reason"] = False, "teacher trunk"
    points = {n: (r["latency_b1_ms"], r["latency_b8_ms"], r["mean_map"] or 0.0)
              for n, r in rows.items() if r["admitted"] and r["latency_b1_ms"] is not None}
    front = pareto_set(points)
    for name, row in rows.items():
        row["pareto"] = name in front
    return {"reference": reference, "tolerance_points": tolerance, "device": device, "tasks": list(tasks),
            "variants": rows, "pareto": sorted(front, key=lambda n: rows[n]["latency_b1_ms"])}


def best_admitted(catalogue: dict) -> str:
    """The fastest admitted variant at batch 1, the (distilled) reference included (ties: smaller file)."""
    rows = catalogue["variants"]
    cands = [n for n, r in rows.items() if r["admitted"] and r["latency_b1_ms"] is not None]
    if not cands:
        raise ArtifactError("no variant is admitted (is the reference evaluated?); loosen --tolerance or retrain")
    return min(cands, key=lambda n: (rows[n]["latency_b1_ms"], rows[n]["size_bytes"]))


def side_by_side_latency(paths: Mapping[str, Path], check: np.ndarray, repeats: int = 30,
                         rounds: int = 3) -> dict[str, dict[str, float]]:
    """Median b1/b8 latency (ms) of several ONNX trunks measured interleaved in one process.

    Each of ``rounds`` rounds runs every model at batch 1 and 8 (``repeats // rounds`` timed runs
    each), so drift on a noisy machine hits all models alike. ``check``: ``(N, 3, S, S)`` uint8.
    """
    from transfer.export.onnx_graphs import session

    sessions = {name: session(path, threads=2) for name, path in paths.items()}
    batches = {b: np.repeat(check[:1], b, 0) for b in (1, 8)}
    times: dict[str, dict[int, list[float]]] = {n: {1: [], 8: []} for n in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for b, images in batches.items():
                sess.run(None, {"images": images})  # warm-up
                for _ in range(max(1, repeats // rounds)):
                    t0 = time.perf_counter()
                    sess.run(None, {"images": images})
                    times[name][b].append((time.perf_counter() - t0) * 1000)
    return {n: {f"b{b}": float(np.median(v)) for b, v in t.items()} for n, t in times.items()}


def teacher_footprint(teacher_cfg, input_size: int, check: np.ndarray, repeats: int = 30,
                      compare: Mapping[str, Path] | None = None) -> dict:
    """Size and latency of the teacher architecture exported to ONNX (weights do not change either).

    ``compare`` (name -> ONNX path, e.g. the best variant and the reference) is timed interleaved
    with the teacher (:func:`side_by_side_latency`); their figures come back under ``side_by_side``.
    """
    from shared.trunk import Trunk
    from transfer.export.onnx_graphs import export_trunk

    with tempfile.TemporaryDirectory(prefix="polyhead-teacher-") as tmp:
        path = Path(tmp) / "teacher.onnx"
        trunk = Trunk(teacher_cfg).eval()
        export_trunk(trunk, path, input_size)
        lat = side_by_side_latency({"teacher": path, **(compare or {})}, check, repeats)
        return {"size_bytes": path.stat().st_size, "params": sum(p.numel() for p in trunk.parameters()),
                "latency_b1_ms": lat["teacher"]["b1"], "latency_b8_ms": lat["teacher"]["b8"],
                "side_by_side": {n: v for n, v in lat.items() if n != "teacher"}}


def compress_benchmark(
    catalogue: dict, teacher: dict | None, teacher_maps: Mapping[str, float] | None, best: str | None = None,
) -> dict:
    """Best admitted variant vs the teacher (ratios teacher / variant: larger is better).

    Args:
        catalogue: From :func:`build_catalogue`.
        teacher: Teacher footprint (:func:`teacher_footprint`); ``None`` compares with the reference.
        teacher_maps: The teacher's own mAP per task, if a trained teacher exists.
        best: The variant to compare (default: :func:`best_admitted`).

    Returns:
        ``size_ratio``, ``latency_ratio_b1``, ``latency_ratio_b8``, ``max_map_drop`` (points, worst task,
        vs the teacher's mAP on the tasks it has heads for when known, else vs the reference on every
        task; ``map_drop_tasks`` says which) and the same against the reference.
    """
    rows, ref_name = catalogue["variants"], catalogue["reference"]
    best = best or best_admitted(catalogue)
    b, ref = rows[best], rows[ref_name]
    base = teacher or ref
    tasks = catalogue["tasks"]
    drop_ref = map_drop_points(b["map"], ref["map"], tasks)
    # The teacher has heads only for the tasks it was trained on (not for tasks added head-only later).
    teacher_tasks = [t for t in tasks if t in (teacher_maps or {})]
    drop_teacher = map_drop_points(b["map"], teacher_maps, teacher_tasks) if teacher_tasks else None
    base_maps = teacher_maps if drop_teacher is not None else ref["map"]
    delta_tasks = teacher_tasks if drop_teacher is not None else tasks
    return {
        "best_variant": best,
        "baseline": "teacher" if teacher else ref_name,
        "size_ratio": base["size_bytes"] / b["size_bytes"],
        "latency_ratio_b1": base["latency_b1_ms"] / b["latency_b1_ms"],
        "latency_ratio_b8": base["latency_b8_ms"] / b["latency_b8_ms"],
        "max_map_drop": drop_teacher if drop_teacher is not None else drop_ref,
        "map_drop_baseline": "teacher" if drop_teacher is not None else ref_name,
        "map_delta_per_task": {t: 100.0 * (b["map"][t] - base_maps[t]) for t in delta_tasks if t in b["map"]},
        "map_drop_tasks": delta_tasks,
        "vs_reference": {
            "size_ratio": ref["size_bytes"] / b["size_bytes"],
            "latency_ratio_b1": ref["latency_b1_ms"] / b["latency_b1_ms"],
            "latency_ratio_b8": ref["latency_b8_ms"] / b["latency_b8_ms"],
            "max_map_drop": drop_ref,
        },
        "best": b,
        "teacher": teacher,
        "reference": ref,
        "tolerance_points": catalogue["tolerance_points"],
        "device": catalogue["device"],
    }


def load_catalogue(trunk_dir: Path) -> dict:
    """Read ``trunk/catalogue.json`` with a hint when `polyhead compress` has not run."""
    path = trunk_dir / "catalogue.json"
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; run `polyhead compress` first")
    return read_json(path, "catalogue")
