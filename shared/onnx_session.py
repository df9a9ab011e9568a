"""One onnxruntime CPU session, with the options every polyhead process uses (torch-free).

The python backend (``serving/triton/backend/model.py``, which must stand alone in a repository)
sets the same options: ``threads`` intra-op threads, one inter-op thread, spinning off.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import ArtifactError


def cpu_session(path_or_bytes: str | Path | bytes, threads: int = 1):
    """An onnxruntime CPU session of an ONNX file or serialized model.

    Raises:
        ArtifactError: onnxruntime cannot load it (naming the file and the fix).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no session.set_denormal_as_zero here: it sets the calling thread's FTZ/DAZ flags, which then
    # leak into the caller's own float code (the Triton stub, a process of its own, sets it)
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        what = "the exported model" if isinstance(path_or_bytes, bytes) else path_or_bytes
        raise ArtifactError(f"onnxruntime cannot load {what}: {exc}; re-export it") from None
