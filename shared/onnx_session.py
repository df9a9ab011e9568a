"""One onnxruntime CPU session, with the options every polyhead process uses (torch-free).

The python backend (``serving/triton/backend/model.py``, which must stand alone in a repository)
sets the same options: ``threads`` intra-op threads, one inter-op thread, spinning off.
"""

from __future__ import annotations

import threading
from pathlib import Path

from shared.errors import ArtifactError, ConfigError


def cpu_session(path_or_bytes: str | Path | bytes, threads: int = 1, flush_denormals: bool = False):
    """An onnxruntime CPU session of an ONNX file or serialized model.

    ``flush_denormals``: denormal floats computed as zero (FTZ/DAZ), as the Triton backend serves
    (fine-tuned trunks leave activations in the denormal range, which cost ~10 %). The option sets
    the flags on the session's pool threads, and on the creating thread only if this is the
    process's first session (onnxruntime applies that part once per process). So the caller runs
    such a session on a thread of its own whose flags it set itself
    (``transfer.export.denormals.on_flushing_thread``); on the main thread they would leak into the
    caller's own float code.

    Raises:
        ArtifactError: onnxruntime cannot load it (naming the file and the fix).
        ConfigError: ``flush_denormals`` on the main thread.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if flush_denormals:
        if threading.current_thread() is threading.main_thread():
            raise ConfigError("a session that flushes denormals may set its thread's FTZ/DAZ flags; create and "
                              "run it on a thread of its own (transfer.export.denormals.on_flushing_thread)")
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        what = "the exported model" if isinstance(path_or_bytes, bytes) else path_or_bytes
        raise ArtifactError(f"onnxruntime cannot load {what}: {exc}; re-export it") from None

