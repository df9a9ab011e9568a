"""Write trained weights into the workspace as ONNX files + metadata (``variant.json``, ``head.json``).

The metadata goes through :mod:`shared.artifact_records` (the schema serving reads back).
"""

from __future__ import annotations

from pathlib import Path

import torch

from heads.head import DetectionHead
from heads.postprocess import PostprocessConfig
from shared.artifact_records import (
    HEAD_FILE,
    VARIANT_FILE,
    HeadRecord,
    VariantRecord,
    record_map_result,
    write_head_record,
    write_variant_record,
)
from shared.artifacts import atomic_directory, sha256_file
from shared.backbone import count_parameters
from shared.contract import contract_to_dict
from shared.trunk import Trunk
from shared.workspace import Workspace
from transfer.data.coco import CocoTask
from transfer.evaluation.coco_map import coco_map
from transfer.evaluation.predict import detect_split, iterate_split, onnx_detector
from transfer.export.device_keys import MEASURE_THREADS, cpu_key
from transfer.export.latency import flushed_latency
from transfer.export.onnx_graphs import export_head, export_trunk, session
from transfer.training.multitask_model import TaskInfo

REFERENCE = "reference"
#: ``latency_runtime`` of figures measured in onnxruntime on the CPU (what an entry without one means:
#: :func:`publish_trunk` and older versions measured so).
ONNX_CPU = "onnxruntime-cpu"


def device_name() -> str:
    """Key of the device :func:`publish_trunk` measures on: this CPU with onnxruntime (``cpu-<model>-2t``)."""
    return cpu_key(MEASURE_THREADS)


def sample_images(task: CocoTask, size: int, n: int) -> torch.Tensor:
    """The first ``n`` letterboxed images of a split: ``(n, 3, S, S)`` uint8."""
    batch = next(iterate_split(task, size, batch_size=n))[0]
    return torch.from_numpy(batch)


def publish_trunk(
    ws: Workspace, trunk: Trunk, name: str, input_size: int, check_images: torch.Tensor, extra: dict | None = None
) -> Path:
    """Export ``trunk`` as variant ``name``: ``trunk/<name>/model.onnx`` + ``variant.json`` (atomic)."""
    with atomic_directory(ws.variant(name), replace=True) as tmp:
        diff = export_trunk(trunk, tmp / "model.onnx", input_size, check_images)
        latency = flushed_latency({name: tmp / "model.onnx"}, check_images[:1].numpy(), 20, rounds=1)[name]
        record = VariantRecord(
            name=name,
            input_size=input_size,
            contract=contract_to_dict(trunk.feature_specs),
            channels={s.name: s.channels for s in trunk.feature_specs},
            trunk_config=trunk.cfg.to_dict(),
            params=count_parameters(trunk),
            size_bytes=(tmp / "model.onnx").stat().st_size,
            sha256=sha256_file(tmp / "model.onnx"),
            precision="fp32",
            parity_max_abs_diff=diff,
            latency_ms={device_name(): latency},
            map={},
            admitted=True,
        )
        write_variant_record(tmp, record.with_extra(extra))
    return ws.variant(name)


def publish_head(
    ws: Workspace,
    task: str,
    head: DetectionHead,
    info: TaskInfo,
    input_size: int,
    post: PostprocessConfig,
    check_features: list[dict[str, torch.Tensor]],
    extra: dict | None = None,
) -> Path:
    """Export a head: ``heads/<task>/model.onnx`` + ``head.json`` (atomic; mAP filled by :func:`evaluate_head`)."""
    with atomic_directory(ws.head(task), replace=True) as tmp:
        export_head(head, tmp / "model.onnx", input_size, post, check_features)
        record = HeadRecord(
            task=task,
            classes=tuple(info.classes),
            category_ids=tuple(info.category_ids),
            input_size=input_size,
            max_dets=post.max_dets,
            score_threshold=post.score_threshold,
            iou_threshold=post.iou_threshold,
            contract=contract_to_dict(head.specs),
            head_config={"num_classes": head.cfg.num_classes, "width": head.cfg.width, "depth": head.cfg.depth},
            params=count_parameters(head),
            sha256=sha256_file(tmp / "model.onnx"),
            map={},
        )
        write_head_record(tmp, record.with_extra(extra))
    return ws.head(task)


def evaluate_head(ws: Workspace, task: str, variant: str, val: CocoTask, input_size: int) -> dict[str, float]:
    """COCO mAP of head ``task`` on trunk ``variant`` via onnxruntime; recorded in both json files."""
    trunk_sess = session(ws.variant(variant) / "model.onnx", threads=2)
    head_sess = session(ws.head(task) / "model.onnx")
    result = coco_map(val, detect_split(val, input_size, onnx_detector(trunk_sess, head_sess)))
    record_map_result(ws.head(task) / HEAD_FILE, variant, result)
    record_map_result(ws.variant(variant) / VARIANT_FILE, task, result)
    return result
