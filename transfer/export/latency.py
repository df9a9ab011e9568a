"""Timing a trunk: one run of a batch (a *runner*) on onnxruntime or torch, and interleaved medians.

* :func:`onnx_runner`: an ONNX trunk on the CPU (onnxruntime, :data:`MEASURE_THREADS` threads) or
  on CUDA when onnxruntime has the CUDA provider; :func:`torch_runner`: a torch trunk on any
  device, its layers in a given dtype (CUDA is synchronised, so a run is timed to its end).
* :func:`interleaved_latency`: several runners timed round-robin in one process, so drift on a
  noisy machine hits every model alike; :func:`flushed_latency`: that for ONNX files on the CPU
  with denormals flushed, as the Triton backend serves them (on a thread of its own).

Every runner takes ``(B, 3, S, S)`` uint8 numpy images (host memory, as Triton receives them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from shared.errors import ConfigError
from transfer.export.device_keys import MEASURE_THREADS

#: Runs a trunk once on ``(B, 3, S, S)`` uint8 images and returns when the outputs are ready.
Runner = Callable[[np.ndarray], object]
#: Batch sizes every latency entry records (``b1``, ``b8``).
BATCHES = (1, 8)


def onnx_cuda_available() -> bool:
    """Whether the installed onnxruntime has the CUDA execution provider (``onnxruntime-gpu``)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def onnx_runner(path: str | Path, device: str = "cpu", threads: int = MEASURE_THREADS,
                flush_denormals: bool = False) -> Runner:
    """An ONNX trunk in onnxruntime: on the CPU with ``threads`` threads, or on ``cuda[:N]``.

    ``flush_denormals`` (CPU): see :func:`shared.onnx_session.cpu_session` (only on
    :func:`transfer.export.denormals.on_flushing_thread`).
    """
    from transfer.export.onnx_graphs import session

    if device == "cpu":
        sess = session(path, threads=threads, flush_denormals=flush_denormals)
    else:
        import onnxruntime as ort

        index = int(device.split(":", 1)[1]) if ":" in device else 0
        sess = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", {"device_id": index})])
        if "CUDAExecutionProvider" not in sess.get_providers():  # onnxruntime fell back to the CPU
            raise ConfigError(f"onnxruntime could not start its CUDA provider on {device} for {path} (it runs "
                              f"{sess.get_providers()}); fix the CUDA libraries onnxruntime-gpu needs, or "
                              "uninstall it to time the torch trunk instead")
    return lambda images: sess.run(None, {"images": images})


def torch_runner(trunk, device, dtype=None) -> Runner:
    """A :class:`shared.trunk.Trunk` on ``device``, backbone and neck in ``dtype`` (default float32).

    The input normalisation stays in float32 (as the ONNX graphs keep their uint8 input); the image
    copy to the device is part of each timed run.
    """
    import torch

    dtype = dtype or torch.float32
    trunk = trunk.eval().to(device)
    body = torch.nn.Sequential(trunk.backbone, trunk.neck).to(dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda *_: None)

    def run(images: np.ndarray) -> object:
        with torch.inference_mode():
            x = trunk.normalize(torch.from_numpy(images).to(device))  # (B, 3, S, S) float32
            out = body(x.to(dtype))
        sync(device)
        return out

    return run


def interleaved_latency(
    runners: Mapping[str, Runner], check: np.ndarray, repeats: int = 30, rounds: int = 3,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Median b1/b8 latency (ms) of every runner, measured interleaved.

    Each of ``rounds`` rounds runs every model at batch 1 and 8 (one warm-up, then
    ``repeats // rounds`` timed runs each).

    Args:
        runners: Name -> runner.
        check: ``(N, 3, S, S)`` uint8 images; the first is repeated to make each batch.
        repeats: Timed runs per model and batch size over all rounds.
        rounds: Round-robin passes.
        log: Called with one line per finished round (progress).

    Returns:
        Name -> ``{"b1": ms, "b8": ms}``.
    """
    batches = {b: np.ascontiguousarray(np.repeat(check[:1], b, 0)) for b in BATCHES}
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in runners}
    for r in range(rounds):
        for name, run in runners.items():
            for b, images in batches.items():
                run(images)  # warm-up
                for _ in range(max(1, repeats // rounds)):
                    t0 = time.perf_counter()
                    run(images)
                    times[name][b].append((time.perf_counter() - t0) * 1000)
        if log is not None:
            log(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} b1 {np.median(t[1]):.2f} ms" for n, t in times.items()))
    return {n: {f"b{b}": float(np.median(v)) for b, v in t.items()} for n, t in times.items()}


def flushed_latency(
    paths: Mapping[str, str | Path], check: np.ndarray, repeats: int = 30, rounds: int = 3,
    log: Callable[[str], None] | None = None, threads: int = MEASURE_THREADS,
) -> dict[str, dict[str, float]]:
    """:func:`interleaved_latency` of ONNX files on the CPU, denormals flushed as the Triton backend serves.

    Sessions are made and run on a thread of their own
    (:func:`transfer.export.denormals.on_flushing_thread`), so the flags stay off the caller's thread.

    Args:
        paths: Name -> ONNX file.
        check: ``(N, 3, S, S)`` uint8 images.
        repeats, rounds, log: As :func:`interleaved_latency`.
        threads: Intra-op threads per session.
    """
    from transfer.export.denormals import on_flushing_thread

    def timed() -> dict[str, dict[str, float]]:
        runners = {n: onnx_runner(p, "cpu", threads, flush_denormals=True) for n, p in paths.items()}
        return interleaved_latency(runners, check, repeats, rounds, log)

    return on_flushing_thread(timed)
