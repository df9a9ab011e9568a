"""The onnxruntime execution providers a python-backend leaf asks for, written into its model config.

``device="cpu"`` asks for ``CPUExecutionProvider`` only. ``device="cuda"`` asks, in order, for
TensorRT (FP16/INT8 following the ONNX file's precision), CUDA and the CPU as the last resort::

    [{"name": "TensorrtExecutionProvider", "options": {"device_id": "0", "trt_fp16_enable": "1", ...}},
     {"name": "CUDAExecutionProvider", "options": {"device_id": "0"}},
     {"name": "CPUExecutionProvider"}]

The list travels as the JSON string parameter :data:`PROVIDERS_PARAMETER` (and, for trunk
versions whose precision asks for other TensorRT options, :data:`PROVIDERS_BY_VERSION_PARAMETER`
``{"<version>": [...]}``). The python backend (``serving/triton/backend/model.py``) keeps the
providers its onnxruntime offers, puts the instance's GPU in ``device_id`` and warns in the
server log when it has to fall back to the CPU. A cuda leaf's instance group is ``KIND_AUTO``:
Triton makes it ``KIND_GPU`` over every visible GPU, or ``KIND_CPU`` on a host without one
(``KIND_GPU`` there refuses to load), so the same repository loads anywhere.
"""

from __future__ import annotations

import json

from shared.errors import ConfigError

#: Where a python-backend leaf runs: ``cpu`` or ``cuda`` (``polyhead export --device``).
DEVICES = ("cpu", "cuda")
#: ONNX precisions of exported graphs (``variant.json``'s ``precision``; heads are fp32).
PRECISIONS = ("fp32", "fp16", "int8")
PROVIDERS_PARAMETER = "execution_providers"
PROVIDERS_BY_VERSION_PARAMETER = "execution_providers_by_version"
TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
TENSORRT_WORKSPACE_BYTES = 1 << 30  # as the native backend's TensorRT accelerator


def execution_providers(device: str, precision: str = "fp32", tensorrt_precision: str = "FP16") -> list[dict]:
    """The providers, in order, for a graph of ``precision`` on ``device``.

    Args:
        device: One of :data:`DEVICES`.
        precision: The graph's precision, one of :data:`PRECISIONS`: ``int8`` (QDQ) turns on
            TensorRT's INT8 (and FP16 for the layers left in float), ``fp16`` its FP16.
        tensorrt_precision: ``"FP16"`` or ``"FP32"``: TensorRT's precision for fp32 graphs.

    Returns:
        ``[{"name": ..., "options": {...}}, ...]``, CPU last; option values are strings.

    Raises:
        ConfigError: If ``device`` or ``precision`` is unknown.
    """
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}, got {device!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}; fix the variant.json")
    if device == "cpu":
        return [{"name": CPU}]
    fp16 = precision in ("fp16", "int8") or tensorrt_precision == "FP16"
    tensorrt = {
        "device_id": "0",  # the backend replaces it with the instance's GPU
        "trt_fp16_enable": str(int(fp16)),
        "trt_int8_enable": str(int(precision == "int8")),  # QDQ graphs: explicit quantization, no calibration
        "trt_max_workspace_size": str(TENSORRT_WORKSPACE_BYTES),
    }
    return [{"name": TENSORRT, "options": tensorrt}, {"name": CUDA, "options": {"device_id": "0"}}, {"name": CPU}]


def providers_parameters(
    device: str, tensorrt_precision: str, precisions: dict[int, str] | None = None
) -> dict[str, str]:
    """The config parameters carrying the providers: the default list and, if any differ, per version.

    Args:
        device: One of :data:`DEVICES`.
        tensorrt_precision: TensorRT's precision for fp32 graphs (``"FP16"`` or ``"FP32"``).
        precisions: Trunk version -> its ``model.onnx``'s precision (``None``: every graph fp32).

    Returns:
        Parameter name -> JSON string value.
    """
    default = execution_providers(device, "fp32", tensorrt_precision)
    params = {PROVIDERS_PARAMETER: json.dumps(default)}
    by_version = {}
    for version, precision in sorted((precisions or {}).items()):
        providers = execution_providers(device, precision or "fp32", tensorrt_precision)
        if providers != default:
            by_version[str(version)] = providers
    if by_version:
        params[PROVIDERS_BY_VERSION_PARAMETER] = json.dumps(by_version)
    return params
