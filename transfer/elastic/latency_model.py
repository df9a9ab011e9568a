"""Latency of sub-networks on one device: measured samples, a linear predictor, its held-out error.

Weights do not change a trunk's latency, so a sample is a sub-network extracted from the supernet
(:func:`transfer.elastic.supernet.extract_subnet`), exported to ONNX and timed like every catalogue
variant (:func:`transfer.export.latency.flushed_latency`: onnxruntime on the CPU, denormals flushed
as the Triton backend serves; on CUDA the CUDA provider when installed, else the torch trunk). The
predictor is least squares (small ridge) on :func:`subnet_features` (multiply-accumulates,
expanded activations, blocks run: few enough to fit on a couple of dozen samples); its error is
the mean absolute percentage error (MAPE) on a held-out quarter of the samples, then it is refitted
on all of them. The table lives in ``WORK/elastic/latency-<device key>.json`` and is extended
sample by sample (an interrupted run resumes; samples timed before denormals were flushed are not).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.artifacts import atomic_write_json, read_json
from transfer.elastic.space import ElasticSpace, SubnetArch
from transfer.elastic.supernet import ElasticTrunk
from transfer.export.latency import flushed_latency, interleaved_latency, onnx_cuda_available, onnx_runner, torch_runner
from transfer.export.onnx_graphs import export_trunk

#: Names of :func:`subnet_features`' entries.
FEATURES = ("bias", "macs", "hidden_activations", "blocks")
RIDGE = 1e-6


def subnet_features(space: ElasticSpace, arch: SubnetArch, input_size: int) -> np.ndarray:
    """``(len(FEATURES),)`` float64: 1, MACs (millions), expanded activations read and written (millions), blocks."""
    io, f = space.backbone.block_io(), np.zeros(len(FEATURES))
    f[0] = 1.0
    side, active = input_size / 2, set(space.active_blocks(arch))
    for i in range(len(io)):
        cin, cout, s, _ = io[i]
        out_side = side / s
        if i in active:
            h = space.hidden_of(i, arch.widths[i])
            expand = side * side * cin * h if space.elastic_block(i) else 0.0
            macs = expand + out_side * out_side * h * (9 + cout)
            f[1] += macs / 1e6
            f[2] += (side * side + out_side * out_side) * h / 1e6
            f[3] += 1
        side = out_side
    return f


def fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge least squares ``x @ w ~ y``: ``x (N, F)``, ``y (N,)`` -> ``w (F,)``."""
    scale = np.abs(x).max(axis=0).clip(min=1e-9)
    xs = x / scale
    w = np.linalg.solve(xs.T @ xs + RIDGE * len(x) * np.eye(x.shape[1]), xs.T @ y)
    return w / scale


def mape(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute percentage error, in percent."""
    return float(np.mean(np.abs(pred - y) / np.abs(y).clip(min=1e-9)) * 100.0)


def holdout_error(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, int]:
    """MAPE (percent) of a predictor fitted on 3/4 of the samples, on the other quarter; and that quarter's size."""
    idx = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, len(y) // 4)
    test, train = idx[:n_test], idx[n_test:]
    return mape(x[test] @ fit(x[train], y[train]), y[test]), int(n_test)


class LatencyPredictor:
    """``predict(arch) -> {"b1": ms, "b8": ms}`` from a table's coefficients."""

    def __init__(self, space: ElasticSpace, input_size: int, table: dict):
        self.space, self.input_size, self.table = space, input_size, table
        self.coef = {b: np.asarray(table["coef"][b]) for b in ("b1", "b8")}

    def predict(self, arch: SubnetArch) -> dict[str, float]:  # noqa: D102
        f = subnet_features(self.space, arch, self.input_size)
        return {b: float(f @ w) for b, w in self.coef.items()}


def _timed(trunk, path: Path, device, check: np.ndarray, repeats: int) -> tuple[dict[str, float], str]:
    """One sample's ``{"b1", "b8"}`` ms and its runtime."""
    if device.type == "cpu":
        return flushed_latency({"subnet": path}, check, repeats, rounds=1)["subnet"], "onnxruntime-cpu"
    if onnx_cuda_available():
        run, runtime = onnx_runner(path, str(device)), "onnxruntime-cuda"
    else:
        run, runtime = torch_runner(trunk, device), "torch-cuda-fp32"
    return interleaved_latency({"subnet": run}, check, repeats, rounds=1)["subnet"], runtime


def build_latency_table(
    supernet: ElasticTrunk, input_size: int, device, key: str, path: Path, samples: int = 24,
    repeats: int = 20, seed: int = 0, progress: bool = True,
) -> tuple[LatencyPredictor, dict]:
    """Measure (or resume) ``samples`` sub-networks on ``device`` and fit the predictor.

    The largest and the smallest sub-network are always samples; the rest are random (``seed``).

    Args:
        supernet: Source of the sub-networks (weights are irrelevant to latency).
        input_size: Side S of the ``(1, 3, S, S)`` timing images.
        device: A ``torch.device``.
        key: The device's ``latency_ms`` key (:func:`transfer.compression.measure.device_key_of`).
        path: The table file (read when it exists for this key and size; extended and rewritten).
        samples: Sub-networks to time.
        repeats: Timed runs per sample and batch size.
        seed: Seed of the random samples.
        progress: Show a progress bar.

    Returns:
        ``(predictor, table)``: the table has ``samples``, ``coef``, ``holdout_mape_pct`` per batch size.
    """
    space, rng = supernet.space, random.Random(seed)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(max(0, samples - 2))]
    archs = list({a.key(): a for a in archs}.values())
    old = read_json(path) if path.exists() else {}
    flushed = device.type == "cpu"  # samples timed before denormals were flushed are not reused
    fresh = (old.get("device") == key and old.get("input_size") == input_size
             and old.get("denormals_flushed", False) == flushed)
    done = {s["key"]: s for s in old.get("samples", [])} if fresh else {}
    table = {"device": key, "input_size": input_size, "denormals_flushed": flushed, "features": list(FEATURES),
             "samples": list(done.values())}
    check = np.random.default_rng(0).integers(0, 256, (1, 3, input_size, input_size), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in tqdm([a for a in archs if a.key() not in done], desc="latency", disable=not progress, leave=False):
            trunk = supernet.extract(arch)
            onnx = Path(tmp) / "subnet.onnx"
            export_trunk(trunk, onnx, input_size)
            lat, runtime = _timed(trunk, onnx, device, check, repeats)
            table["samples"].append({"key": arch.key(), "arch": arch.to_dict(), **lat, "runtime": runtime})
            atomic_write_json(path, table)
    x = np.stack([subnet_features(space, SubnetArch.from_dict(s["arch"]), input_size) for s in table["samples"]])
    table["coef"], table["holdout_mape_pct"] = {}, {}
    for b in ("b1", "b8"):
        y = np.array([s[b] for s in table["samples"]])
        table["holdout_mape_pct"][b], table["holdout_samples"] = holdout_error(x, y, seed)
        table["coef"][b] = fit(x, y).tolist()
        table.setdefault("train_mape_pct", {})[b] = mape(x @ np.asarray(table["coef"][b]), y)
    atomic_write_json(path, table)
    return LatencyPredictor(space, input_size, table), table
