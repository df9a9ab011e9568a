"""Denormals flushed to zero on a thread of its own, as the Triton backend computes.

Fine-tuned trunks leave activations in the denormal range; computed exactly they cost ~10 % on
this CPU, and the backend's sessions flush them (``session.set_denormal_as_zero``). A latency
figure is measured the same way: the flags (FTZ/DAZ, per thread) are set on a new thread, and its
onnxruntime sessions set them on their own pool threads (``shared.onnx_session.cpu_session``'s
``flush_denormals``), so nothing leaks into the caller's float code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_flushing_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a new thread whose denormals flush to zero; its result returned, its exception re-raised."""
    import torch

    out: dict = {}

    def body() -> None:
        try:
            torch.set_flush_denormal(True)  # this thread's FTZ/DAZ (x86 with SSE3); they end with it
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            out["error"] = exc

    worker = threading.Thread(target=body, name="polyhead-flushed")
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
