"""The variant catalogue's rules: admission, the latency/accuracy Pareto set per device, the benchmark summary.

Admission is against the reference trunk and does not depend on the device: a variant's accuracy
(mAP drop vs ``tolerance``), its parity and, when asked, its robustness (rPC drop vs
``robustness_tolerance``) are the same wherever it runs. The Pareto set does: it is
computed per ``latency_ms`` key, over the admitted variants measured on that device only (never two
devices in one comparison), and recorded as ``pareto_by_device: {key: bool}`` (``pareto`` stays the
flag of the device the catalogue was built on, for older readers). The benchmark compares the best
admitted variant with the teacher (or the reference). Pure functions over ``variant.json``
contents, so the rules are tested on constructed numbers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from shared.artifacts import read_json
from shared.errors import ArtifactError

EPS = 1e-9
DEFAULT_TOLERANCE_POINTS = 1.0  # `polyhead compress --tolerance`'s default


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


def head_drops_over_tolerance(maps: Mapping[str, float], reference: str, tolerance: float) -> dict[str, float]:
    """One head's mAP loss in points on each variant that loses more than ``tolerance`` against ``reference``.

    Args:
        maps: Variant -> the head's mAP@[.5:.95] on it (``reference`` among them).
        reference: The variant the losses are measured against.
        tolerance: The catalogue's admission tolerance in points.

    Returns:
        Variant -> points lost, worst first; empty when ``reference`` is not in ``maps``.
    """
    if reference not in maps:
        return {}
    drops = {v: 100.0 * (maps[reference] - m) for v, m in maps.items() if v != reference}
    return dict(sorted(((v, d) for v, d in drops.items() if d > tolerance + EPS), key=lambda vd: (-vd[1], vd[0])))


def rpc_drop_points(rpc: float | None, reference_rpc: float | None) -> float | None:
    """Robustness lost in points: ``100 x (reference_rpc - rpc)`` (rPC = mPC / clean mAP); ``None`` if either is."""
    return None if rpc is None or reference_rpc is None else 100.0 * (reference_rpc - rpc)


def admit_robustness(drop: float | None, tolerance: float) -> tuple[bool, str]:
    """Robustness rule (``compress --robustness-tolerance``): rPC at most ``tolerance`` points under the reference's."""
    if drop is None:
        return False, "robustness (rPC) not measured on it or on the reference"
    if drop > tolerance + EPS:
        return False, f"loses {drop:.2f} rPC points under corruptions (robustness tolerance {tolerance:g})"
    return True, ""


def pareto_set(points: Mapping[str, tuple[float, float, float]]) -> set[str]:
    """Names not dominated on ``(latency_b1, latency_b8, accuracy)``: lower latencies, higher accuracy.

    A point is dominated when another is at least as good on all three and strictly better on one.
    """

    def dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
        ge = a[0] <= b[0] and a[1] <= b[1] and a[2] >= b[2]
        return ge and (a[0] < b[0] or a[1] < b[1] or a[2] > b[2])

    return {n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)}


def latency_of(meta: Mapping, device: str) -> tuple[float, float] | None:
    """``(b1, b8)`` ms of ``meta``'s ``latency_ms[device]`` (b8 = b1 when only b1 was measured), else ``None``."""
    entry = (meta.get("latency_ms") or {}).get(device)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("b1"), (int, float)):
        return None
    b8 = entry.get("b8")
    return float(entry["b1"]), float(b8 if isinstance(b8, (int, float)) else entry["b1"])


def mean_map(meta: Mapping, tasks: Sequence[str]) -> float | None:
    """Mean mAP over the ``tasks`` evaluated on the variant (``None`` when none is)."""
    maps = [float(meta["map"][t]["map"]) for t in tasks if t in (meta.get("map") or {})]
    return float(np.mean(maps)) if maps else None


def device_pareto(metas: Mapping[str, Mapping], admitted: Iterable[str], device: str,
                  tasks: Sequence[str]) -> dict[str, bool]:
    """``device``'s Pareto flag of every variant measured there: on the front of the admitted ones or not.

    Args:
        metas: Variant name -> ``variant.json`` content.
        admitted: Names of the admitted variants (admission is device-independent).
        device: The ``latency_ms`` key; variants without its figures get no flag (unknown, not ``False``).
        tasks: Tasks whose mean mAP is the accuracy axis.
    """
    admitted = set(admitted)
    points = {n: (*lat, mean_map(m, tasks) or 0.0) for n, m in metas.items()
              if n in admitted and (lat := latency_of(m, device)) is not None}
    front = pareto_set(points)
    return {n: n in front for n, m in metas.items() if latency_of(m, device) is not None}


