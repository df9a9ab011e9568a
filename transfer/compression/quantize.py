"""Post-training quantization of an exported trunk: INT8 static (QDQ, per-channel) and FP16.

INT8 keeps layers in float where INT8 does not pay: depthwise convolutions run *slower* as INT8
on the CI CPU (platform notes), so they are excluded by default (``nodes_to_exclude``) and the
choice is measured, not assumed. FP16 keeps the ``uint8`` input and ``float32`` outputs
(``keep_io_types``), so heads and clients see the same interface.

Every quantized model is checked against its float parent on real images; the tolerances are
stated in :class:`QuantSettings` and the measured errors are recorded in ``variant.json``.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from shared.errors import ArtifactError


@dataclass(frozen=True)
class QuantSettings:
    """INT8/FP16 settings and the parity tolerances they must meet.

    Attributes:
        calibration_images: Task images fed to the INT8 calibrator.
        calibration_batch: Images per calibration batch.
        per_channel: Per-output-channel weight scales (much better for convs).
        exclude_depthwise: Keep depthwise convs in float (slower as INT8 on AVX-512 VNNI CPUs).
        int8_rel_rmse: Max RMSE of every INT8 feature map relative to the float map's std.
        fp16_rel_max: Max |fp16 - fp32| of every map relative to the float map's max |value|.
    """

    calibration_images: int = 64
    calibration_batch: int = 8
    per_channel: bool = True
    exclude_depthwise: bool = True
    int8_rel_rmse: float = 0.35
    fp16_rel_max: float = 0.02

    def to_dict(self) -> dict:
        """JSON form recorded in ``variant.json``."""
        return dict(self.__dict__)


class ImageCalibrationReader:
    """A ``CalibrationDataReader``: yields ``{"images": (b, 3, S, S) uint8}`` batches of real images."""

    def __init__(self, images: np.ndarray, batch: int):
        self._batches: Iterator[np.ndarray] = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next calibration batch, or ``None`` when done."""
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def depthwise_conv_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of ``Conv`` nodes with ``group > 1`` whose weight has one input channel per group."""
    inits = {t.name: t for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = inits.get(node.input[1])
        if group > 1 and weight is not None and weight.dims[1] == 1:
            names.append(node.name)
    return names


def _name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes stable names (``nodes_to_exclude`` matches by name)."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return model


def quantize_int8(model_bytes: bytes, calibration: np.ndarray, settings: QuantSettings) -> tuple[bytes, dict]:
    """INT8 static QDQ quantization of a float trunk, calibrated on real images.

    Args:
        model_bytes: The float ONNX trunk (``images uint8 -> p3, p4, p5``).
        calibration: ``(N, 3, S, S)`` uint8 task images.
        settings: Calibration size, per-channel, depthwise exclusion.

    Returns:
        The quantized model bytes and a description (excluded nodes, op types).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="polyhead-int8-") as tmp:
        src, pre, dst = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model = _name_nodes(onnx.load(str(pre)))
        onnx.save(model, str(pre))
        excluded = depthwise_conv_nodes(model) if settings.exclude_depthwise else []
        quantize_static(
            str(pre), str(dst), ImageCalibrationReader(calibration[: settings.calibration_images],
                                                       settings.calibration_batch),
            quant_format=QuantFormat.QDQ, per_channel=settings.per_channel, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"], nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
        )
        info = {"method": "static-qdq", "per_channel": settings.per_channel, "op_types": ["Conv"],
                "float_nodes": len(excluded), "calibration_images": int(min(len(calibration),
                                                                             settings.calibration_images))}
        return dst.read_bytes(), info


def _detach_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Feed graph outputs through an ``Identity`` so none is also consumed inside the graph.

    ``p3`` feeds the neck's bottom-up path; ``keep_io_types`` casts outputs back to float32 and would
    otherwise hand that float32 tensor to an fp16 conv.
    """
    outputs = {o.name for o in model.graph.output}
    consumed = {i for n in model.graph.node for i in n.input} & outputs
    for name in sorted(consumed):
        inner = f"{name}__inner"
        for node in model.graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        model.graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}__out"))
    return model


def convert_fp16(model_bytes: bytes) -> tuple[bytes, dict]:
    """FP16 weights and activations, ``uint8`` input and ``float32`` outputs kept (``keep_io_types``)."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ArtifactError("FP16 conversion needs `pip install onnxconverter-common`") from None
    model = _detach_outputs(onnx.load_from_string(model_bytes))
    inputs = {i.name for i in model.graph.input}
    # The uint8 -> float Cast of the input stays float32 (the converter would retarget it to fp16 and
    # break its declared output type); the converter inserts the float32 -> fp16 cast after it.
    keep = [n.name for n in model.graph.node if n.op_type == "Cast" and set(n.input) & inputs]
    with warnings.catch_warnings():  # "values truncated to fp16 range": expected for tiny weights
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    return converted.SerializeToString(), {"method": "onnxconverter-common float16", "keep_io_types": True,
                                           "float32_nodes": keep}


def feature_parity(reference, candidate, images: np.ndarray) -> dict[str, float]:
    """Errors of ``candidate`` vs ``reference`` onnxruntime sessions on ``images``, worst map.

    Returns:
        ``{"max_abs", "rel_max", "rel_rmse"}``: max |diff|; max |diff| / max |ref|; RMSE / std(ref).
    """
    names = [o.name for o in reference.get_outputs()]
    ref = reference.run(names, {"images": images})
    got = candidate.run(names, {"images": images})
    out = {"max_abs": 0.0, "rel_max": 0.0, "rel_rmse": 0.0}
    for r, g in zip(ref, got):
        diff = np.abs(r.astype(np.float64) - g.astype(np.float64))
        out["max_abs"] = max(out["max_abs"], float(diff.max()))
        out["rel_max"] = max(out["rel_max"], float(diff.max() / max(np.abs(r).max(), 1e-6)))
        out["rel_rmse"] = max(out["rel_rmse"], float(np.sqrt((diff**2).mean()) / max(r.std(), 1e-6)))
    return out


def parity_problem(errors: dict[str, float], precision: str, settings: QuantSettings) -> str:
    """Why a quantized trunk is further from its float parent than stated ('' when within tolerance)."""
    if precision == "int8" and errors["rel_rmse"] > settings.int8_rel_rmse:
        return (f"INT8 parity: relative RMSE {errors['rel_rmse']:.3f} > {settings.int8_rel_rmse} "
                "(try more calibration images or keep more layers in float)")
    if precision == "fp16" and errors["rel_max"] > settings.fp16_rel_max:
        return f"FP16 parity: relative max error {errors['rel_max']:.4f} > {settings.fp16_rel_max}"
    return ""
