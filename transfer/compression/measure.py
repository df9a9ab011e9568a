"""`polyhead measure`: every catalogued variant's latency on this machine, written into its ``variant.json``.

Run it on the serving machine (a GPU node) when `polyhead compress` ran elsewhere: it adds that
device's figures as a new ``latency_ms`` key (:mod:`transfer.export.device_keys`) beside the ones
there, which stay as they are, and recomputes that device's Pareto set (``pareto_by_device``) over
the admitted variants; admission is device-independent and untouched. `polyhead compress` calls
:func:`measure_variants` for its own device too.

How each device is timed (recorded per key in ``latency_runtime``):

* CPU: the ONNX file in onnxruntime with :data:`MEASURE_THREADS` threads (``onnxruntime-cpu``);
* CUDA: the ONNX file on onnxruntime's CUDA provider when installed (``onnxruntime-cuda``), else the
  torch trunk rebuilt from ``trunk_config`` (weights do not change latency) in the variant's
  precision: ``torch-cuda-fp32``, ``torch-cuda-fp16`` (layers in half); an INT8 QDQ variant as its
  float graph, which is what the CUDA provider executes after dequantizing
  (``torch-cuda-fp32-for-int8``: a lower bound).

The variants are timed interleaved (:func:`transfer.export.latency.interleaved_latency`) on random
images of the input size (pixel values do not change a trunk's latency); every file is rewritten
atomically, ``trunk/catalogue.json`` too when there is one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shared.artifacts import atomic_write_json, read_json
from shared.errors import ArtifactError
from shared.workspace import Workspace
from transfer.compression.catalogue import DEFAULT_TOLERANCE_POINTS, build_catalogue, device_pareto
from transfer.export.device_keys import MEASURE_THREADS, cpu_key, cuda_key
from transfer.export.latency import (
    Runner,
    flushed_latency,
    interleaved_latency,
    onnx_cuda_available,
    onnx_runner,
    torch_runner,
)
from transfer.export.publish import ONNX_CPU, REFERENCE

CATALOGUE = "catalogue.json"
Log = Callable[[str], None]


@dataclass
class MeasureReport:
    """Outcome of :func:`run_measure`.

    Attributes:
        device: The ``latency_ms`` key written (e.g. ``cuda-nvidia-h200``).
        latency: Variant -> ``{"b1": ms, "b8": ms}`` on that device.
        runtime: Variant -> how it was timed (``latency_runtime``).
        pareto: That device's Pareto set, fastest first.
        seconds: Wall time.
    """

    device: str
    latency: dict[str, dict[str, float]]
    runtime: dict[str, str]
    pareto: list[str]
    seconds: float


def _torch_trunk(name: str, meta: dict):
    from shared.trunk import Trunk, TrunkConfig

    if not isinstance(meta.get("trunk_config"), dict):
        raise ArtifactError(f"variant {name!r} records no trunk_config, so it cannot be timed in torch on CUDA; "
                            "install onnxruntime-gpu (the CUDA provider times the ONNX file) or rerun "
                            "`polyhead compress`")
    return Trunk(TrunkConfig.from_dict(meta["trunk_config"]))


def variant_runner(ws: Workspace, name: str, meta: dict, device) -> tuple[Runner, str]:
    """A runner of variant ``name`` on ``device`` (a ``torch.device``) and its ``latency_runtime``."""
    import torch

    path = ws.variant(name) / "model.onnx"
    if device.type == "cpu":
        return onnx_runner(path, "cpu", MEASURE_THREADS), ONNX_CPU
    if onnx_cuda_available():
        return onnx_runner(path, str(device)), "onnxruntime-cuda"
    precision = meta.get("precision", "fp32")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    runtime = {"fp16": "torch-cuda-fp16", "int8": "torch-cuda-fp32-for-int8"}.get(precision, "torch-cuda-fp32")
    return torch_runner(_torch_trunk(name, meta), device, dtype), runtime


def device_key_of(device) -> str:
    """The ``latency_ms`` key of a ``torch.device`` on this machine."""
    import torch

    return cuda_key(torch.cuda.get_device_name(device)) if device.type == "cuda" else cpu_key(MEASURE_THREADS)


def measure_variants(
    ws: Workspace, names: Sequence[str], check: np.ndarray, device, repeats: int = 30, log: Log | None = None,
) -> tuple[str, dict[str, dict[str, float]], dict[str, str]]:
    """Time ``names`` side by side on ``device`` and record the figures in their ``variant.json``.

    Args:
        ws: The workspace.
        names: Variants to time (each ``trunk/<name>/model.onnx``).
        check: ``(N, 3, S, S)`` uint8 images of the variants' input size.
        device: A ``torch.device`` (``cpu`` or ``cuda[:N]``).
        repeats: Timed runs per variant and batch size.
        log: Called with progress lines.

    Returns:
        ``(key, latency, runtime)``: the device key, variant -> ``{"b1", "b8"}`` ms, variant -> runtime.
    """
    log = log or (lambda _msg: None)
    key = device_key_of(device)
    metas = {n: read_json(ws.require(ws.variant(n) / "variant.json", "run `polyhead compress`")) for n in names}
    if device.type == "cpu":  # denormals flushed, as the Triton backend serves
        runtime = dict.fromkeys(metas, ONNX_CPU)
        log(f"timing {len(names)} variants on {key} ({ONNX_CPU}, denormals flushed), {repeats} runs per batch "
            "size, interleaved")
        latency = flushed_latency({n: ws.variant(n) / "model.onnx" for n in metas}, check, repeats, log=log)
    else:
        built = {n: variant_runner(ws, n, m, device) for n, m in metas.items()}
        runtime = {n: r for n, (_, r) in built.items()}
        log(f"timing {len(names)} variants on {key} ({', '.join(sorted(set(runtime.values())))}), "
            f"{repeats} runs per batch size, interleaved")
        latency = interleaved_latency({n: run for n, (run, _) in built.items()}, check, repeats, log=log)
    for name, meta in metas.items():
        meta.setdefault("latency_ms", {})[key] = latency[name]
        meta["latency_runtime"] = {**(meta.get("latency_runtime") or {}), key: runtime[name]}
        atomic_write_json(ws.variant(name) / "variant.json", meta)
    return key, latency, runtime


def admission_rule(ws: Workspace) -> tuple[float, list[str] | None]:
    """``(tolerance in points, admission tasks)`` of ``trunk/catalogue.json``; compress's default when there is none."""
    path = ws.trunk_dir / CATALOGUE
    catalogue = read_json(path, "variant catalogue", fix="rebuild it with `polyhead compress` or `polyhead measure`",
                          expect=dict) if path.is_file() else {}  # fmt: skip
    tolerance = catalogue.get("tolerance_points")
    return (DEFAULT_TOLERANCE_POINTS if tolerance is None else float(tolerance)), catalogue.get("tasks")


