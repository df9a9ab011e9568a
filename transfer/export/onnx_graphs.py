"""ONNX export of the trunk and of task heads, with parity checks against torch.

"Export" here is torch -> ONNX: trace a module (the trunk, or a head wrapped as
``heads.exportable.ExportableHead``), compare onnxruntime with torch, write ``model.onnx``.
Recording the files and their metadata in the workspace is :mod:`transfer.export.publish`;
``polyhead export`` (the Triton model repository) is ``serving.triton.repository``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from heads.exportable import OUTPUT_NAMES, ExportableHead
from heads.head import DetectionHead
from heads.postprocess import PostprocessConfig
from shared.artifacts import atomic_write_bytes
from shared.contract import FeatureSpec
from shared.errors import ArtifactError
from shared.onnx_session import cpu_session
from shared.trunk import Trunk

OPSET = 17


def _export_bytes(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str]) -> bytes:
    buf = io.BytesIO()
    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow in eager NMS
        torch.onnx.export(
            module, args, buf, input_names=inputs, output_names=outputs, opset_version=OPSET,
            dynamic_axes={n: {0: "batch"} for n in inputs + outputs}, dynamo=False,
        )
    return buf.getvalue()


def export_onnx_bytes(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str]) -> bytes:
    """The ONNX graph (opset :data:`OPSET`) of ``module`` traced on ``args``, as bytes; nothing checked or written.

    ``module`` is set to eval and traced without grad; ``inputs`` / ``outputs`` name the graph's
    tensors (one per element of ``args`` / of the output), each with a dynamic axis 0 ``batch``.
    """
    return _export_bytes(module, args, inputs, outputs)


session = cpu_session  # the name the transfer layer has always used


def export_trunk(trunk: Trunk, path: str | Path, input_size: int, check_images: torch.Tensor | None = None) -> float:
    """Export ``images (B,3,S,S) uint8 -> p3, p4, p5`` and check parity.

    Args:
        trunk: The trunk (set to eval).
        path: Destination ``model.onnx`` (written atomically).
        input_size: S.
        check_images: Optional real ``(B,3,S,S)`` uint8 images for the parity check (random ones are
            always checked too).

    Returns:
        Max abs difference of the features between onnxruntime and torch (raises if > 1e-4).
    """
    names = [s.name for s in trunk.feature_specs]
    dummy = torch.randint(0, 256, (2, 3, input_size, input_size), dtype=torch.uint8)
    data = _export_bytes(trunk, (dummy,), ["images"], names)
    batches = [torch.randint(0, 256, (3, 3, input_size, input_size), dtype=torch.uint8)]
    if check_images is not None:
        batches.append(check_images)
    sess, diff = session(data, threads=2), 0.0
    for images in batches:
        with torch.no_grad():
            ref = trunk.eval()(images)
        got = sess.run(names, {"images": images.numpy()})
        diff = max(diff, *(float(np.abs(ref[n].numpy() - g).max()) for n, g in zip(names, got)))
    if diff > 1e-4:
        raise ArtifactError(f"trunk ONNX parity failed: max abs diff {diff:.2e} > 1e-4")
    atomic_write_bytes(path, data)
    return diff


def export_head(
    head: DetectionHead,
    path: str | Path,
    input_size: int,
    post: PostprocessConfig,
    check_features: Sequence[dict[str, torch.Tensor]] = (),
    min_agreement: float = 0.98,
) -> int:
    """Export ``p3, p4, p5 -> num_dets, boxes, scores, classes`` (decode + NMS in graph) and check parity.

    Args:
        head: The head (set to eval).
        path: Destination ``model.onnx`` (written atomically).
        input_size: Input size S the features come from (to shape the dummy inputs).
        post: Thresholds baked into the graph.
        check_features: Real feature batches to compare on (random features are always checked).
        min_agreement: Share of detections that must match (see :func:`detection_agreement`);
            float differences of ~1e-6 can flip an NMS decision at the IoU threshold or swap two
            equal scores, so exact equality is only required by the unit tests.

    Returns:
        Number of images compared. Raises when detections differ.
    """
    specs: tuple[FeatureSpec, ...] = head.specs
    exportable = ExportableHead(head, post, input_size).eval()  # fixed size: constant grid

    def random_feats(b: int) -> dict[str, torch.Tensor]:
        side = {s.name: -(-input_size // s.stride) for s in specs}
        return {s.name: torch.randn(b, s.channels, side[s.name], side[s.name]) for s in specs}

    names = [s.name for s in specs]
    data = _export_bytes(exportable, tuple(random_feats(2).values()), names, list(OUTPUT_NAMES))
    sess, compared = session(data), 0
    for feats in [random_feats(2), *check_features]:
        with torch.no_grad():
            ref = [t.numpy() for t in exportable(*(feats[n] for n in names))]
        got = sess.run(list(OUTPUT_NAMES), {n: feats[n].numpy() for n in names})
        agreement = detection_agreement(ref, got)
        if agreement < min_agreement:
            raise ArtifactError(
                f"head ONNX parity failed: only {agreement:.1%} of the detections agree between torch and "
                f"onnxruntime (need {min_agreement:.0%}); the export is wrong, do not serve it"
            )
        compared += len(ref[0])
    atomic_write_bytes(path, data)
    return compared


def detection_agreement(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], iou: float = 0.99) -> float:
    """Share of detections (both directions) with a same-class twin of IoU > ``iou`` and |score diff| < 1e-4.

    Args:
        ref, got: ``(num_dets (B,1), boxes (B,K,4), scores (B,K), classes (B,K))`` of two runs.

    Returns:
        Matched detections over all detections of both runs (1.0 when both are empty).
    """
    from shared.boxes import box_iou

    matched = total = 0
    for b in range(len(ref[0])):
        sides = []
        for out in (ref, got):
            n = int(out[0][b, 0])
            sides.append((torch.from_numpy(out[1][b, :n]), out[2][b, :n], out[3][b, :n]))
        (rb, rs, rc), (gb, gs, gc) = sides
        ious = box_iou(rb, gb).numpy() if len(rb) and len(gb) else np.zeros((len(rb), len(gb)))
        same = (rc[:, None] == gc[None, :]) & (np.abs(rs[:, None] - gs[None, :]) < 1e-4) & (ious > iou)
        matched += int(same.any(1).sum()) + int(same.any(0).sum())
        total += len(rb) + len(gb)
    return 1.0 if total == 0 else matched / total