def _row(meta: dict, device: str, tasks: Sequence[str]) -> dict:
    b1, b8 = latency_of(meta, device) or (None, None)  # this device's figures only: never another's
    maps = {t: float(meta["map"][t]["map"]) for t in tasks if t in meta.get("map", {})}
    return {
        "precision": meta.get("precision", "fp32"),
        "parent": meta.get("parent"),
        "params": meta.get("params"),
        "flops": meta.get("flops"),
        "size_bytes": meta.get("size_bytes"),
        "sha256": meta.get("sha256"),
        "latency_b1_ms": b1,
        "latency_b8_ms": b8,
        "map": maps,
        "mean_map": float(np.mean(list(maps.values()))) if maps else None,
    }


def build_catalogue(
    metas: Mapping[str, dict], reference: str, tolerance: float, device: str, tasks: Sequence[str],
    robustness_tolerance: float | None = None,
) -> dict:
    """The catalogue: one row per variant with metrics, ``max_map_drop``, ``admitted`` and Pareto flags.

    Each row has ``pareto`` (on ``device``'s front) and ``pareto_by_device`` (every ``latency_ms`` key
    the variant has -> on that device's front); the catalogue lists each front under
    ``pareto_by_device`` and ``device``'s under ``pareto``.

    Args:
        metas: Variant name -> ``variant.json`` content (must include ``reference``).
        reference: The variant every other is compared with (always admitted when evaluated).
        tolerance: Max mAP loss in points on any task.
        device: Key of the latency measurements the rows show (the device `compress` ran on).
        tasks: Heads that must be evaluated on a variant for it to be admitted.
        robustness_tolerance: Max rPC loss in points (:func:`rpc_drop_points`) vs the reference's
            ``robustness`` entry; ``None``: robustness plays no part. Rows get ``rpc`` and ``rpc_drop`` either way.
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
        row["rpc"] = (metas[name].get("robustness") or {}).get("rpc")
        row["rpc_drop"] = rpc_drop_points(row["rpc"], (metas[reference].get("robustness") or {}).get("rpc"))
        if robustness_tolerance is not None and row["admitted"] and name != reference:
            row["admitted"], row["reason"] = admit_robustness(row["rpc_drop"], robustness_tolerance)
    admitted = [n for n, r in rows.items() if r["admitted"]]
    keys = dict.fromkeys([device, *(k for m in metas.values() for k in (m.get("latency_ms") or {}))])
    flags = {key: device_pareto(metas, admitted, key, tasks) for key in keys}
    for name, row in rows.items():
        row["pareto_by_device"] = {key: f[name] for key, f in flags.items() if name in f}
        row["pareto"] = row["pareto_by_device"].get(device, False)
    fronts = {key: sorted((n for n, on in f.items() if on), key=lambda n, k=key: latency_of(metas[n], k))
              for key, f in flags.items()}
    return {"reference": reference, "tolerance_points": tolerance, "robustness_tolerance_points": robustness_tolerance,
            "device": device, "tasks": list(tasks), "variants": rows, "pareto": fronts[device],
            "pareto_by_device": fronts}


def best_admitted(catalogue: dict) -> str:
    """The fastest admitted variant at batch 1, the (distilled) reference included (ties: smaller file)."""
    rows = catalogue["variants"]
    cands = [n for n, r in rows.items() if r["admitted"] and r["latency_b1_ms"] is not None]
    if not cands:
        raise ArtifactError("no variant is admitted (is the reference evaluated?); loosen --tolerance or retrain")
    return min(cands, key=lambda n: (rows[n]["latency_b1_ms"], rows[n]["size_bytes"]))


def side_by_side_latency(paths: Mapping[str, Path], check: np.ndarray, repeats: int = 30,
                         rounds: int = 3) -> dict[str, dict[str, float]]:
    """Median b1/b8 latency (ms) of several ONNX trunks measured interleaved in one process (CPU, onnxruntime).

    Each of ``rounds`` rounds runs every model at batch 1 and 8 (``repeats // rounds`` timed runs
    each), so drift on a noisy machine hits all models alike; denormals flushed, as served.
    ``check``: ``(N, 3, S, S)`` uint8.
    """
    from transfer.export.latency import flushed_latency

    return flushed_latency(paths, check, repeats, rounds)


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