def _tasks(ws: Workspace, metas: dict[str, dict]) -> list[str]:
    """The catalogue's tasks, else those evaluated on every admitted variant."""
    path = ws.trunk_dir / CATALOGUE
    if path.exists():
        return list(read_json(path, "catalogue").get("tasks", []))
    maps = [set(m.get("map") or {}) for m in metas.values() if m.get("admitted")]
    return sorted(set.intersection(*maps)) if maps else []


def record_device_pareto(ws: Workspace, names: Sequence[str], key: str) -> list[str]:
    """Recompute ``key``'s Pareto set over the admitted ``names`` and record it (variant.json, catalogue.json).

    Returns:
        The front, fastest first.
    """
    metas = {n: read_json(ws.variant(n) / "variant.json") for n in names}
    tasks = _tasks(ws, metas)
    flags = device_pareto(metas, [n for n, m in metas.items() if m.get("admitted")], key, tasks)
    for name, meta in metas.items():
        by_device = {k: v for k, v in (meta.get("pareto_by_device") or {}).items() if k != key}
        meta["pareto_by_device"] = by_device | ({key: flags[name]} if name in flags else {})
        atomic_write_json(ws.variant(name) / "variant.json", meta)
    path = ws.trunk_dir / CATALOGUE
    if path.exists():
        old = read_json(path, "catalogue")
        ref = old.get("reference", REFERENCE)
        if ref in metas:
            new = build_catalogue(metas, ref, old["tolerance_points"], old["device"], old["tasks"])
            atomic_write_json(path, {**old, **new})
    return sorted((n for n, on in flags.items() if on), key=lambda n: metas[n]["latency_ms"][key]["b1"])


def run_measure(workdir, device: str = "auto", repeats: int = 30, log: Log | None = None) -> MeasureReport:
    """`polyhead measure`: add this machine's latency figures to every variant of the catalogue.

    Args:
        workdir: Workspace with trunk variants (`polyhead compress`, or at least `polyhead train`).
        device: ``auto`` (CUDA when torch sees a GPU), ``cpu``, ``cuda`` or ``cuda:N``.
        repeats: Timed runs per variant and batch size.
        log: Called with progress lines (the CLI prints them).

    Raises:
        ArtifactError: No variant, or variants of different input sizes.
        ConfigError: A bad ``device``, or ``cuda`` on a machine without one.
    """
    from transfer.training.devices import resolve_device

    t0 = time.perf_counter()
    torch_device = resolve_device(device)  # a clear error before anything is read or written
    ws = Workspace.at(workdir)
    path = ws.trunk_dir / CATALOGUE
    names = list(read_json(path, "catalogue")["variants"]) if path.exists() else ws.variants()
    if not names:
        raise ArtifactError(f"no trunk variant in {ws.trunk_dir}; run `polyhead train` and `polyhead compress` first")
    sizes = {n: int(read_json(ws.variant(n) / "variant.json")["input_size"]) for n in names}
    if len(set(sizes.values())) != 1:
        raise ArtifactError(f"variants of different input sizes cannot be timed side by side: {sizes}")
    size = next(iter(sizes.values()))
    check = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)  # (1, 3, S, S)
    key, latency, runtime = measure_variants(ws, names, check, torch_device, repeats, log)
    pareto = record_device_pareto(ws, names, key)
    return MeasureReport(key, latency, runtime, pareto, time.perf_counter() - t0)
